"""Stage A: ISS labels and per-pixel reliability (ALGORITHM.md, "Stage A").

On the warm-up frames the frozen ISS model, in eval mode, labels every pixel with the argmax
of its plain-branch probabilities P at the original frame resolution, and scores it with

    E(p) = -sum_c P(c, p) log P(c, p)          (plain log, float32)
    R(p) = 1 - E(p) / max_frame E               (no minimum subtracted)

so R = 0 at the least confident pixel of the frame and R = 1 only where E = 0. Stage D uses
the same reliability for each branch of the adapted model.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from ditta_ros.config import ModelConfig
from ditta_ros.engine.precision import autocast
from ditta_ros.engine.preprocess import check_frame, prepare, to_frame_size
from ditta_ros.engine.scratch import Scratch
from ditta_ros.errors import CancelledError, InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel


# Pixels per class sum (see _class_sum_into): a multiple of 64 pixels, and at most torch's
# grain size (32768 elements) so that torch.sum runs on one thread.
_GRAIN = 32768
_BLOCK = 64


def entropy(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) float32 entropy -sum_c p log p.

    The one entropy of stages A and D (:func:`entropy_into`)."""
    if probs.dim() != 4:
        raise InputError(f"expected (B, C, H, W) probabilities, got shape {tuple(probs.shape)}")
    out = torch.empty((probs.shape[0],) + tuple(probs.shape[2:]), dtype=torch.float32,
                      device=probs.device)
    return entropy_into(probs.float(), out)


def entropy_into(probs: Tensor, out: Tensor, scratch: Scratch | None = None) -> Tensor:
    """(B, C, h, W) float32 probabilities -> ``out`` (B, h, W) float32, -sum_c p log p.

    Computed as the reference does, p * log(p) with torch.log, then summed over classes:
    torch.special.xlogy or entr differ from it in the last bit for some pixels, and
    reliabilities feed exact comparisons (threshold, peak pixel, the fusion weight).
    Deliberate deviation: 0 log 0 is taken as 0 (its limit) where the reference gets NaN
    (a float32 softmax underflowing to 0). The class sum runs in pieces that make the
    result independent of the number of threads (:func:`_class_sum_into`), so the same
    probabilities give the same entropy in every process, and a band of rows gives the
    numbers of the whole map. The C x h x W terms are computed in the buffers of
    ``scratch`` (kept by the caller: no new tensor per call) or of a temporary one.
    """
    scratch = scratch if scratch is not None else Scratch()
    plogp = scratch.take("p log p", tuple(probs.shape), probs.device)      # (B, C, h, W)
    torch.log(probs, out=plogp).mul_(probs)
    if probs.device.type == "cpu":
        # The mask changes a term only where p == 0 (0 * -inf = NaN there), and such a NaN
        # reaches that pixel's sum: check the small sum map instead of building the mask
        # over C x h x W, and redo the band with the mask only when a sum is NaN.
        _class_sum_into(plogp, out)
        if not bool(torch.isnan(out).any()):
            return out.neg_()
    zero = scratch.take("p == 0", tuple(probs.shape), probs.device, torch.bool)
    plogp.masked_fill_(torch.eq(probs, 0, out=zero), 0.0)
    _class_sum_into(plogp, out)
    return out.neg_()


def _class_sum_into(terms: Tensor, out: Tensor) -> None:
    """out (B, h, W) = terms (B, C, h, W) summed over C, as torch.sum(dim=1) on one thread.

    torch.sum over a middle dimension, with more than one thread, splits the pixels among
    threads at 32-float boundaries while its vectorised kernel adds 4 vectors of pixels at
    a time (64 floats on AVX-512) and finishes a range with single vectors, whose additions
    are grouped differently: where a split falls, and how many threads join, changes the
    last bit of some pixels' sums (the first call in a fresh process differed from later
    ones). Summing pieces of at most 32768 elements (torch then stays on one thread), each
    a multiple of 64 pixels, gives every pixel the same operations whatever the threads.
    """
    batch, classes = int(terms.shape[0]), int(terms.shape[1])
    flat = terms.reshape(batch, classes, -1)                      # (B, C, n)
    flat_out = out.view(batch, -1)                                # (B, n)
    n = int(flat.shape[2])
    if torch.get_num_threads() == 1:
        step = n                     # one thread: any multiple of 64 pixels sums alike
    else:
        step = max(_GRAIN // max(classes * batch, 1) // _BLOCK, 1) * _BLOCK
    for start in range(0, n, step):
        torch.sum(flat[:, :, start:start + step], dim=1, out=flat_out[:, start:start + step])


def reliability_from_entropy(e: Tensor) -> Tensor:
    """(B, H, W) entropy -> R = 1 - E / max_frame(E); an all-certain frame gives R = 1
    (where the whole frame has zero entropy, divide by 1: E / 1 = 0)."""
    e_max = e.amax(dim=(1, 2), keepdim=True)                   # (B, 1, 1)
    safe_max = torch.where(e_max > 0, e_max, torch.ones_like(e_max))
    return 1.0 - e / safe_max


def reliability(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) float32 R = 1 - E / max_frame(E).

    The maximum is taken per frame (per batch element). A frame whose entropy is 0
    everywhere (every pixel certain) has R = 1 everywhere instead of 0/0.
    """
    return reliability_from_entropy(entropy(probs))


def labels_and_reliability(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) probabilities -> labels (B, H, W) int64, reliability (B, H, W) float32.

    Labels are the argmax over classes; on ties the lowest class index wins (torch.argmax
    returns the first maximal index).
    """
    rel = reliability(probs)
    labels = probs.argmax(dim=1)                            # (B, H, W) int64
    return labels, rel


def iss_labels(model: DittaModel, frames: Sequence[np.ndarray], model_config: ModelConfig,
               device: torch.device | str, cancel: threading.Event | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Stage A on warm-up frames: (T, H, W) int64 labels and (T, H, W) float32 reliabilities.

    frames: T frames, (H, W, 3) uint8 BGR, all of one size. The model runs in eval mode
    under inference mode, plain branch only (``model.iss.forward_features``), one frame at a
    time (the full-resolution probabilities of one frame are C x H x W floats). The model's
    train/eval mode is restored afterwards. ``cancel``, when set, stops between frames with
    CancelledError.
    """
    if len(frames) == 0:
        raise InputError("stage A needs at least one warm-up frame, got none")
    for frame in frames:
        check_frame(frame)
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            raise InputError(
                f"warm-up frame {i} is {frame.shape[0]} x {frame.shape[1]} but frame 0 is "
                f"{height} x {width}; all warm-up frames must have one size (restart the "
                "warm-up when the resolution changes)")
    labels = np.empty((len(frames), height, width), dtype=np.int64)
    rel = np.empty((len(frames), height, width), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for t, frame in enumerate(frames):
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"stage A cancelled at warm-up frame {t}")
                x = torch.from_numpy(prepare(frame, model_config.fit_long,
                                             model_config.fit_short))
                x = x.unsqueeze(0).to(device)                       # (1, 3, Hin, Win)
                with autocast(device, model_config.precision):   # network only
                    logits = model.iss.forward_features(x).logits   # (1, C, Hin/4, Win/4)
                logits = to_frame_size(logits.float(), (x.shape[2], x.shape[3]),
                                       (height, width))             # (1, C, H, W) float32
                probs = torch.softmax(logits, dim=1)
                y, r = labels_and_reliability(probs)                # (1, H, W) each
                labels[t] = y[0].cpu().numpy()
                rel[t] = r[0].cpu().numpy()
    finally:
        model.train(was_training)
    return labels, rel
