"""Stage D (ditta_ros.engine.fusion): the tau rule on hand-made distributions, then the cached
streaming path against the research code's uncached (t-1, t) clip evaluation on a tiny seeded
SegFormer (real transformers model, 64 x 96 synthetic frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures_stream import (
    frames_of,
    make_video,
    sharpen,
    tiny_config,
    tiny_model,
)

from ditta_ros.config import FusionConfig
from ditta_ros.engine.errors import ConfigError, InputError
from ditta_ros.engine.fusion import (
    TIE_WEIGHT,
    StreamPredictor,
    branch_reliability,
    clip_output,
    fuse,
    fusion_weight,
    predict_clip,
)
from ditta_ros.engine.reliability import iss_labels, reliability

FUSION = FusionConfig()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# ----------------------------------------------------------------------------- pure rule


def _probs(rows: list[list[float]]) -> torch.Tensor:
    """Pixels' class distributions -> (1, C, 1, n)."""
    return torch.tensor(rows, dtype=torch.float32).T.reshape(1, len(rows[0]), 1, len(rows))


def test_fusion_weight_is_strict_at_tau_and_equal_on_zero_reliabilities() -> None:
    r0 = torch.tensor([[[0.8, 0.79, 0.0, 1.0, 0.3]]])
    r1 = torch.tensor([[[0.1, 0.21, 0.0, 0.0, 0.9]]])
    w = fusion_weight(r0, r1, tau=0.8)
    # R0 == tau is not below tau: plain only; R0 + R1 = 0: equal weights; R0 = 1: plain
    expected = torch.tensor([[[1.0, 0.79 / 1.0, TIE_WEIGHT, 1.0, 0.3 / 1.2]]])
    torch.testing.assert_close(w, expected)
    assert fusion_weight(r0, r1, tau=0.0).eq(1.0).all()          # nothing is below 0
    assert fusion_weight(r0, r1, tau=1.0)[0, 0, 0] < 1.0          # 0.8 < 1 now fuses


def test_fuse_mixes_by_reliability_only_where_the_plain_branch_is_unsure() -> None:
    # Entropies (nats) of the plain pixels: 0, ln 2 (the frame max), H(0.9, 0.1).
    plain = _probs([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    addon = _probs([[0.0, 1.0], [0.2, 0.8], [0.5, 0.5]])
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    r0 = [1.0, 0.0, 1.0 - h / math.log(2)]                       # 1, 0, 0.531
    h_addon = [0.0, -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), math.log(2)]
    r1 = [1.0 - e / max(h_addon) for e in h_addon]               # own frame maximum
    out = fuse(plain, addon, tau=0.8)
    # pixel 0: R0 = 1 >= tau -> plain exactly; pixels 1, 2: w = R0 / (R0 + R1)
    torch.testing.assert_close(out[..., 0], plain[..., 0], rtol=0, atol=0)
    for i in (1, 2):
        w = r0[i] / (r0[i] + r1[i])
        torch.testing.assert_close(out[..., i], w * plain[..., i] + (1 - w) * addon[..., i])
    assert r1[2] == 0.0 and out[0, 0, 0, 1] == pytest.approx(0.2)   # pixel 1: w = 0
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 1, 3))


def test_branch_reliability_is_stage_a_reliability_up_to_rounding() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 7, 5, 6, generator=gen) * 4, dim=1)
    probs[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])       # 0 log 0 = 0
    ours = branch_reliability(probs)
    torch.testing.assert_close(ours, reliability(probs), rtol=0, atol=1e-6)
    assert ours[0, 0, 0] == 1.0 and ours.amin(dim=(1, 2)).eq(0).all()
    certain = torch.zeros(1, 3, 2, 2)
    certain[:, 1] = 1.0
    assert branch_reliability(certain).eq(1.0).all()                # all-certain frame


def test_fuse_rejects_mismatched_shapes() -> None:
    with pytest.raises(InputError, match="one shape"):
        fuse(torch.ones(1, 2, 3, 3) / 2, torch.ones(1, 3, 3, 3) / 3, 0.8)


# ----------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def sharp_model():  # type: ignore[no-untyped-def]
    return sharpen(tiny_model(tiny_config()))


@pytest.mark.parametrize("device", DEVICES)
def test_cached_stream_equals_the_uncached_clip_evaluation(sharp_model, device: str) -> None:
    config = tiny_config()
    model = sharp_model.to(device)
    frames = frames_of(make_video(seed=3), 6)
    stream = StreamPredictor(model, config.model, FUSION, device, use_addon=True)
    plain = StreamPredictor(model, config.model, FUSION, device, use_addon=False)
    changed = 0
    for t, frame in enumerate(frames):
        cached = stream.step(frame, with_probs=True)
        clip = clip_output(model, frames[t - 1] if t else None, frame, config.model, FUSION,
                           device, with_probs=True)
        assert cached.fused == clip.fused == (t > 0)            # frame 0: plain branch only
        assert cached.probs is not None and clip.probs is not None
        torch.testing.assert_close(cached.probs, clip.probs, rtol=0, atol=1e-5)
        assert torch.equal(cached.labels, clip.labels)
        reference = plain.step(frame, with_probs=True)
        assert reference.probs is not None
        if t == 0:
            assert torch.equal(cached.probs, reference.probs)
        else:
            changed += int((cached.probs - reference.probs).abs().max() > 1e-3)
    assert changed == len(frames) - 1                            # the add-on takes part
    model.to("cpu")


def test_predict_returns_frame_sized_labels_and_reliability(sharp_model) -> None:
    config = tiny_config()
    frames = frames_of(make_video(seed=4), 3)
    stream = StreamPredictor(sharp_model, config.model, FUSION, "cpu", use_addon=True)
    for t, frame in enumerate(frames):
        labels, rel = stream.predict(frame, with_reliability=True)
        assert labels.shape == frame.shape[:2] and labels.dtype == np.int64
        assert rel is not None and rel.shape == frame.shape[:2] and rel.dtype == np.float32
        assert 0.0 <= rel.min() and rel.max() <= 1.0 and rel.min() == 0.0
        expected = predict_clip(sharp_model, frames[t - 1] if t else None, frame,
                                config.model, FUSION, "cpu")
        np.testing.assert_array_equal(labels, expected)
    labels, rel = stream.predict(frames[0])
    assert rel is None


def test_cache_follows_frame_size_reset_and_prime(sharp_model) -> None:
    config = tiny_config()
    small = frames_of(make_video(seed=5, height=48, width=80), 3)
    frames = frames_of(make_video(seed=5), 3)
    stream = StreamPredictor(sharp_model, config.model, FUSION, "cpu", use_addon=True)
    assert not stream.step(frames[0]).fused and stream.primed
    assert stream.step(frames[1]).fused
    out = stream.step(small[0])                  # new size: a new stream, plain branch
    assert not out.fused and tuple(out.labels.shape) == (48, 80)
    assert stream.step(small[1]).fused
    stream.reset()
    assert not stream.primed and not stream.step(small[2]).fused
    stream.reset()
    stream.prime(frames[1])                      # e.g. the last warm-up frame
    primed = stream.step(frames[2], with_probs=True)
    clip = clip_output(sharp_model, frames[1], frames[2], config.model, FUSION, "cpu",
                       with_probs=True)
    assert primed.fused and torch.equal(primed.labels, clip.labels)


def test_plain_predictor_serves_the_stage_a_labels() -> None:
    config = tiny_config()
    model = tiny_model(config)
    frames = frames_of(make_video(seed=6), 3)
    stream = StreamPredictor(model, config.model, FUSION, "cpu", use_addon=False)
    expected, _ = iss_labels(model, frames, config.model, "cpu")
    for t, frame in enumerate(frames):
        out = stream.step(frame)
        assert not out.fused and not stream.primed
        np.testing.assert_array_equal(out.labels.numpy(), expected[t])


def test_bad_input_and_settings_raise_specific_errors() -> None:
    config = tiny_config()
    model = tiny_model(config)
    stream = StreamPredictor(model, config.model, FUSION, "cpu", use_addon=True)
    with pytest.raises(InputError, match="uint8"):
        stream.predict(np.zeros((64, 96, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        stream.predict(np.zeros((64, 96), np.uint8))
    assert not stream.primed                     # a rejected frame changes nothing
    with pytest.raises(ConfigError, match="half"):
        StreamPredictor(model, tiny_config(half=True).model, FUSION, "cpu", use_addon=True)
    frames = frames_of(make_video(seed=7), 1) + frames_of(make_video(7, 48, 80), 1)
    with pytest.raises(InputError, match="one size"):
        predict_clip(model, frames[0], frames[1], config.model, FUSION, "cpu")

