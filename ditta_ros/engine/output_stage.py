"""Stage D at the frame size: labels, confidence and the fusion, one band of rows at a time.

Per branch the 1/4-resolution logits become C x H x W values at the frame size (124 x 480 x
854 = 203 MB on VSPW) through two bilinear steps, then a softmax, an entropy and an argmax.
Done map by map, every one of those operations is a pass over memory; :func:`frame_output`
instead walks the frame in bands of rows (:data:`TILE_ROWS` on a CPU) small enough to stay in
the processor's caches, and never builds a frame-size map:

- ISS alone (one branch): per band, upsample (:class:`~ditta_ros.engine.preprocess.FrameRows`),
  softmax, argmax, and the entropy when the confidence is asked for.
- DiTTA (two branches): the weight w = R0 / (R0 + R1) of a pixel needs each branch's
  entropy *maximum over the frame*, so a first walk upsamples and normalises both branches
  band by band, keeps the probabilities (written once, band after band) and computes their
  entropies; a second walk reads each band back, blends it with w, takes the argmax and
  the entropy of the result. Reading the kept bands costs less than upsampling again.

Every intermediate band lives in the stream's :class:`OutputBuffers` (its
:class:`~ditta_ros.engine.scratch.Scratch`): operations write into kept buffers (``out=``,
in place), because a new C x rows x W tensor per operation maps fresh pages and cost as
much as the arithmetic. The softmax runs in place on the upsampled band (on a CPU), and a
same-height last step (480 x 864 -> 480 x 854) writes straight into the kept band.

Every number is the one the straightforward pipeline (``to_frame_size`` on the whole map,
softmax, entropy, blend, argmax, each into a new tensor) gives, bit for bit: a band of rows
is computed with the same operations per element (the same kernels, or for a same-height
step the linear kernel, whose arithmetic per row is the bilinear kernel's), and a band's
pixel count is a multiple of 64, so the vectorised kernels split a band into vector blocks
exactly as they split the whole map (test_fusion keeps that pipeline as its reference and
checks it, at one and two threads). Only public torch API is used (the ``out`` overloads of
the upsampling operators through ``torch.ops.aten``).

The labels, probabilities and reliabilities returned are fresh tensors. Nothing reads a
device value on the host, so on CUDA the caller's label copy is the only synchronisation;
there a band is the whole frame (a GPU has the bandwidth and gains nothing from bands).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ditta_ros.engine.preprocess import FrameRows
from ditta_ros.engine.reliability import entropy_into, reliability_from_entropy
from ditta_ros.engine.scratch import Scratch
from ditta_ros.errors import InputError

# Weight of the plain branch where both reliabilities are 0 (R0 + R1 = 0, i.e. both
# branches sit at their frame's maximum entropy): w = R0 / (R0 + R1) is 0/0 there, and the
# reference would produce NaN. Neither branch is more reliable, so both count equally.
TIE_WEIGHT = 0.5

# Rows per band on a CPU, at least: with the work buffers kept, 64 rows was the fastest or
# within 5 % of it for both outputs among 32, 64 and 128 at 124 x 480 x 854, 1 thread
# (bench/bench_fusion.py, BENCHMARKS.md): fewer, taller bands repeat fewer halo rows of
# the x4 step and fewer per-call costs. A band of one branch is then 27 MB.
TILE_ROWS = 64

# A band holds a multiple of this many pixels: torch's CPU kernels work through a map in
# blocks of up to 4 vectors (the class sum of the entropy: 4 x 8 floats on AVX2, 4 x 16 on
# AVX-512) and finish a range with smaller blocks whose rounding differs, so each band must
# start and end where the whole map's blocks do.
_BLOCK = 64

# The output stage this module implements, as reported by benchmarks and the status.
OUTPUT_STAGE = "row-tiled (eager)"


def fusion_weight(r_plain: Tensor, r_addon: Tensor, tau: float) -> Tensor:
    """Weight w of the plain branch per pixel: (..., H, W) reliabilities -> (..., H, W).

    w = R0 / (R0 + R1) where R0 < tau (strict), :data:`TIE_WEIGHT` where R0 + R1 = 0 there,
    and exactly 1 elsewhere (plain branch only).
    """
    total = r_plain + r_addon
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    w = torch.where(total > 0, r_plain / safe_total, torch.full_like(total, TIE_WEIGHT))
    return torch.where(r_plain < tau, w, torch.ones_like(w))


def class_argmax(probs: Tensor, scratch: Scratch | None = None) -> Tensor:
    """(1, C, h, W) -> (h, W) int64 argmax over classes, ties -> lowest class, exactly as
    ``probs.argmax(dim=1)[0]``.

    On CPU torch's argmax over a non-innermost dimension is a scalar loop; this takes the
    class maximum (vectorised), marks the classes that reach it (1.0 / 0.0) and gets, with
    one (2, C) x (C, h W) matrix product, the sum of the marked class indices and their
    count: where exactly one class reaches the maximum (integers below 2^24, one non-zero
    term: exact) that sum is the label. Pixels with a tie or a NaN (count != 1) are re-done
    by torch's argmax. Finding those pixels needs the host, so other devices use torch's
    argmax (fast there). The marks live in the buffers of ``scratch`` (kept by the caller)
    or of a temporary one.
    """
    if probs.device.type != "cpu":
        return probs.argmax(dim=1)[0]
    scratch = scratch if scratch is not None else Scratch()
    classes = int(probs.shape[1])
    flat = probs.reshape(classes, -1)                               # (C, h W)
    n = int(flat.shape[1])
    weights = torch.stack([torch.arange(classes, dtype=torch.float32),
                           torch.ones(classes, dtype=torch.float32)])  # (2, C)
    top = torch.amax(flat, dim=0, keepdim=True,
                     out=scratch.take("class max", (1, n), flat.device))
    hits = torch.eq(flat, top,                                     # 1.0 at each maximum
                    out=scratch.take("class hits", (classes, n), flat.device))
    index_count = torch.matmul(weights, hits,                      # (2, h W)
                               out=scratch.take("class sums", (2, n), flat.device))
    labels = index_count[0].long()
    odd = (index_count[1] != 1).nonzero().squeeze(1)               # ties, NaN
    if odd.numel() > 0:
        labels[odd] = flat[:, odd].argmax(dim=0)
    return labels.view(tuple(probs.shape[2:]))


def _softmax_(x: Tensor) -> Tensor:
    """Softmax over dim 1 of a contiguous (B, C, h, W) band, in place; returns ``x``.

    On CPU the kernel reads all of a pixel's class values before it writes them, so the
    output may alias the input (test_fusion checks every result bit for bit against the
    out-of-place softmax, at one and two threads); that saves a band of memory traffic.
    Other devices take the out-of-place softmax and a copy: the same numbers, with no
    reliance on how their kernel orders its reads and writes.
    """
    if x.device.type == "cpu":
        return torch.softmax(x, dim=1, out=x)
    return x.copy_(torch.softmax(x, dim=1))


@dataclass(frozen=True)
class FrameOutput:
    """Stage D output of one frame, tensors still on the model's device.

    labels: (H, W) int64. probs: (C, H, W) float32 final distribution (fused or plain) when
    asked for. reliability: (H, W) float32 of that distribution when asked for. fused: True
    when the add-on branch took part (there was a previous frame). All are fresh tensors.
    """

    labels: Tensor
    probs: Tensor | None
    reliability: Tensor | None
    fused: bool


class OutputBuffers:
    """The buffers of one stream's output stage, kept across frames of one size: H x W
    float maps (entropies, weights), for two branches both branches' probabilities band by
    band (2 x C x H x W floats, 406 MB at 124 x 480 x 854: the second walk reads them back
    instead of upsampling again), and the :class:`~ditta_ros.engine.scratch.Scratch` of the
    band loops (a few C x rows x W bands). :meth:`release` frees them. Not thread-safe: one
    per stream."""

    def __init__(self) -> None:
        self._maps: Tensor | None = None
        self.scratch = Scratch()
        self._kept = Scratch()

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        maps = 0 if self._maps is None else self._maps.numel() * self._maps.element_size()
        return maps + self.scratch.nbytes + self._kept.nbytes

    def release(self) -> None:
        self._maps = None
        self.scratch.release()
        self._kept.release()

    def maps(self, count: int, frame_hw: tuple[int, int], device: torch.device) -> Tensor:
        """(count, H, W) float32, contents undefined; reallocated only when it must grow,
        the frame size or the device changes."""
        m = self._maps
        if (m is None or m.device != device or tuple(m.shape[1:]) != tuple(frame_hw)
                or m.shape[0] < count):
            self._maps = None
            m = self._maps = torch.empty((max(count, 3),) + tuple(frame_hw),
                                         dtype=torch.float32, device=device)
        return m[:count]

    def band_probs(self, bands: list[tuple[int, int]], classes: int, width: int,
                   device: torch.device) -> list[Tensor]:
        """Per band (r0, r1) a contiguous (2, C, r1 - r0, W) float32 view of one buffer
        (contents undefined); a new frame size with no more pixels reuses it."""
        sizes = [2 * classes * (r1 - r0) * width for r0, r1 in bands]
        flat = self._kept.take("probabilities", (sum(sizes),), device)
        views, offset = [], 0
        for (r0, r1), size in zip(bands, sizes):
            views.append(flat[offset:offset + size].view(2, classes, r1 - r0, width))
            offset += size
        return views


def band_rows(width: int, tile_rows: int = TILE_ROWS) -> int:
    """Rows per band for maps ``width`` pixels wide: at least ``tile_rows``, and a whole
    number of kernel blocks (rows x width a multiple of :data:`_BLOCK`)."""
    unit = _BLOCK // math.gcd(width, _BLOCK)
    return -(-max(tile_rows, 1) // unit) * unit


def _bands(frame_hw: tuple[int, int], device: torch.device,
           tile_rows: int | None) -> list[tuple[int, int]]:
    height, width = frame_hw
    if tile_rows is not None and tile_rows < 1:
        raise InputError(f"tile_rows must be >= 1, got {tile_rows}")
    if device.type != "cpu":
        rows = tile_rows or height
    else:
        rows = band_rows(width, tile_rows or TILE_ROWS)
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def frame_output(plain_logits: Tensor, addon_logits: Tensor | None, input_hw: tuple[int, int],
                 frame_hw: tuple[int, int], tau: float, with_probs: bool = False,
                 with_reliability: bool = False, buffers: OutputBuffers | None = None,
                 tile_rows: int | None = None) -> FrameOutput:
    """(1, C, h, w) plain logits and optional (1, C, h, w) add-on logits of one frame ->
    labels (and optionally probabilities, reliability) at the frame size.

    Same numbers as upsampling both branches with ``to_frame_size``, softmax, the fusion of
    :func:`~ditta_ros.engine.fusion.fuse` and argmax; the reliability as stage A's.
    ``buffers`` keeps the H x W buffers for the next frame (temporary ones when None);
    ``tile_rows`` sets the least band height (rounded up by :func:`band_rows` on a CPU).
    """
    if plain_logits.dim() != 4 or plain_logits.shape[0] != 1:
        raise InputError(f"frame_output expects (1, C, h, w) plain logits, got shape "
                         f"{tuple(plain_logits.shape)}")
    if addon_logits is not None and addon_logits.shape != plain_logits.shape:
        raise InputError(f"add-on logits {tuple(addon_logits.shape)} do not match the plain "
                         f"logits {tuple(plain_logits.shape)}")
    device = plain_logits.device
    height, width = int(frame_hw[0]), int(frame_hw[1])
    classes = int(plain_logits.shape[1])
    bands = _bands((height, width), device, tile_rows)
    bufs = buffers if buffers is not None else OutputBuffers()
    scratch = bufs.scratch
    branches = [FrameRows(plain_logits, input_hw, frame_hw, scratch)]
    if addon_logits is not None:
        branches.append(FrameRows(addon_logits, input_hw, frame_hw, scratch))
    maps = bufs.maps(len(branches) + 1, (height, width), device)
    labels = torch.empty((height, width), dtype=torch.int64, device=device)
    probs_out = (torch.empty((classes, height, width), dtype=torch.float32, device=device)
                 if with_probs else None)
    e_final = maps[-1:]                                                # (1, H, W)
    kept: list[Tensor] = []
    w = None
    if addon_logits is not None:
        # Walk 1: both branches' probabilities, kept band by band, and their entropies.
        kept = bufs.band_probs(bands, classes, width, device)
        e = maps[:2]                                                   # (2, H, W)
        for (r0, r1), band in zip(bands, kept):
            for b, rows in enumerate(branches):
                p = _softmax_(rows.rows(r0, r1, out=band[b:b + 1]))    # (1, C, rows, W)
                entropy_into(p, e[b:b + 1, r0:r1], scratch)
        r = reliability_from_entropy(e)                                # (2, H, W)
        w = fusion_weight(r[0:1], r[1:2], tau).unsqueeze(1)            # (1, 1, H, W)
    for i, (r0, r1) in enumerate(bands):                               # walk 2 (the only
        if w is None:                                                  # one for ISS alone)
            final = _softmax_(branches[0].rows(r0, r1))                # (1, C, rows, W)
        else:
            band = kept[i]                                             # (2, C, rows, W)
            final = band[1:2].lerp_(band[0:1], w[:, :, r0:r1])         # P_addon <- fused
        labels[r0:r1] = class_argmax(final, scratch)  # ties -> lowest class (first maximum)
        if with_reliability:
            entropy_into(final, e_final[:, r0:r1], scratch)
        if probs_out is not None:
            probs_out[:, r0:r1] = final[0]
    for rows in branches:
        rows.release()
    rel = reliability_from_entropy(e_final)[0].clone() if with_reliability else None
    return FrameOutput(labels, probs_out, rel, addon_logits is not None)


def output_stage_plan(logits_hw: tuple[int, int], input_hw: tuple[int, int],
                      frame_hw: tuple[int, int]) -> str:
    """How :func:`frame_output` computes frames of this geometry, for status and benchmarks:
    fully by bands, or with the named bilinear steps computed for the whole map."""
    probe = FrameRows(torch.empty((1, 1) + tuple(logits_hw)), input_hw, frame_hw)
    whole = probe.materialised
    if not whole:
        return OUTPUT_STAGE
    return OUTPUT_STAGE + ", whole-map upsampling step(s) " + ", ".join(
        f"{probe.steps[k][0]}->{probe.steps[k][2]} rows" for k in whole)
