"""Unit tests of the ISS input path (ALGORITHM.md, "Input preprocessing")."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ditta_ros.engine.preprocess import (
    align_size,
    check_frame,
    fit_size,
    input_size,
    normalize,
    prepare,
    prepare_batch,
    resize_frame,
    to_frame_size,
)
from ditta_ros.errors import InputError


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_vspw_example_from_the_spec() -> None:
    # A 480 x 854 VSPW frame becomes 479 x 853, then 480 x 864.
    assert fit_size(480, 854) == (479, 853)
    assert align_size(479, 853) == (480, 864)
    assert input_size(480, 854) == (480, 864)
    assert prepare(_frame(480, 854)).shape == (3, 480, 864)


@pytest.mark.parametrize(
    ("hw", "fitted", "aligned"),
    [
        ((480, 853), (480, 853), (480, 864)),     # already at the fit size
        ((720, 1280), (480, 853), (480, 864)),    # 1280 * 0.6666.. = 853.33 -> 853
        ((1080, 1920), (480, 853), (480, 864)),   # scale 4/9: 853.33 -> 853
        ((854, 480), (853, 479), (864, 480)),     # portrait mirrors landscape
        ((1024, 2048), (427, 853), (448, 864)),   # long side limits: 1024*853/2048 = 426.5 -> 427
        ((240, 320), (480, 640), (480, 640)),     # small frames are enlarged
        ((1, 1), (480, 480), (480, 480)),
        ((10, 7), (686, 480), (704, 480)),        # 10 * 480/7 = 685.71 -> 686
    ])
def test_fit_and_align(hw: tuple[int, int], fitted: tuple[int, int],
                       aligned: tuple[int, int]) -> None:
    assert fit_size(*hw) == fitted
    assert align_size(*fitted) == aligned
    assert prepare(_frame(*hw)).shape == (3, *aligned)


def test_round_half_up_not_banker() -> None:
    # Exact halves round up (Python's round() would give 2 for 2.5).
    assert fit_size(2, 4, fit_long=5, fit_short=5) == (3, 5)
    assert fit_size(1, 2, fit_long=5, fit_short=5) == (3, 5)   # 2.5 -> 3


def test_fit_size_is_configurable_and_degenerate_frames_keep_a_pixel() -> None:
    assert fit_size(480, 854, fit_long=427, fit_short=240) == (240, 427)
    assert input_size(480, 854, fit_long=427, fit_short=240) == (256, 448)
    assert fit_size(1, 5000) == (1, 853)          # 0.17 + 0.5 -> 0 in the reference
    assert align_size(32, 64) == (32, 64)
    assert align_size(33, 1) == (64, 32)


def test_resize_path_is_uint8_opencv_twice() -> None:
    frame = _frame(100, 150, seed=3)
    out = resize_frame(frame)
    assert out.dtype == np.uint8
    # Spec: bilinear uint8 to the fitted size, then bilinear uint8 to the aligned size.
    step1 = cv2.resize(frame, (720, 480), interpolation=cv2.INTER_LINEAR)
    step2 = cv2.resize(step1, (736, 480), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, step2)
    # A float resize would not give the same uint8 values as the two uint8 steps.
    direct = cv2.resize(frame, (736, 480), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(out, direct)


def test_normalisation_values_and_channel_order() -> None:
    # One pixel, BGR = (10, 20, 30): RGB = (30, 20, 10).
    image = np.array([[[10, 20, 30]]], dtype=np.uint8)
    out = normalize(image)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    expected = (np.array([30, 20, 10]) - np.array([123.675, 116.28, 103.53])) / np.array(
        [58.395, 57.12, 57.375])
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-6)
    # Pure red in BGR order lands in channel 0 after the swap.
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 2] = 255
    out = normalize(red)
    np.testing.assert_allclose(out[0], (255 - 123.675) / 58.395, rtol=1e-6)
    np.testing.assert_allclose(out[2], -103.53 / 57.375, rtol=1e-6)


def test_normalisation_matches_opencv_scalar_arithmetic_bit_for_bit() -> None:
    # The reference normalises a float32 image with cv2.cvtColor, cv2.subtract(mean) and
    # cv2.multiply(1 / std), its statistics float32 arrays widened to float64 (mmcv's
    # imnormalize: 1 / np.float64(std)). Every uint8 value in every channel must give
    # exactly OpenCV's float32 result.
    values = np.arange(256, dtype=np.uint8)
    image = np.stack(np.meshgrid(values, values[::-1], indexing="ij"), axis=-1)  # (256, 256, 2)
    image = np.concatenate([image, image[..., :1][:, ::-1]], axis=-1)            # (256, 256, 3)
    ref = image.astype(np.float32)
    cv2.cvtColor(ref, cv2.COLOR_BGR2RGB, ref)
    mean = np.array([[123.675, 116.28, 103.53]], np.float32)
    std = np.array([[58.395, 57.12, 57.375]], np.float32)
    cv2.subtract(ref, np.float64(mean), ref)
    cv2.multiply(ref, 1.0 / np.float64(std), ref)
    np.testing.assert_array_equal(normalize(image), ref.transpose(2, 0, 1))
    # 1 / std from the decimal (float64) std is another number, 1 ulp off for many values:
    # the test tells the two apart.
    other = image.astype(np.float32)[..., ::-1] - mean[0]
    other = (other * (1.0 / np.array([58.395, 57.12, 57.375]))).astype(np.float32)
    assert (other.transpose(2, 0, 1) != ref.transpose(2, 0, 1)).sum() > 1000


def test_prepare_full_pipeline_equals_manual_composition() -> None:
    frame = _frame(61, 97, seed=5)
    hw = fit_size(61, 97)
    fitted = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    ah = align_size(*hw)
    aligned = cv2.resize(fitted, (ah[1], ah[0]), interpolation=cv2.INTER_LINEAR)
    rgb = aligned[..., ::-1].astype(np.float32)
    manual = ((rgb - np.array([123.675, 116.28, 103.53], np.float32))
              / np.array([58.395, 57.12, 57.375], np.float32)).transpose(2, 0, 1)
    out = prepare(frame)
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, manual, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4), np.uint8),              # mono
    np.zeros((4, 4, 4), np.uint8),           # BGRA
    np.zeros((4, 4, 3), np.float32),         # float
    np.zeros((4, 4, 3), np.uint16),          # 16-bit
    np.zeros((0, 4, 3), np.uint8),           # empty
    [[[0, 0, 0]]],                            # not an array
])
def test_check_frame_rejects(bad: object) -> None:
    with pytest.raises(InputError, match="expected"):
        check_frame(bad)
    with pytest.raises(InputError):
        prepare(bad)  # type: ignore[arg-type]


def test_check_frame_message_names_what_was_received() -> None:
    with pytest.raises(InputError, match=r"\(4, 4, 4\)"):
        check_frame(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="float32"):
        check_frame(np.zeros((4, 4, 3), np.float32))
    check_frame(np.zeros((1, 1, 3), np.uint8))   # the smallest valid frame


def test_prepare_batch_stacks_and_rejects_mixed_sizes() -> None:
    frames = [_frame(64, 96, seed=i) for i in range(3)]
    batch = prepare_batch(frames, device="cpu")
    assert batch.shape == (3, 3, *input_size(64, 96)) and batch.dtype == torch.float32
    np.testing.assert_array_equal(batch[1].numpy(), prepare(frames[1]))
    with pytest.raises(InputError, match="one size"):
        prepare_batch([_frame(64, 96), _frame(64, 97)])
    with pytest.raises(InputError):
        prepare_batch([])


def test_to_frame_size_two_bilinear_steps_and_labels_at_frame_size() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 120, 216)       # 1/4 of a 480 x 864 input
    out = to_frame_size(logits, (480, 864), (480, 854))
    assert out.shape == (2, 5, 480, 854)
    step1 = torch.nn.functional.interpolate(logits, size=(480, 864), mode="bilinear",
                                            align_corners=False)
    step2 = torch.nn.functional.interpolate(step1, size=(480, 854), mode="bilinear",
                                            align_corners=False)
    torch.testing.assert_close(out, step2, rtol=0, atol=0)
    labels = out.argmax(dim=1)
    assert labels.shape == (2, 480, 854)


def test_to_frame_size_for_portrait_and_tiny_frames() -> None:
    for frame_hw in [(854, 480), (3, 2), (64, 96)]:
        in_hw = input_size(*frame_hw)
        logits = torch.randn(1, 3, in_hw[0] // 4, in_hw[1] // 4)
        assert to_frame_size(logits, in_hw, frame_hw).shape == (1, 3, *frame_hw)


def test_to_frame_size_keeps_a_constant_map_constant() -> None:
    # A spatially constant class map must come back constant whatever the sizes.
    logits = torch.zeros(1, 3, 16, 24)
    logits[:, 2] = 1.0
    out = to_frame_size(logits, (64, 96), (61, 97))
    assert bool((out.argmax(dim=1) == 2).all())
    with pytest.raises(InputError):
        to_frame_size(torch.zeros(3, 16, 24), (64, 96), (61, 97))
