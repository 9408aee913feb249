"""Stage D: fused streaming inference with the previous frame cached (ALGORITHM.md, "Stage D").

Per frame the adapted model, frozen and in eval mode, yields two distributions at the
original frame resolution: the plain branch P_plain and the temporal add-on P_addon, whose
attention reads the *previous* frame's fused features F_{t-1} and plain logits L_{t-1}.
:func:`fuse` mixes them by reliability where the plain branch is unsure (R0 < tau).

The research code re-runs the (t-1, t) pair through the whole network for every frame.
:class:`StreamPredictor` instead keeps F_{t-1} and L_{t-1} from the frame before, so each
frame runs the backbone once; :func:`predict_clip` is the uncached pair evaluation, kept as
the reference the cache is tested against (they agree up to float rounding).

The frame-size work (upsampling, softmax, entropy, blend, argmax) is
:func:`~ditta_ros.engine.output_stage.frame_output`, one band of rows at a time; this module
re-exports it with :class:`FrameOutput`, :func:`fusion_weight` and :data:`TIE_WEIGHT`.
:func:`fuse` is the whole-map fusion those bands reproduce, for callers that hold the two
probability maps.

The per-frame path makes no host synchronisation on CUDA before the caller copies the
labels (and optionally the reliability) back: the input goes up from pinned memory without
blocking, and nothing reads a device value on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ditta_ros.config import FusionConfig, ModelConfig
from ditta_ros.engine.output_stage import OUTPUT_STAGE as OUTPUT_STAGE
from ditta_ros.engine.output_stage import TIE_WEIGHT as TIE_WEIGHT
from ditta_ros.engine.output_stage import FrameOutput as FrameOutput
from ditta_ros.engine.output_stage import OutputBuffers, output_stage_plan
from ditta_ros.engine.output_stage import frame_output as frame_output
from ditta_ros.engine.output_stage import fusion_weight as fusion_weight
from ditta_ros.engine.precision import autocast, check_precision
from ditta_ros.engine.preprocess import check_frame, input_size, prepare
from ditta_ros.engine.reliability import entropy_into, reliability_from_entropy
from ditta_ros.errors import InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel


def branch_reliability(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) R = 1 - E / max_frame(E), stage A's
    :func:`~ditta_ros.engine.reliability.reliability` (an all-certain frame gives R = 1)."""
    if probs.dim() != 4:
        raise InputError(f"expected (B, C, H, W) probabilities, got shape {tuple(probs.shape)}")
    p = probs.float()
    e = torch.empty((p.shape[0],) + tuple(p.shape[2:]), dtype=torch.float32,
                    device=p.device)                           # (B, H, W)
    entropy_into(p, e)
    return reliability_from_entropy(e)


def fuse(p_plain: Tensor, p_addon: Tensor, tau: float, in_place: bool = False) -> Tensor:
    """Stage D fusion: (B, C, H, W) probabilities of both branches -> fused (B, C, H, W).

    R0, R1 are each branch's stage-A reliability (1 - E / max E, each normalised by its own
    frame maximum; :func:`branch_reliability`). Where R0 < tau:
    P = w P_plain + (1 - w) P_addon, w = R0 / (R0 + R1); elsewhere P = P_plain exactly.
    Computed as lerp(P_addon, P_plain, w) = P_addon + w (P_plain - P_addon), which torch
    evaluates as P_plain - (P_plain - P_addon)(1 - w) for w >= 0.5: P_plain bit for bit
    where w = 1. ``in_place`` writes P into ``p_addon``.
    """
    if p_plain.shape != p_addon.shape or p_plain.dim() != 4:
        raise InputError(f"fuse expects two (B, C, H, W) probability maps of one shape, got "
                         f"{tuple(p_plain.shape)} and {tuple(p_addon.shape)}")
    target = p_addon if in_place else p_addon.clone()
    w = fusion_weight(branch_reliability(p_plain), branch_reliability(p_addon), tau)
    return target.lerp_(p_plain, w.unsqueeze(1).to(p_plain.dtype))

def _to_numpy(out: FrameOutput) -> tuple[np.ndarray, np.ndarray | None]:
    # The only host synchronisation of the per-frame path.
    labels = out.labels.cpu().numpy()
    rel = out.reliability.cpu().numpy() if out.reliability is not None else None
    return labels, rel


def _input_tensor(frame: np.ndarray, model_config: ModelConfig,
                  device: torch.device) -> Tensor:
    """(H, W, 3) uint8 BGR -> (1, 3, Hin, Win) float32 network input on ``device``.

    To a CUDA device the input goes from pinned (page-locked) memory with a non-blocking
    copy, so the host does not wait for it. Safe to let the staging tensor go right away:
    torch's pinned-memory allocator does not hand its block out again before the copy that
    reads it has finished.
    """
    x = torch.from_numpy(prepare(frame, model_config.fit_long, model_config.fit_short))
    x = x.unsqueeze(0)                                               # (1, 3, Hin, Win)
    if device.type == "cuda":
        staged = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        staged.copy_(x)
        return staged.to(device, non_blocking=True)
    return x.to(device)


@dataclass(frozen=True)
class _Cache:
    """The previous frame as the add-on needs it, from the adapted model in eval mode."""

    features: Tensor            # (1, D, h, w) F_{t-1}, post BN-ReLU
    logits: Tensor              # (1, C, h, w) L_{t-1}, plain logits at 1/4
    frame_hw: tuple[int, int]


class StreamPredictor:
    """Stage D over a stream, one frame at a time, backbone once per frame.

    ``use_addon=False`` serves the plain branch only (the base ISS model, a FAILED
    adaptation, or an adaptation-free baseline); nothing is cached then. With the add-on,
    the first frame (or the first after :meth:`reset` or a change of frame size) has no
    previous frame and yields the plain branch only, as frame 0 of a stream does.

    The output stage's H x W buffers (:class:`OutputBuffers`) are kept between frames; a
    change of frame size replaces them and :meth:`release_buffers` frees them.
    :meth:`output_stage` names how frames of a size are computed (status, benchmarks).

    Not thread-safe: one thread pushes frames (the Session serialises its pushes). The
    model is put in eval mode and must not be trained while a predictor uses it.
    """

    def __init__(self, model: DittaModel, model_config: ModelConfig,
                 fusion_config: FusionConfig, device: torch.device | str,
                 use_addon: bool) -> None:
        self.model = model.eval()
        self.model_config = model_config
        self.fusion_config = fusion_config
        self.device = torch.device(device)
        check_precision(model_config.precision, self.device)
        self.use_addon = use_addon
        self._cache: _Cache | None = None
        self._buffers = OutputBuffers()

    @property
    def primed(self) -> bool:
        """True when the next frame (of the cached size) will use the add-on."""
        return self._cache is not None

    @property
    def buffer_bytes(self) -> int:
        """Bytes of frame-size buffers held between frames."""
        return self._buffers.nbytes

    def output_stage(self, frame_hw: tuple[int, int]) -> str:
        """How the frame-size output of frames of this size is computed."""
        hin, win = input_size(frame_hw[0], frame_hw[1], self.model_config.fit_long,
                              self.model_config.fit_short)
        return output_stage_plan((hin // 4, win // 4), (hin, win), frame_hw)

    def reset(self) -> None:
        """Forget the previous frame (new stream, resolution change)."""
        self._cache = None

    def release_buffers(self) -> None:
        """Free the frame-size buffers now (e.g. while this predictor is not serving); the
        next frame allocates them again. The cached previous frame is kept."""
        self._buffers.release()

    def _encode(self, frame: np.ndarray) -> tuple[Tensor, Tensor, tuple[int, int]]:
        check_frame(frame)
        x = _input_tensor(frame, self.model_config, self.device)
        with autocast(self.device, self.model_config.precision):
            feats, logits = self.model.iss.forward_features(x)   # (1,D,h,w), (1,C,h,w)
        return feats, logits, (int(x.shape[2]), int(x.shape[3]))

    def prime(self, frame: np.ndarray) -> None:
        """Encode ``frame`` (e.g. the last warm-up frame) as the previous frame of the next
        one, without producing labels. A no-op without the add-on."""
        if not self.use_addon:
            return
        with torch.inference_mode():
            feats, logits, _ = self._encode(frame)
        self._cache = _Cache(feats, logits, (int(frame.shape[0]), int(frame.shape[1])))

    def step(self, frame: np.ndarray, with_probs: bool = False,
             with_reliability: bool = False) -> FrameOutput:
        """One frame -> :class:`FrameOutput` on the device; advances the cache."""
        check_frame(frame)
        frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        if self._cache is not None and self._cache.frame_hw != frame_hw:
            self._cache = None               # a new resolution starts a new stream
        with torch.inference_mode():
            feats, logits, input_hw = self._encode(frame)
            addon_logits = None
            if self.use_addon and self._cache is not None:
                with autocast(self.device, self.model_config.precision):
                    addon_logits = self.model.addon(feats, self._cache.features,
                                                    self._cache.logits)   # (1, C, h, w)
            if self.use_addon:
                # Replaces the previous entry: the cache never grows with the stream.
                self._cache = _Cache(feats, logits, frame_hw)
            return frame_output(logits, addon_logits, input_hw, frame_hw,
                                self.fusion_config.tau, with_probs, with_reliability,
                                self._buffers)

    def predict(self, frame: np.ndarray, with_reliability: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, 3) uint8 BGR -> labels (H, W) int64 and, when asked, reliability (H, W)
        float32 of the served distribution; raises InputError for a malformed frame."""
        return _to_numpy(self.step(frame, with_reliability=with_reliability))


def clip_output(model: DittaModel, prev_frame: np.ndarray | None, frame: np.ndarray,
                model_config: ModelConfig, fusion_config: FusionConfig,
                device: torch.device | str, with_probs: bool = False,
                with_reliability: bool = False) -> FrameOutput:
    """The research code's uncached evaluation: the (t-1, t) clip runs through the whole
    network as a batch of 2 and the add-on output belongs to frame t. No previous frame:
    frame t alone, plain branch only."""
    dev = torch.device(device)
    check_precision(model_config.precision, dev)
    check_frame(frame)
    frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
    frames = [frame] if prev_frame is None else [prev_frame, frame]
    for f in frames:
        check_frame(f)
        if f.shape[:2] != frame.shape[:2]:
            raise InputError(f"a clip needs frames of one size: previous frame "
                             f"{f.shape[0]} x {f.shape[1]}, frame {frame_hw[0]} x {frame_hw[1]}")
    model.eval()
    with torch.inference_mode():
        x = torch.cat([_input_tensor(f, model_config, dev) for f in frames])  # (B,3,Hin,Win)
        with autocast(dev, model_config.precision):
            feats, logits = model.iss.forward_features(x)           # (B,D,h,w), (B,C,h,w)
            addon_logits = (model.addon(feats[1:], feats[:1], logits[:1])
                            if prev_frame is not None else None)
        return frame_output(logits[-1:], addon_logits, (int(x.shape[2]), int(x.shape[3])),
                            frame_hw, fusion_config.tau, with_probs, with_reliability)


def predict_clip(model: DittaModel, prev_frame: np.ndarray | None, frame: np.ndarray,
                 model_config: ModelConfig, fusion_config: FusionConfig,
                 device: torch.device | str) -> np.ndarray:
    """Labels (H, W) int64 of ``frame`` by the uncached (t-1, t) clip evaluation."""
    out = clip_output(model, prev_frame, frame, model_config, fusion_config, device)
    return out.labels.cpu().numpy()
