"""Stage D (ditta_ros.engine.fusion): the tau rule on hand-made distributions, then the cached
streaming path against the research code's uncached (t-1, t) clip evaluation on a tiny seeded
SegFormer (real transformers model, 64 x 96 synthetic frames), and the buffered frame-size
path (bands of rows, ditta_ros.engine.output_stage) against the straightforward whole-map
pipeline (kept here as the reference): every number the same, bit for bit."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator

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
from torch.profiler import ProfilerActivity, profile

from ditta_ros.config import FusionConfig, ModelConfig
from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.fusion import (
    TIE_WEIGHT,
    StreamPredictor,
    branch_reliability,
    clip_output,
    frame_output,
    fuse,
    fusion_weight,
    predict_clip,
)
from ditta_ros.engine.output_stage import OutputBuffers, band_rows, class_argmax
from ditta_ros.engine.preprocess import FrameRows, prepare, to_frame_size
from ditta_ros.engine.reliability import iss_labels, reliability
from ditta_ros.engine.scratch import Scratch
from ditta_ros.errors import ConfigError, InputError
from ditta_ros.synthetic import SyntheticVideo

FUSION = FusionConfig()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny maps: a second OpenMP thread only adds waiting on a shared CPU (10-100 x slower
    under load). Tests that need two threads set them themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

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


def test_branch_reliability_is_stage_a_reliability() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 7, 5, 6, generator=gen) * 4, dim=1)
    probs[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])       # 0 log 0 = 0
    ours = branch_reliability(probs)
    assert torch.equal(ours, reliability(probs))                     # one entropy function
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
    with pytest.raises(ConfigError, match=r"ModelConfig\.precision = 'fp64'"):
        tiny_config(precision="fp64")
    with pytest.raises(ConfigError, match=r"ModelConfig\.precision = 'bf16' needs autocast"):
        StreamPredictor(model, tiny_config(precision="bf16").model, FUSION, "meta",
                        use_addon=True)
    frames = frames_of(make_video(seed=7), 1) + frames_of(make_video(7, 48, 80), 1)
    with pytest.raises(InputError, match="one size"):
        predict_clip(model, frames[0], frames[1], config.model, FUSION, "cpu")


# ----------------------------------------------------------------------------- frame-size path
# frame_output (bands of rows, argmax by a matrix product) against the straightforward
# whole-map pipeline, kept here as the reference: every number must be the same, bit for bit.


def _reference_reliability(probs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): entropy -sum p log p (0 log 0 = 0) with one whole-map
    torch.sum, 1 - E / max_frame E."""
    p = probs.float()
    e = -(p * torch.log(p)).masked_fill(p == 0, 0.0).sum(dim=1)
    e_max = e.amax(dim=(1, 2), keepdim=True)
    return 1.0 - e / torch.where(e_max > 0, e_max, torch.ones_like(e_max))


def _reference_output(plain: torch.Tensor, addon: torch.Tensor | None,
                      input_hw: tuple[int, int], frame_hw: tuple[int, int], tau: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage D at frame size as first written: labels (H, W), probs (C, H, W), R (H, W).

    Both branches as one batch through to_frame_size, softmax, reliabilities, the tau
    rule, lerp(P_addon, P_plain, w) (the blend the labels were defined with), argmax.
    """
    if addon is None:
        probs = torch.softmax(to_frame_size(plain.float(), input_hw, frame_hw), dim=1)
    else:
        both = torch.softmax(to_frame_size(torch.cat([plain, addon]).float(), input_hw,
                                           frame_hw), dim=1)             # (2, C, H, W)
        r0, r1 = _reference_reliability(both[0:1])[0], _reference_reliability(both[1:2])[0]
        total = r0 + r1
        w = torch.where(total > 0, r0 / torch.where(total > 0, total, 1.0),
                        torch.full_like(total, TIE_WEIGHT))
        w = torch.where(r0 < tau, w, torch.ones_like(w))
        probs = torch.lerp(both[1:], both[:1], w[None, None])
    return probs.argmax(dim=1)[0], probs[0], _reference_reliability(probs)[0]


def _logits(seed: int, classes: int, hw: tuple[int, int], near_ties: bool) -> torch.Tensor:
    """(1, C, h, w) logits. near_ties: ~1e-3 apart, as a random-init SegFormer's (every
    label decided by float rounding); else a mix of confident and unsure pixels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, classes, *hw, generator=gen)
    if near_ties:
        return x * 1e-3
    sharpness = torch.rand(1, 1, *hw, generator=gen) * 12.0       # 0: flat, 12: peaked
    return x * sharpness


SIZES = [  # (logits h x w, network input, frame): both steps, frame > input, no 2nd step
    ((12, 20), (48, 80), (45, 77)),
    ((8, 12), (32, 48), (70, 101)),
    ((16, 24), (64, 96), (64, 96)),
]


@pytest.mark.parametrize("near_ties", [False, True])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("tile_rows", [16, 32, None])
def test_frame_output_matches_the_straightforward_pipeline(sizes, near_ties: bool,
                                                           tile_rows: int | None) -> None:
    low_hw, input_hw, frame_hw = sizes
    buffers = OutputBuffers()
    for seed in range(3):
        plain = _logits(2 * seed, 19, low_hw, near_ties)
        addon = _logits(2 * seed + 1, 19, low_hw, near_ties)
        if seed == 1:              # the model's add-on logits come out channels-last
            addon = addon.contiguous(memory_format=torch.channels_last)
        for other in (None, addon):
            out = frame_output(plain, other, input_hw, frame_hw, 0.8, with_probs=True,
                               with_reliability=True, buffers=buffers, tile_rows=tile_rows)
            labels, probs, rel = _reference_output(plain, other, input_hw, frame_hw, 0.8)
            assert out.probs is not None and out.reliability is not None
            assert out.fused == (other is not None)
            assert torch.equal(out.labels, labels)
            assert torch.equal(out.probs, probs)     # bit for bit, not just close
            assert torch.equal(out.reliability, rel)
    if not near_ties:                                # the tau rule had both cases to decide
        r0 = _reference_reliability(torch.softmax(
            to_frame_size(plain.float(), input_hw, frame_hw), dim=1))
        assert (r0 >= 0.8).any() and (r0 < 0.8).any()


def test_class_argmax_is_torch_argmax_with_ties_and_nan() -> None:
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(1, 9, 6, 7, generator=gen), dim=1)
    probs[0, :, 0, 0] = 0.1                              # all classes tie: class 0
    probs[0, :, 0, 1] = torch.tensor([0.1, 0.3, 0.0, 0.3, 0.1, 0.0, 0.2, 0.0, 0.0])  # 1 and 3
    probs[0, :, 0, 2] = torch.tensor([0.0] * 8 + [1.0])  # last class alone
    probs[0, 4, 0, 3] = float("nan")                     # torch's argmax points at the NaN
    labels = class_argmax(probs)
    assert torch.equal(labels, probs.argmax(dim=1)[0])
    assert labels[0, :4].tolist() == [0, 1, 8, 4]


def test_buffers_are_reused_and_outputs_do_not_alias_them() -> None:
    plain, addon = _logits(0, 7, (10, 14), False), _logits(1, 7, (10, 14), False)
    buffers = OutputBuffers()
    first = frame_output(plain, addon, (40, 56), (37, 50), 0.8, with_probs=True,
                         with_reliability=True, buffers=buffers)
    kept = (first.labels.clone(), first.probs.clone(), first.reliability.clone())
    frame_output(plain, None, (40, 56), (37, 50), 0.8, buffers=buffers)  # the plain walk's
    held = buffers.nbytes                                                # band buffer too
    # two entropies + the final one, and both branches' probabilities (bands of 64 rows:
    # 32 x 50 pixels is a whole number of 64-pixel kernel blocks)
    assert band_rows(50) == 64 and band_rows(50, 16) == 32
    assert 0 < buffers.scratch.nbytes
    assert held == 3 * 37 * 50 * 4 + 2 * 7 * 37 * 50 * 4 + buffers.scratch.nbytes
    for _ in range(3):                               # same size: no new buffers
        frame_output(addon, plain, (40, 56), (37, 50), 0.8, with_reliability=True,
                     buffers=buffers)
        frame_output(plain, None, (40, 56), (37, 50), 0.8, buffers=buffers)
        assert buffers.nbytes == held
    assert torch.equal(first.labels, kept[0]) and torch.equal(first.probs, kept[1])
    assert torch.equal(first.reliability, kept[2])
    # a new size replaces the buffers (not added to them), results still the reference's
    out = frame_output(plain, addon, (40, 56), (80, 112), 0.8, buffers=buffers)
    assert buffers.nbytes == 3 * 80 * 112 * 4 + 2 * 7 * 80 * 112 * 4 + buffers.scratch.nbytes
    assert torch.equal(out.labels, _reference_output(plain, addon, (40, 56), (80, 112), 0.8)[0])
    buffers.release()
    assert buffers.nbytes == 0


@pytest.mark.parametrize("addon", [False, True])
def test_a_steady_stream_allocates_no_band_of_classes(addon: bool) -> None:
    """After a stream's first frame the band loops compute in kept buffers: the new
    tensors of a frame are its results and H x W maps, never a C x rows x W band (each
    such allocation maps fresh pages: it cost as much as the arithmetic, BENCHMARKS.md)."""
    plain, other = _logits(0, 19, (16, 24), False), _logits(1, 19, (16, 24), False)
    other_or_none = other if addon else None
    buffers = OutputBuffers()
    frame_output(plain, other_or_none, (64, 96), (64, 90), 0.8, with_reliability=True,
                 buffers=buffers, tile_rows=32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = frame_output(plain, other_or_none, (64, 96), (64, 90), 0.8,
                           with_reliability=True, buffers=buffers, tile_rows=32)
    allocations = [e.cpu_memory_usage for e in prof.events() if e.name == "aten::empty"]
    band = 19 * band_rows(90, 32) * 90 * 4                 # one branch, one band: 219 kB
    results = out.labels.numel() * out.labels.element_size()     # H x W int64: 46 kB
    assert allocations and max(allocations) <= results < band
    assert torch.equal(out.labels, _reference_output(plain, other_or_none, (64, 96), (64, 90),
                                                     0.8)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_frame_rows_are_the_whole_map_upsampling_bit_for_bit(threads: int) -> None:
    """Bands of any height (also odd ones, not used for serving) of every geometry kind:
    power-of-two and identity height steps (by bands), other ratios (whole-map step),
    tiny maps (torch's small-output kernel) and 3-channel maps (another kernel at 1 thread)."""
    torch.set_num_threads(threads)
    geometries = [((12, 20), (48, 80), (45, 77)), ((8, 12), (32, 48), (70, 101)),
                  ((10, 14), (40, 56), (37, 50)), ((30, 54), (120, 216), (120, 214)),
                  ((5, 3), (20, 12), (20, 11)), ((2, 50), (8, 200), (8, 199)),
                  ((30, 40), (120, 160), (120, 160))]
    for low_hw, input_hw, frame_hw in geometries:
        for classes in (3, 5):
            x = _logits(classes, classes, low_hw, False)
            reference = to_frame_size(x, input_hw, frame_hw)
            for scratch in (None, Scratch()):       # new tensors / kept buffers (.out ops)
                rows = FrameRows(x, input_hw, frame_hw, scratch)
                for band in (1, 7, 16, 33):
                    got = torch.cat([rows.rows(r, min(r + band, frame_hw[0])).clone()
                                     for r in range(0, frame_hw[0], band)], dim=2)
                    assert torch.equal(got, reference), (low_hw, input_hw, frame_hw, band)
    x = _logits(0, 3, (10, 14), False)
    assert FrameRows(x, (40, 56), (37, 50)).materialised == [1]       # 40 -> 37 rows
    assert FrameRows(x, (40, 56), (40, 50)).materialised == []


def test_one_and_two_threads_give_the_same_numbers() -> None:
    plain, addon = _logits(3, 19, (30, 54), True), _logits(4, 19, (30, 54), True)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(frame_output(plain, addon, (120, 216), (120, 214), 0.8,
                                     with_probs=True, with_reliability=True))
    finally:
        torch.set_num_threads(before)
    labels, probs, rel = _reference_output(plain, addon, (120, 216), (120, 214), 0.8)
    for out in outs:
        assert out.probs is not None and out.reliability is not None
        assert torch.equal(out.labels, labels) and torch.equal(out.probs, probs)
        assert torch.equal(out.reliability, rel)


def test_stream_buffers_do_not_grow_with_the_stream(sharp_model) -> None:
    config = tiny_config()
    frames = frames_of(make_video(seed=8), 5)
    stream = StreamPredictor(sharp_model, config.model, FUSION, "cpu", use_addon=True)
    stream.predict(frames[0])                        # plain branch only: H x W maps
    assert stream.buffer_bytes > 0
    stream.predict(frames[1])                        # fused: the kept bands too
    held = stream.buffer_bytes
    assert held > 0
    for frame in frames[2:]:
        stream.predict(frame)
        assert stream.buffer_bytes == held
    stream.release_buffers()
    assert stream.buffer_bytes == 0
    stream.reset()
    labels, _ = stream.predict(frames[0])            # allocated again on demand
    stream.predict(frames[1])
    assert stream.buffer_bytes == held and labels.shape == frames[0].shape[:2]


def _no_host_sync(device: str) -> contextlib.AbstractContextManager[object]:
    """On CUDA: raise on any operation that makes the host wait for the device."""
    if device != "cuda":
        return contextlib.nullcontext()
    torch.cuda.set_sync_debug_mode("error")
    return _restore_sync_mode()


@contextlib.contextmanager
def _restore_sync_mode() -> Iterator[None]:
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_step_waits_for_nothing_before_the_label_copy(sharp_model, device: str) -> None:
    """The per-frame path up to the label copy makes no host synchronisation on CUDA (sync
    debug mode raises on any), and its kept buffers give the clip's labels frame after
    frame."""
    config = tiny_config()
    model = sharp_model.to(device)
    frames = frames_of(make_video(seed=9), 4)
    stream = StreamPredictor(model, config.model, FUSION, device, use_addon=True)
    stream.predict(frames[0])                        # allocations, library set-up
    with _no_host_sync(device):
        outs = [stream.step(frame, with_reliability=True) for frame in frames[1:]]
    for out, frame, prev in zip(outs, frames[1:], frames):
        expected = predict_clip(model, prev, frame, config.model, FUSION, device)
        np.testing.assert_array_equal(out.labels.cpu().numpy(), expected)
        assert out.reliability is not None and out.reliability.device.type == device
    model.to("cpu")


@pytest.mark.slow
def test_b0_sized_stream_labels_equal_the_straightforward_pipeline() -> None:
    """A B0-sized random model (124 classes, every pixel a near tie) on 480 x 854 frames:
    the streaming predictor's labels are the reference pipeline's, pixel for pixel."""
    model_config = ModelConfig(variant="b0", num_classes=124, embed_dim=256)
    model = build_model(model_config, "cpu").eval()
    frames = frames_of(SyntheticVideo(480, 854, num_classes=8, num_shapes=4, seed=0), 3)
    stream = StreamPredictor(model, model_config, FUSION, "cpu", use_addon=True)
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for frame in frames:
        labels, rel = stream.predict(frame, with_reliability=True)
        with torch.inference_mode():
            x = torch.from_numpy(prepare(frame)).unsqueeze(0)
            feats, logits = model.iss.forward_features(x)
            addon = model.addon(feats, *prev) if prev is not None else None
            ref_labels, _, ref_rel = _reference_output(logits, addon, (480, 864), (480, 854),
                                                       FUSION.tau)
        prev = (feats, logits)
        np.testing.assert_array_equal(labels, ref_labels.numpy())
        assert rel is not None
        np.testing.assert_array_equal(rel, ref_rel.numpy())


def test_output_stage_names_how_a_frame_size_is_computed() -> None:
    config = tiny_config()
    fit = ModelConfig(variant="tiny", num_classes=config.model.num_classes, embed_dim=32)
    stream = StreamPredictor(tiny_model(config), fit, FUSION, "cpu", use_addon=True)
    assert stream.output_stage((480, 854)) == "row-tiled (eager)"       # x4 then x1 rows
    assert stream.output_stage((480, 640)) == "row-tiled (eager)"
    wide = stream.output_stage((720, 1280))                               # 480 -> 720 rows
    assert wide.startswith("row-tiled (eager)") and "480->720" in wide


def test_low_precision_on_a_cpu_without_its_units_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # Against this machine's real /proc/cpuinfo: a warning exactly when it lacks bf16 units.
    from ditta_ros.engine import precision
    precision._warn_emulated.cache_clear()
    native = precision.cpu_has_native_units(torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="ditta_ros.engine.precision"):
        for _ in range(3):
            precision.check_precision("bf16", "cpu")
        precision.check_precision("fp32", "cpu")
    lines = [r.getMessage() for r in caplog.records]
    if native is False:
        assert len(lines) == 1
        assert "model.precision = 'bf16'" in lines[0] and "Set model.precision to fp32" in lines[0]
        assert "amx_bf16/avx512_bf16/bf16" in lines[0]
    else:
        assert lines == []
