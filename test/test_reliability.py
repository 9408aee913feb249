"""Stage A: reliability on hand-made distributions, and ISS labels from a tiny real model."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from ditta_ros.config import ModelConfig
from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.model import DittaModel
from ditta_ros.engine.preprocess import prepare, to_frame_size
from ditta_ros.engine.reliability import (
    entropy,
    iss_labels,
    labels_and_reliability,
    reliability,
)
from ditta_ros.errors import CancelledError, InputError
from ditta_ros.synthetic import SyntheticVideo


def _probs(pixels: list[list[float]]) -> torch.Tensor:
    """A (1, C, 1, P) probability map from a list of P per-pixel distributions."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, -1)


def test_entropy_and_reliability_by_hand() -> None:
    probs = _probs([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    e = entropy(probs)
    e_c = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(e, torch.tensor([[[math.log(2), 0.0, e_c]]]))
    r = reliability(probs)
    assert r.dtype == torch.float32 and r.shape == (1, 1, 3)
    # Most uncertain pixel -> 0, certain pixel -> 1, no minimum subtracted.
    torch.testing.assert_close(r, torch.tensor([[[0.0, 1.0, 1 - e_c / math.log(2)]]]))


def test_zero_probabilities_count_as_zero_entropy_not_nan() -> None:
    probs = _probs([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    e = entropy(probs)
    assert not torch.isnan(e).any()
    torch.testing.assert_close(e, torch.tensor([[[0.0, math.log(2)]]]))


def test_all_certain_frame_has_reliability_one_everywhere() -> None:
    probs = _probs([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    r = reliability(probs)
    assert not torch.isnan(r).any()
    torch.testing.assert_close(r, torch.ones(1, 1, 3))


def test_uniform_frame_has_reliability_zero_everywhere() -> None:
    probs = torch.full((1, 4, 3, 5), 0.25)
    torch.testing.assert_close(reliability(probs), torch.zeros(1, 3, 5))


def test_maximum_is_taken_per_frame() -> None:
    a = _probs([[0.5, 0.5], [0.9, 0.1]])          # max entropy log 2
    b = _probs([[0.9, 0.1], [0.99, 0.01]])        # max entropy of (0.9, 0.1)
    r = reliability(torch.cat([a, b]))
    assert r.shape == (2, 1, 2)
    assert float(r[0, 0, 0]) == 0.0 and float(r[1, 0, 0]) == 0.0
    e2 = -(0.99 * math.log(0.99) + 0.01 * math.log(0.01))
    e1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert float(r[1, 0, 1]) == pytest.approx(1 - e2 / e1, rel=1e-5)


def test_float64_input_gives_float32_reliability() -> None:
    probs = torch.softmax(torch.randn(2, 5, 4, 6, dtype=torch.float64), dim=1)
    labels, r = labels_and_reliability(probs)
    assert r.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(r.amin()) >= 0.0 and float(r.amax()) <= 1.0
    # Each frame's least confident pixel has R exactly 0.
    assert torch.equal(r.flatten(1).amin(dim=1), torch.zeros(2))


def test_labels_ties_go_to_the_lowest_class() -> None:
    probs = _probs([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7]])
    labels, _ = labels_and_reliability(probs)
    assert labels.tolist() == [[[0, 1, 0, 2]]]


def test_bad_shape_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        reliability(torch.ones(3, 4, 5))


# ---- iss_labels against the tiny random SegFormer (integration) ----

@pytest.fixture(scope="module")
def tiny() -> tuple[DittaModel, ModelConfig]:
    config = ModelConfig(variant="tiny", num_classes=5, embed_dim=32, fit_long=96,
                         fit_short=64)
    return build_model(config, "cpu"), config


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    video = SyntheticVideo(height=61, width=90, num_classes=5, num_shapes=3, seed=1)
    return [video.frame(t).image for t in range(3)]


def test_iss_labels_shapes_and_values(tiny: tuple[DittaModel, ModelConfig],
                                      frames: list[np.ndarray]) -> None:
    model, config = tiny
    labels, rel = iss_labels(model, frames, config, "cpu")
    assert labels.shape == (3, 61, 90) and labels.dtype == np.int64
    assert rel.shape == (3, 61, 90) and rel.dtype == np.float32
    assert labels.min() >= 0 and labels.max() < 5
    assert float(rel.min()) >= 0.0 and float(rel.max()) <= 1.0
    np.testing.assert_array_equal(rel.reshape(3, -1).min(axis=1), np.zeros(3, np.float32))

    # Same as composing the pieces by hand on frame 2.
    x = torch.from_numpy(prepare(frames[2], config.fit_long, config.fit_short))[None]
    with torch.no_grad():
        _, logits = model.iss.forward_features(x)
    probs = torch.softmax(to_frame_size(logits, (x.shape[2], x.shape[3]), (61, 90)), dim=1)
    y, r = labels_and_reliability(probs)
    np.testing.assert_array_equal(labels[2], y[0].numpy())
    np.testing.assert_allclose(rel[2], r[0].numpy(), rtol=0, atol=1e-6)


def test_iss_labels_eval_mode_deterministic_and_mode_restored(
        tiny: tuple[DittaModel, ModelConfig], frames: list[np.ndarray]) -> None:
    model, config = tiny
    model.train()   # dropout on: stage A must still be deterministic (eval inside)
    try:
        first = iss_labels(model, frames, config, "cpu")
        second = iss_labels(model, frames, config, "cpu")
        assert model.training
    finally:
        model.eval()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    third = iss_labels(model, frames, config, "cpu")
    assert not model.training
    np.testing.assert_array_equal(first[0], third[0])


def test_iss_labels_rejects_bad_input_and_honours_cancel(
        tiny: tuple[DittaModel, ModelConfig], frames: list[np.ndarray]) -> None:
    model, config = tiny
    with pytest.raises(InputError, match="one size"):
        iss_labels(model, [frames[0], frames[1][:-1]], config, "cpu")
    with pytest.raises(InputError):
        iss_labels(model, [], config, "cpu")
    with pytest.raises(InputError):
        iss_labels(model, [frames[0][..., 0]], config, "cpu")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        iss_labels(model, frames, config, "cpu", cancel=cancel)


def test_entropy_is_the_plain_p_log_p_sum_bit_for_bit() -> None:
    # Same float32 operations as the reference (-sum(p * log p)), not a fused xlogy.
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 124, 20, 30) * 3, dim=1)
    expected = -torch.sum(probs * torch.log(probs), dim=1)
    assert torch.equal(entropy(probs), expected)
    r = reliability(probs)
    assert torch.equal(r, 1 - expected / expected.max())


@pytest.mark.parametrize("threads", [1, 2])
def test_entropy_does_not_depend_on_the_threads_or_on_bands(threads: int) -> None:
    """Stage A must be repeatable from process to process: the class sum must not depend on
    how torch splits the pixels among threads (it did: the first call in a fresh process
    could differ in the last bit), and a band of rows (stage D) must give the whole map's
    numbers."""
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(1, 124, 72, 101, generator=gen) * 1e-2, dim=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = -(probs * torch.log(probs)).sum(dim=1)      # torch.sum on one thread
        torch.set_num_threads(threads)
        whole = entropy(probs)
        bands = torch.cat([entropy(probs[:, :, r:r + 64]) for r in (0, 64)], dim=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(whole, one_thread)
    assert torch.equal(bands, one_thread)
