"""ISS input preprocessing and the way back to frame size (ALGORITHM.md, "Input preprocessing").

The reference prepares the ISS input from an 8-bit BGR image with OpenCV: an
aspect-preserving fit (round half up), a second resize that rounds each side *up* to a
multiple of 32, both bilinear on uint8, and only then the float conversion, BGR -> RGB and
ImageNet normalisation. Resizing in float (torch, PIL) gives different input tensors and
different numbers, so this module keeps the uint8 OpenCV path.

Outputs travel back the same way in reverse: logits at 1/4 of the network input are
upsampled bilinearly (align_corners False) to the network input size, then to the frame size.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ditta_ros.engine.scratch import Scratch
from ditta_ros.errors import InputError

# ImageNet statistics on the 0-255 scale, in RGB order (mmseg's SegFormer pipeline).
MEAN_RGB = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# The reference normalises with OpenCV's scalar arithmetic on a float32 image, with its
# statistics stored as float32 and widened to float64 (mmcv: np.float64 of the float32
# arrays): the mean is subtracted (exactly float32 subtraction), then the image is
# multiplied by 1 / float64(float32(std)) with a float64 product rounded back to float32.
# Taking 1/std from the decimal std instead moves about 1 in 10 R and G values by 1 ulp;
# dividing by std, or multiplying in float32, differs too.
_INV_STD_RGB = 1.0 / STD_RGB.astype(np.float64)

DEFAULT_FIT_LONG = 853
DEFAULT_FIT_SHORT = 480
ALIGN_MULTIPLE = 32


def check_frame(frame: object) -> None:
    """Raise InputError unless ``frame`` is an (H, W, 3) uint8 numpy array with H, W >= 1.

    Conversions (mono, BGRA, other encodings) are the caller's job, e.g. the node's.
    """
    expected = "expected a numpy array of shape (H, W, 3), dtype uint8 (8-bit BGR), H, W >= 1"
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame is a {type(frame).__name__}; {expected}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(
            f"frame has shape {tuple(frame.shape)}; {expected} (convert mono or 4-channel "
            "images to 3-channel BGR first)")
    if frame.dtype != np.uint8:
        raise InputError(
            f"frame has dtype {frame.dtype}; {expected} (scale and convert to uint8 first)")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"frame is empty, shape {tuple(frame.shape)}; {expected}")


def fit_size(height: int, width: int, fit_long: int = DEFAULT_FIT_LONG,
             fit_short: int = DEFAULT_FIT_SHORT) -> tuple[int, int]:
    """Step 2: the aspect-preserving fit; returns (new height, new width).

    scale = min(fit_long / long side, fit_short / short side) (frames smaller than the fit
    size are enlarged, as in the reference); new side = int(side * scale + 0.5).
    """
    if height < 1 or width < 1:
        raise InputError(f"cannot fit a frame of size {height} x {width}: both sides must be >= 1")
    if fit_long < 1 or fit_short < 1:
        raise InputError(f"fit size {fit_long} x {fit_short} must be positive")
    long_side, short_side = max(height, width), min(height, width)
    scale = min(fit_long / long_side, fit_short / short_side)
    # Deliberate deviation for degenerate frames only (e.g. 1 x 5000): the reference would
    # produce a side of 0 and crash in OpenCV; we keep at least one pixel.
    new_h = max(int(height * scale + 0.5), 1)
    new_w = max(int(width * scale + 0.5), 1)
    return new_h, new_w


def align_size(height: int, width: int, multiple: int = ALIGN_MULTIPLE) -> tuple[int, int]:
    """Step 3: round each side up to the next multiple of ``multiple``."""
    if multiple < 1:
        raise InputError(f"alignment multiple must be >= 1, got {multiple}")
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def input_size(height: int, width: int, fit_long: int = DEFAULT_FIT_LONG,
               fit_short: int = DEFAULT_FIT_SHORT) -> tuple[int, int]:
    """The network input size (Hin, Win) for a frame of size (height, width)."""
    return align_size(*fit_size(height, width, fit_long, fit_short))


def _resize_uint8(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    # cv2 takes (width, height); bilinear on uint8 is OpenCV's fixed-point path.
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def resize_frame(frame_bgr: np.ndarray, fit_long: int = DEFAULT_FIT_LONG,
                 fit_short: int = DEFAULT_FIT_SHORT) -> np.ndarray:
    """Steps 2-3 on the uint8 image: (H, W, 3) uint8 -> (Hin, Win, 3) uint8, still BGR."""
    check_frame(frame_bgr)
    fitted = _resize_uint8(frame_bgr, fit_size(frame_bgr.shape[0], frame_bgr.shape[1],
                                               fit_long, fit_short))
    return _resize_uint8(fitted, align_size(fitted.shape[0], fitted.shape[1]))


def normalize(image_bgr: np.ndarray) -> np.ndarray:
    """Step 4: (h, w, 3) uint8 BGR -> (3, h, w) float32 RGB, (x - mean) * (1 / std).

    Matches OpenCV's cvtColor + subtract + multiply on the float32 image bit for bit.
    """
    rgb = image_bgr[..., ::-1].astype(np.float32)           # (h, w, 3) RGB
    rgb -= MEAN_RGB
    chw = rgb.transpose(2, 0, 1)                            # (3, h, w) view
    out = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, _INV_STD_RGB[:, None, None], out=out, casting="same_kind")
    return out


def prepare(frame_bgr: np.ndarray, fit_long: int = DEFAULT_FIT_LONG,
            fit_short: int = DEFAULT_FIT_SHORT) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame -> (3, Hin, Win) float32 normalised RGB network input.

    Raises InputError for anything that is not an (H, W, 3) uint8 array.
    """
    return normalize(resize_frame(frame_bgr, fit_long, fit_short))


def prepare_batch(frames: Sequence[np.ndarray], fit_long: int = DEFAULT_FIT_LONG,
                  fit_short: int = DEFAULT_FIT_SHORT,
                  device: torch.device | str | None = None) -> Tensor:
    """Several frames of one size -> a (B, 3, Hin, Win) float32 tensor on ``device``."""
    if len(frames) == 0:
        raise InputError("prepare_batch needs at least one frame, got none")
    for frame in frames:
        check_frame(frame)
    size = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.shape[:2] != size:
            raise InputError(
                f"frame {i} has size {frame.shape[0]} x {frame.shape[1]} but frame 0 has "
                f"{size[0]} x {size[1]}; a batch needs frames of one size")
    batch = np.stack([prepare(f, fit_long, fit_short) for f in frames])  # (B, 3, Hin, Win)
    return torch.from_numpy(batch).to(device)


def to_frame_size(logits: Tensor, input_hw: tuple[int, int],
                  frame_hw: tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> bilinear to the network input size -> bilinear to the frame size.

    Both steps use align_corners False, as the reference does; returns (B, C, H, W). A step
    whose target equals its source size is skipped (it would be the identity).
    """
    if logits.dim() != 4:
        raise InputError(f"to_frame_size expects (B, C, h, w) logits, got shape "
                         f"{tuple(logits.shape)}")
    out = logits
    for hw in (tuple(input_hw), tuple(frame_hw)):
        if tuple(out.shape[-2:]) != hw:
            out = F.interpolate(out, size=(int(hw[0]), int(hw[1])), mode="bilinear",
                                align_corners=False)
    return out


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# torch's CPU bilinear kernel takes another code path (other rounding) for outputs with
# H + W <= 128 (and for 3-channel maps at one thread): a band of rows must take the path of
# the whole map, see FrameRows.
_SMALL_OUTPUT = 128


class FrameRows:
    """Bands of rows of ``to_frame_size(logits, input_hw, frame_hw)``, bit for bit, without
    computing the whole frame: the frame-size output stage works a band at a time, so the
    C x H x W maps never exist (stage D, :func:`~ditta_ros.engine.fusion.frame_output`).

    A bilinear step (align_corners False) whose height grows by a power of two m (the
    first step: 1/4 of the network input -> the input, m = 4) or stays the same is *row
    separable*: output row r reads input rows floor((r + 0.5) / m - 0.5) and the next one
    with weights that are exact binary fractions, so the same kernel applied to a slice of
    input rows, upsampled to m times the slice's height, computes the very same numbers
    for the rows inside it (same weights, same operations, public ``F.interpolate``). A
    step with another height ratio is computed once for the whole map on first use and
    sliced (:attr:`materialised` names those steps).

    ``logits``: (B, C, h, w); it is made NCHW-contiguous, float32 (the layout the reference
    pipeline upsamples: a channels-last map takes another kernel with other rounding).
    With a :class:`~ditta_ros.engine.scratch.Scratch`, every band is computed in its
    buffers (no new band-size tensor per call) and :meth:`rows` returns a contiguous view
    that the next :meth:`rows` call of any FrameRows on the same scratch overwrites.
    """

    def __init__(self, logits: Tensor, input_hw: tuple[int, int],
                 frame_hw: tuple[int, int], scratch: Scratch | None = None) -> None:
        if logits.dim() != 4:
            raise InputError(f"FrameRows expects (B, C, h, w) logits, got shape "
                             f"{tuple(logits.shape)}")
        self.logits = logits.float().contiguous()
        self.steps: list[tuple[int, int, int, int]] = []    # (in h, in w, out h, out w)
        size = (int(logits.shape[2]), int(logits.shape[3]))
        for hw in (input_hw, frame_hw):
            hw = (int(hw[0]), int(hw[1]))
            if hw != size:                                  # skipped as to_frame_size does
                self.steps.append((size[0], size[1], hw[0], hw[1]))
                size = hw
        self.height, self.width = size
        self._full: dict[int, Tensor] = {}
        self._scratch = scratch

    @property
    def materialised(self) -> list[int]:
        """Indices of the steps that are computed for the whole map (not row separable)."""
        return [k for k in range(len(self.steps)) if not self._separable(k)]

    def _separable(self, k: int) -> bool:
        in_h, _, out_h, _ = self.steps[k]
        return out_h % in_h == 0 and _power_of_two(out_h // in_h)

    def rows(self, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
        """Rows [r0, r1) of the frame-size map: (B, C, r1 - r0, W).

        ``out`` (contiguous, that shape): written there (a same-height last step writes
        straight into it). With a scratch and no ``out`` the band is a contiguous view of
        a scratch buffer, never the logits' own memory: the caller may overwrite it."""
        if not 0 <= r0 < r1 <= self.height:
            raise InputError(f"rows [{r0}, {r1}) outside a map of height {self.height}")
        band = self._rows(len(self.steps) - 1, r0, r1, out)
        if out is not None:
            return band if band.data_ptr() == out.data_ptr() else out.copy_(band)
        if self._scratch is None:
            return band
        if not self.steps:                                  # a slice of the logits
            return self._scratch.take("frame rows", tuple(band.shape), band.device).copy_(band)
        return self._scratch.contiguous("frame rows", band)

    def release(self) -> None:
        """Drop the whole-map results of non-separable steps (at the end of a frame)."""
        self._full.clear()

    def _rows(self, k: int, r0: int, r1: int, out: Tensor | None = None) -> Tensor:
        if k < 0:
            return self.logits[:, :, r0:r1]
        in_h, _, out_h, out_w = self.steps[k]
        if not self._separable(k):
            full = self._full.get(k)
            if full is None:
                full = self._full[k] = F.interpolate(
                    self._rows(k - 1, 0, in_h), size=(out_h, out_w), mode="bilinear",
                    align_corners=False)
            return full[:, :, r0:r1]
        m = out_h // in_h
        if m == 1:
            # Same height: output row r is input row r (the kernel adds the next row with
            # weight 0, which changes nothing for finite values), so the step resamples
            # each row along the width, exactly the rows asked for.
            return self._resample_width(k, self._rows(k - 1, r0, r1), out_w, out)
        # Input rows the band reads: from floor(source(r0)) (source = (r + 0.5) / m - 0.5,
        # clamped at 0) to the row after floor(source(r1 - 1)).
        a = max(((2 * r0 + 1 - m) // (2 * m)), 0)
        b = min(max(((2 * r1 - 1 - m) // (2 * m)), 0) + 2, in_h)
        if (b - a) * m + out_w <= _SMALL_OUTPUT < out_h + out_w:
            a, b = 0, in_h                                  # keep the whole map's kernel
        band = self._upsample(k, self._rows(k - 1, a, b), ((b - a) * m, out_w))
        return band[:, :, r0 - a * m:r1 - a * m]

    def _resample_width(self, k: int, x: Tensor, out_w: int,
                        out: Tensor | None = None) -> Tensor:
        """A same-height bilinear step of rows ``x`` (B, C, rows, w) -> (B, C, rows, out_w).

        Linear resampling of each row (``upsample_linear1d``) computes the very numbers of
        the bilinear kernel there (a row is x0 w0 + x1 w1 in both; checked bit for bit in
        test_fusion, down to 3 channels and small maps) at two thirds of its cost, and
        reads the rows where they are (a slice of the previous step needs no copy)."""
        batch, classes, rows, _ = x.shape
        flat = x.flatten(0, 1)                              # (B C, rows, w), a view
        if out is None:
            if self._scratch is None:
                return F.interpolate(flat, size=out_w, mode="linear",
                                     align_corners=False).view(batch, classes, rows, out_w)
            out = self._scratch.take(f"step {k} output", (batch, classes, rows, out_w),
                                     x.device)
        torch.ops.aten.upsample_linear1d.out(flat, [out_w], False, None,
                                             out=out.view(batch * classes, rows, out_w))
        return out

    def _upsample(self, k: int, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear step k of input rows ``x`` to ``size``: F.interpolate's numbers, in the
        scratch's buffers when there is one (the same ATen operator, output size given, no
        scale factors, through its ``out`` overload in the public ``torch.ops.aten``)."""
        if self._scratch is None:
            return F.interpolate(x.contiguous(), size=size, mode="bilinear",
                                 align_corners=False)
        x = self._scratch.contiguous(f"step {k} input", x)
        out = self._scratch.take(f"step {k} output", tuple(x.shape[:2]) + size, x.device)
        return torch.ops.aten.upsample_bilinear2d.out(x, list(size), False, None, None, out=out)
