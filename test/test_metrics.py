"""Metrics against hand-computed values (ALGORITHM.md, "Metrics")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ditta_ros.engine.metrics import ConfusionMatrix, VideoConsistency, vspw_ground_truth
from ditta_ros.errors import InputError

# ---- ground truth ----


def test_vspw_ground_truth_mapping() -> None:
    raw = np.array([[0, 1, 124], [125, 255, 50]], dtype=np.uint8)
    gt = vspw_ground_truth(raw, 124)
    assert gt.dtype == np.int64
    assert gt.tolist() == [[255, 0, 123], [255, 255, 49]]
    # Fewer classes: everything from raw C + 1 on is ignored.
    assert vspw_ground_truth(raw, 10).tolist() == [[255, 0, 255], [255, 255, 255]]
    with pytest.raises(InputError, match="single-channel"):
        vspw_ground_truth(np.zeros((2, 2, 3), np.uint8), 124)


# ---- mIoU / wIoU ----

GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])


def test_confusion_matrix_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    # rows = GT, columns = prediction; the ignored pixel (GT 255) is left out.
    assert cm.matrix.dtype == np.float64
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    np.testing.assert_allclose(cm.per_class_iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.wiou() == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    assert cm.accuracy() == pytest.approx(3 / 5)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    iou = cm.per_class_iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.wiou() == pytest.approx(0.4)


def test_class_predicted_but_absent_from_gt_does_not_count() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 3, 3, 1]), np.array([0, 0, 1, 1]))
    # Class 0: TP 1, GT 2, pred 1 -> 1/2. Class 1: TP 1, GT 2, pred 1 -> 1/2. Class 3: no GT.
    np.testing.assert_allclose(cm.per_class_iou()[[0, 1]], [0.5, 0.5])
    assert math.isnan(cm.per_class_iou()[3])
    assert cm.miou() == pytest.approx(0.5)   # mmseg's union rule would give 1/3


def test_gt_labels_at_or_above_c_are_ignored() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 1, 0]), np.array([0, 2, 7, 1]))
    assert cm.matrix.tolist() == [[1, 0], [1, 0]]


def test_empty_matrix_gives_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([255, 255]))
    assert math.isnan(cm.miou()) and math.isnan(cm.wiou())


def test_batched_update_merge_and_json_round_trip() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(4, 8, 9))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=(4, 8, 9))
    whole = ConfusionMatrix(5)
    whole.update(pred, gt)
    parts = [ConfusionMatrix(5), ConfusionMatrix(5)]
    for t in range(4):
        parts[t % 2].update(pred[t], gt[t])
    restored = ConfusionMatrix.from_dict(json.loads(json.dumps(parts[1].to_dict())))
    merged = ConfusionMatrix(5)
    merged += parts[0]
    merged.merge(restored)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert merged.miou() == whole.miou()
    assert whole.matrix.sum() == np.count_nonzero(gt < 5)


def test_confusion_matrix_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(InputError, match="shape"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(InputError, match=r"\[0, 3\)"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(InputError, match="merge"):
        cm.merge(ConfusionMatrix(4))
    with pytest.raises(InputError):
        ConfusionMatrix.from_dict({"num_classes": 3, "matrix": [[1, 2]]})
    with pytest.raises(InputError):
        ConfusionMatrix.from_dict({"matrix": []})


# ---- mVC_n ----

def brute_force_mvc(videos: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[float, int]:
    """The spec, literally: windows i < L - n of each video, pooled (sum, count)."""
    total, count = 0.0, 0
    for pred, gt in videos:             # (L, H, W) each
        length = pred.shape[0]
        for i in range(length - n):
            g, p = gt[i:i + n], pred[i:i + n]
            gt_const = (g == g[0]).all(axis=0)
            pred_const = (p == p[0]).all(axis=0)
            if gt_const.sum() == 0:
                continue
            total += (gt_const & pred_const).sum() / gt_const.sum()
            count += 1
    return total, count


def _feed(vc: VideoConsistency, videos: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for pred, gt in videos:
        vc.start_video()
        for t in range(pred.shape[0]):
            vc.update(pred[t], gt[t])


def _random_video(rng: np.random.Generator, length: int, change: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labels that mostly persist from frame to frame (so constant pixels exist)."""
    gt = np.empty((length, 5, 6), np.int64)
    pred = np.empty_like(gt)
    gt[0] = rng.integers(0, 3, size=(5, 6))
    pred[0] = rng.integers(0, 3, size=(5, 6))
    for t in range(1, length):
        flip_g = rng.random((5, 6)) < change
        flip_p = rng.random((5, 6)) < change
        gt[t] = np.where(flip_g, rng.integers(0, 3, size=(5, 6)), gt[t - 1])
        pred[t] = np.where(flip_p, rng.integers(0, 3, size=(5, 6)), pred[t - 1])
    gt[:, 0, 0] = 255   # a pixel ignored in every frame counts as GT-constant
    return pred, gt


def test_mvc_hand_made_last_window_not_counted() -> None:
    gt = np.array([[[0, 1]], [[0, 2]], [[0, 2]], [[0, 2]]])
    pred = np.array([[[0, 1]], [[1, 1]], [[1, 1]], [[1, 1]]])
    vc = VideoConsistency(2)
    vc.start_video()
    for t in range(3):
        vc.update(pred[t], gt[t])
    # L = 3, n = 2: only window 0 (frames 0-1): GT-constant = pixel 0, pred changes there.
    assert (vc.count, vc.total) == (1, 0.0)
    vc.update(pred[3], gt[3])
    # L = 4: window 1 (frames 1-2) now counts: both pixels GT- and pred-constant -> 1.
    assert (vc.count, vc.total) == (2, 1.0)
    assert vc.value() == pytest.approx(0.5)


@pytest.mark.parametrize(("length", "windows"), [(1, 0), (3, 0), (4, 1), (5, 2), (9, 6)])
def test_mvc_window_count(length: int, windows: int) -> None:
    frame = np.zeros((2, 2), np.int64)
    vc = VideoConsistency(3)
    for _ in range(length):
        vc.update(frame, frame)
    assert vc.count == windows                    # starts i < L - n
    if windows:
        assert vc.value() == 1.0
    else:
        assert math.isnan(vc.value())


def test_mvc_skips_windows_without_gt_constant_pixels() -> None:
    vc = VideoConsistency(2)
    pred = np.zeros((1, 3), np.int64)
    for t in range(5):
        vc.update(pred, np.full((1, 3), t))       # GT changes everywhere every frame
    assert vc.count == 0
    # A single GT-constant pixel makes a window count again.
    vc.start_video()
    for t in range(3):
        vc.update(pred, np.array([[7, t, t]]))
    assert vc.count == 1 and vc.total == 1.0


def test_mvc_ignore_everywhere_counts_as_constant() -> None:
    vc = VideoConsistency(2)
    gt = np.full((2, 2), 255)
    for t in range(3):
        vc.update(np.full((2, 2), t % 2), gt)
    # Window 0: all 4 pixels GT-constant (ignored throughout), prediction changes -> 0.
    assert (vc.count, vc.total) == (1, 0.0)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_mvc_matches_brute_force_over_several_videos(n: int) -> None:
    rng = np.random.default_rng(n)
    videos = [_random_video(rng, length, 0.08) for length in (12, n, n + 1, 20, 1)]
    vc = VideoConsistency(n)
    _feed(vc, videos)
    total, count = brute_force_mvc(videos, n)
    assert vc.count == count and count > 0
    assert vc.total == pytest.approx(total, abs=1e-12)


def test_mvc_merge_and_json_equal_a_single_run() -> None:
    rng = np.random.default_rng(7)
    videos = [_random_video(rng, length, 0.05) for length in (15, 11, 17)]
    single = VideoConsistency(4)
    _feed(single, videos)
    shards = [VideoConsistency(4), VideoConsistency(4)]
    _feed(shards[0], videos[:1])
    _feed(shards[1], videos[1:])
    pooled = VideoConsistency.from_dict(json.loads(json.dumps(shards[0].to_dict())))
    pooled += VideoConsistency.from_dict(json.loads(json.dumps(shards[1].to_dict())))
    assert pooled.count == single.count
    assert pooled.value() == pytest.approx(single.value(), abs=1e-12)
    with pytest.raises(InputError):
        pooled.merge(VideoConsistency(8))


def test_mvc_start_video_drops_the_pending_window_and_size_change_is_an_error() -> None:
    vc = VideoConsistency(2)
    frame = np.zeros((2, 2), np.int64)
    vc.update(frame, frame)
    vc.update(frame, frame)       # window 0 pending
    vc.start_video()              # ... and dropped: L = n in that video
    vc.update(frame, frame)
    assert vc.count == 0
    with pytest.raises(InputError, match="start_video"):
        vc.update(np.zeros((3, 2), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(InputError):
        VideoConsistency(0)
