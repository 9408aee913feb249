"""Stage B without SAM2: pure functions on hand-made arrays, the algorithm on an oracle."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from fixtures_teacher import OraclePropagator

from ditta_ros.config import TeacherConfig
from ditta_ros.engine.teacher import (
    ObjectMasks,
    PromptPoint,
    PropagationTeacher,
    explained_region,
    merge_passes,
    render_objects,
    select_prompts,
    vote,
)
from ditta_ros.engine.types import Prompt
from ditta_ros.errors import CancelledError, InputError


# ---------------------------------------------------------------------------------------
# explained_region
# ---------------------------------------------------------------------------------------
def _l1_disc(shape: tuple[int, int], row: int, col: int, radius: int) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (np.abs(rows - row) + np.abs(cols - col)) <= radius


def test_explained_region_is_a_cross_dilation() -> None:
    masks = np.zeros((1, 15, 17), dtype=bool)
    masks[0, 7, 8] = True
    # k iterations of a 3x3 cross = the L1 ball of radius k.
    for k in (0, 1, 2, 5):
        np.testing.assert_array_equal(explained_region(masks, k), _l1_disc((15, 17), 7, 8, k))
    assert explained_region(masks, 2).sum() == 13


def test_explained_region_border_is_background_and_unions() -> None:
    masks = np.zeros((2, 12, 12), dtype=bool)
    masks[0, 0, 0] = True
    masks[1, 11, 11] = True
    region = explained_region(masks, 5)
    expected = _l1_disc((12, 12), 0, 0, 5) | _l1_disc((12, 12), 11, 11, 5)
    np.testing.assert_array_equal(region, expected)
    assert not region[0, 11] and not region[11, 0]  # no wrap-around from either corner


def test_explained_region_empty() -> None:
    assert not explained_region(np.zeros((0, 4, 5), dtype=bool), 5).any()
    assert explained_region(np.zeros((0, 4, 5), dtype=bool), 5).shape == (4, 5)


# ---------------------------------------------------------------------------------------
# select_prompts
# ---------------------------------------------------------------------------------------
def _four_classes() -> tuple[np.ndarray, np.ndarray]:
    """Labels: 4 column bands of 3 columns (classes 0..3); reliability 0.1 elsewhere."""
    labels = np.repeat(np.arange(4), 3)[None, :].repeat(4, axis=0).astype(np.int64)  # (4, 12)
    rel = np.full((4, 12), 0.1, dtype=np.float32)
    rel[2, 7] = 0.95   # class 2 peak
    rel[3, 1] = 0.9    # class 0 peak
    rel[1, 4] = 0.9    # class 1 peak, ties with class 0
    rel[0, 10] = 0.85  # class 3 peak
    return labels, rel


def test_select_prompts_order_ties_and_counts() -> None:
    labels, rel = _four_classes()
    out = select_prompts(labels, rel, np.zeros_like(labels, dtype=bool), 0, 5)
    assert out.points == (PromptPoint(2, 2, 7), PromptPoint(0, 3, 1), PromptPoint(1, 1, 4),
                          PromptPoint(3, 0, 10))
    np.testing.assert_array_equal(out.class_counts, [12, 12, 12, 12, 0])
    assert out.class_counts.dtype == np.int64


def test_select_prompts_threshold_is_a_float32_compare() -> None:
    labels, rel = _four_classes()
    rel[0, 10] = np.float32(0.7)  # class 3 peak exactly float32(0.7) < 0.7 as a float64
    out = select_prompts(labels, rel, np.zeros_like(labels, dtype=bool), 0, 4, threshold=0.7)
    assert [p.iss_class for p in out.points] == [2, 0, 1, 3]
    rel[0, 10] = np.nextafter(np.float32(0.7), np.float32(0))
    out = select_prompts(labels, rel, np.zeros_like(labels, dtype=bool), 0, 4, threshold=0.7)
    assert [p.iss_class for p in out.points] == [2, 0, 1]
    out = select_prompts(labels, rel, np.zeros_like(labels, dtype=bool), 0, 4, threshold=0.92)
    assert [p.iss_class for p in out.points] == [2]
    np.testing.assert_array_equal(out.class_counts, [12, 12, 12, 12])


def test_select_prompts_peak_pixel_is_first_in_row_major_order() -> None:
    labels = np.zeros((3, 6), dtype=np.int64)
    rel = np.full((3, 6), 0.5, dtype=np.float32)
    rel[2, 0] = rel[1, 3] = rel[0, 5] = 0.9
    out = select_prompts(labels, rel, np.zeros((3, 6), dtype=bool), 0, 1)
    assert out.points == (PromptPoint(0, 0, 5),)


def test_select_prompts_skips_only_explained_peak_pixels() -> None:
    labels, rel = _four_classes()
    explained = np.zeros_like(labels, dtype=bool)
    explained[2, 7] = True          # class 2's peak pixel is explained -> skipped
    explained[:, 3:5] = True        # class 1 band mostly explained, incl. its peak (1, 4)
    explained[:, 0] = True          # class 0 partly explained, but its peak (3, 1) is not
    out = select_prompts(labels, rel, explained, 0, 4)
    assert [p.iss_class for p in out.points] == [0, 3]
    np.testing.assert_array_equal(out.class_counts, [12, 12, 12, 12])


def test_select_prompts_object_cap_counts_every_class() -> None:
    labels, rel = _four_classes()
    none = np.zeros_like(labels, dtype=bool)
    out = select_prompts(labels, rel, none, 98, 4, max_objects=100)
    assert [p.iss_class for p in out.points] == [2, 0]
    out = select_prompts(labels, rel, none, 100, 4, max_objects=100)
    assert out.points == ()
    np.testing.assert_array_equal(out.class_counts, [12, 12, 12, 12])


def test_select_prompts_rejects_labels_out_of_range() -> None:
    labels, rel = _four_classes()
    with pytest.raises(InputError, match="labels"):
        select_prompts(labels, rel, np.zeros_like(labels, dtype=bool), 0, 3)


# ---------------------------------------------------------------------------------------
# vote (Eq. 4)
# ---------------------------------------------------------------------------------------
def _obj(ids: tuple[int, ...], *masks: np.ndarray) -> ObjectMasks:
    if not masks:
        return ObjectMasks((), np.zeros((0, 2, 4), dtype=bool))
    return ObjectMasks(ids, np.stack(masks).astype(bool))


def test_vote_score_formula_by_hand() -> None:
    labels = np.array([[[1, 1, 2, 0], [0, 0, 0, 0]],
                       [[1, 2, 2, 0], [0, 0, 0, 0]]], dtype=np.int64)  # N_c: 10, 3, 3
    rel = np.array([[[0.9, 0.7, 0.6, 0.1], [0.2] * 4],
                    [[0.8, 0.5, 0.4, 0.1], [0.2] * 4]], dtype=np.float32)
    m0 = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
    m1 = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    objects = [_obj((7,), m0), _obj((7,), m1)]
    counts = np.array([10, 3, 3])
    scores, classes = vote(objects, labels, rel, counts, [7])
    # |o| = 5; class 1: 3 pixels, R 0.9 0.7 0.8; class 2: 2 pixels, R 0.6 0.5; N = 16.
    s1 = 0.8 * (3 / 5) ** 0.3 * (1 - 3 / 16) ** 0.8
    s2 = 0.55 * (2 / 5) ** 0.3 * (1 - 3 / 16) ** 0.8
    np.testing.assert_allclose(scores, [[0.0, s1, s2]], rtol=1e-6)
    assert scores.dtype == np.float32 and classes.dtype == np.int64
    assert classes.tolist() == [1]


def test_vote_rarity_term_decides_and_ties_go_to_lowest_id() -> None:
    labels = np.zeros((1, 2, 4), dtype=np.int64)
    labels[0, 0, 2:] = 3                        # class 3 is rare (2 of 8 pixels)
    rel = np.full((1, 2, 4), 0.9, dtype=np.float32)
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])  # half class 0, half class 3
    objects = [_obj((1,), mask)]
    counts = np.array([6, 0, 0, 2])
    scores, classes = vote(objects, labels, rel, counts, [1])
    expected_0 = 0.9 * 0.5 ** 0.3 * (1 - 6 / 8) ** 0.8
    expected_3 = 0.9 * 0.5 ** 0.3 * (1 - 2 / 8) ** 0.8
    np.testing.assert_allclose(scores[0, [0, 3]], [expected_0, expected_3], rtol=1e-6)
    assert classes.tolist() == [3]
    _, classes = vote(objects, labels, rel, counts, [1], frequency_power=0.0)
    assert classes.tolist() == [0]              # exact tie without the rarity term


def test_vote_zero_scores_give_no_class_and_overlaps_count_twice() -> None:
    labels = np.zeros((1, 2, 4), dtype=np.int64)
    rel = np.full((1, 2, 4), 0.9, dtype=np.float32)
    full = np.ones((2, 4))
    objects = [ObjectMasks((1, 2), np.stack([full, full]).astype(bool))]
    # class 0 fills every pixel: (1 - N_c/N) = 0; object 3 is empty everywhere.
    scores, classes = vote(objects, labels, rel, np.array([8, 0]), [1, 2, 3])
    assert classes.tolist() == [-1, -1, -1]
    assert not scores.any() and scores.shape == (3, 2)
    labels[0, 1] = 1
    scores, classes = vote(objects, labels, rel, np.array([4, 4]), [1, 2, 3])
    assert classes.tolist() == [0, 0, -1]       # both overlapping objects vote in full
    np.testing.assert_array_equal(scores[0], scores[1])


# ---------------------------------------------------------------------------------------
# render_objects
# ---------------------------------------------------------------------------------------
def test_render_highest_score_wins_overlaps_stably() -> None:
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 0]], dtype=bool)
    c = np.array([[0, 0, 1, 1]], dtype=bool)
    objects = ObjectMasks((5, 3, 9), np.stack([a, b, c]))
    out = render_objects(objects, {5: 0.9, 3: 0.2, 9: 0.0}, 1, 4)
    assert out.dtype == np.int32
    assert out.tolist() == [[5, 5, 3, 9]]
    # Ties keep the list order: the later object is painted last and wins.
    out = render_objects(objects, {5: 0.5, 3: 0.5, 9: 0.5}, 1, 4)
    assert out.tolist() == [[5, 3, 9, 9]]
    assert not render_objects(ObjectMasks((), np.zeros((0, 1, 4), bool)), {}, 1, 4).any()


# ---------------------------------------------------------------------------------------
# merge_passes
# ---------------------------------------------------------------------------------------
def test_merge_keeps_forward_then_backward_only_objects() -> None:
    one = np.ones((1, 1, 2), dtype=bool)
    two = np.ones((2, 1, 2), dtype=bool)
    f = [ObjectMasks((1,), one), ObjectMasks((1,), one), ObjectMasks((1, 2), two),
         ObjectMasks((1, 2), two)]
    back_masks = np.zeros((1, 1, 2), dtype=bool)
    b = {2: ObjectMasks((2,), back_masks), 1: ObjectMasks((2,), back_masks),
         0: ObjectMasks((1, 2), np.concatenate([back_masks, back_masks]))}
    merged = merge_passes(f, b, {0: [1], 2: [2]})
    assert [x.ids for x in merged] == [(1, 2), (1, 2), (1, 2), (1, 2)]
    # Object 2 on frames 0 and 1 comes from the backward pass (empty there), object 1 always
    # from the forward pass; frame 3 (after the last prompt) is forward only.
    assert [x.masks.sum(axis=(1, 2)).tolist() for x in merged] == [[2, 0], [2, 0], [2, 2],
                                                                     [2, 2]]


# ---------------------------------------------------------------------------------------
# The forward/backward algorithm on an oracle
# ---------------------------------------------------------------------------------------
T, H, W = 4, 16, 32
A_ROWS, A_COLS = slice(2, 7), slice(1, 7)      # instance 1, class 1, 30 px
B_ROWS, B_COLS = slice(9, 14), slice(20, 28)   # instance 2, class 2, 40 px


def _scene(frame0_prompt: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instances, ISS labels, reliability) of a static 4-frame scene, see the test."""
    inst = np.zeros((T, H, W), dtype=np.int64)
    inst[:, A_ROWS, A_COLS] = 1
    inst[:, B_ROWS, B_COLS] = 2
    labels = inst.copy()                     # ISS class = instance id here
    labels[1, 2:4, 9:11] = 3                 # a class-3 patch 3 px right of A, frame 1 only
    rel = np.full((T, H, W), 0.5, dtype=np.float32)
    if frame0_prompt:
        rel[0, 3, 2] = 0.95                  # A's peak on frame 0 -> object 1
    rel[1, 4, 4] = 0.97                      # A again: explained on frame 1
    rel[1, 2, 9] = 0.99                      # class 3: inside A's dilated region
    rel[2, 10, 22] = rel[2, 11, 25] = 0.9    # B first seen reliable on frame 2 -> object 2
    rel[3, 12, 24] = 0.99                    # B explained on frame 3
    rel[3, 5, 5] = 0.85                      # A explained on frame 3
    return inst, labels, rel


def _frames() -> list[np.ndarray]:
    return [np.zeros((H, W, 3), dtype=np.uint8) for _ in range(T)]


def test_oracle_forward_backward_calls_and_targets() -> None:
    inst, labels, rel = _scene()
    oracle = OraclePropagator(inst)
    teacher = PropagationTeacher(oracle, TeacherConfig(), num_classes=5)
    out = teacher.targets(_frames(), labels, rel)
    assert oracle.calls == [
        ("start", 4),
        ("point", 0, 1, 3, 2), ("propagate", 0, False),
        ("propagate", 1, False),                      # frame 1: peaks explained, no prompt
        ("reset",), ("point", 2, 2, 10, 22), ("mask", 2, 1, 30), ("propagate", 2, False),
        # frame 3: nothing new, last frame: no propagation. Backward pass:
        ("reset",), ("point", 2, 2, 10, 22), ("propagate", 2, True), ("propagate", 1, True),
        ("reset",), ("point", 0, 1, 3, 2), ("mask", 0, 2, 40),
        ("release",),
    ]
    assert out.prompts == (Prompt(0, 1, 3, 2, 1), Prompt(2, 2, 10, 22, 2))
    assert out.ids.tolist() == [1, 2] and out.ids.dtype == np.int32
    assert out.classes.tolist() == [1, 2] and out.classes.dtype == np.int64
    assert out.scores.shape == (2, 5) and out.scores.dtype == np.float32
    assert out.object_ids.shape == (T, H, W) and out.object_ids.dtype == np.int32
    # Object 2 (prompted on frame 2) reaches frames 0-1 through the backward pass.
    np.testing.assert_array_equal(out.object_ids, inst.astype(np.int32))
    # Eq. 4 with N_c counted on every frame (class 3 counts although never prompted).
    n_c = np.bincount(labels.reshape(-1), minlength=5)
    a = inst == 1
    s_a1 = rel[a].mean() * 1.0 * (1 - n_c[1] / labels.size) ** 0.8
    np.testing.assert_allclose(out.scores[0], [0, s_a1, 0, 0, 0], rtol=1e-5)
    assert out.class_of() == {1: 1, 2: 2}


def test_oracle_first_prompt_after_frame_zero() -> None:
    inst, labels, rel = _scene(frame0_prompt=False)
    rel[1, 2, 9] = 0.5                           # no class-3 prompt on frame 1 either
    oracle = OraclePropagator(inst)
    out = PropagationTeacher(oracle, TeacherConfig(), num_classes=5).targets(
        _frames(), labels, rel)
    assert oracle.calls == [
        ("start", 4),
        ("point", 1, 1, 4, 4), ("propagate", 1, False),   # no reset: nothing tracked before
        ("reset",), ("point", 2, 2, 10, 22), ("mask", 2, 1, 30), ("propagate", 2, False),
        ("reset",), ("point", 2, 2, 10, 22), ("propagate", 2, True),
        ("reset",), ("point", 1, 1, 4, 4), ("mask", 1, 2, 40), ("propagate", 1, True),
        ("release",),
    ]
    assert [(p.frame, p.object_id) for p in out.prompts] == [(1, 1), (2, 2)]
    # Frame 0 had no object in the forward pass; the backward pass fills it in.
    np.testing.assert_array_equal(out.object_ids, inst.astype(np.int32))


def test_oracle_object_cap_and_no_prompt() -> None:
    inst, labels, rel = _scene()
    oracle = OraclePropagator(inst)
    out = PropagationTeacher(oracle, TeacherConfig(max_objects=1), num_classes=5).targets(
        _frames(), labels, rel)
    assert out.ids.tolist() == [1]
    assert "reset" not in [c[0] for c in oracle.calls[:-3]]  # no second prompt forward
    assert oracle.calls[-3:] == [("reset",), ("point", 0, 1, 3, 2), ("release",)]
    assert set(np.unique(out.object_ids)) == {0, 1}

    rel_low = np.full_like(rel, 0.5)
    oracle = OraclePropagator(inst)
    out = PropagationTeacher(oracle, TeacherConfig(), num_classes=5).targets(
        _frames(), labels, rel_low)
    assert out.num_objects == 0 and out.prompts == ()
    assert out.ids.shape == (0,) and out.classes.shape == (0,) and out.scores.shape == (0, 5)
    assert not out.object_ids.any() and out.object_ids.shape == (T, H, W)
    assert oracle.calls == [("start", 4), ("release",)]


def test_cancel_raises_between_frames_and_releases() -> None:
    inst, labels, rel = _scene()
    cancel = threading.Event()

    class CancelOnSecondPropagate(OraclePropagator):
        def propagate(self, clip: Any, frame: int, reverse: bool) -> ObjectMasks:
            if frame == 1:
                cancel.set()
            return super().propagate(clip, frame, reverse)

    oracle = CancelOnSecondPropagate(inst)
    teacher = PropagationTeacher(oracle, TeacherConfig(), num_classes=5)
    with pytest.raises(CancelledError, match="frame 2"):
        teacher.targets(_frames(), labels, rel, cancel=cancel)
    assert oracle.calls[-1] == ("release",)


def test_bad_inputs_raise_input_error() -> None:
    inst, labels, rel = _scene()
    teacher = PropagationTeacher(OraclePropagator(inst), TeacherConfig(), num_classes=3)
    with pytest.raises(InputError, match="class range"):
        teacher.targets(_frames(), labels, rel)         # label 3 >= num_classes
    teacher = PropagationTeacher(OraclePropagator(inst), TeacherConfig())
    with pytest.raises(InputError, match="reliability shape"):
        teacher.targets(_frames(), labels, rel[:, :-1])
    with pytest.raises(InputError, match="frames"):
        teacher.targets(_frames()[:3], labels, rel)
    bad = rel.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        teacher.targets(_frames(), labels, bad)
    with pytest.raises(InputError, match="uint8"):
        teacher.targets([f.astype(np.float32) for f in _frames()], labels, rel)
