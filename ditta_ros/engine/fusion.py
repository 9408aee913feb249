"""Stage D: fused streaming inference with the previous frame cached (ALGORITHM.md, "Stage D").

Per frame the adapted model, frozen and in eval mode, yields two distributions at the
original frame resolution: the plain branch P_plain and the temporal add-on P_addon, whose
attention reads the *previous* frame's fused features F_{t-1} and plain logits L_{t-1}.
:func:`fuse` mixes them by reliability where the plain branch is unsure (R0 < tau).

The research code re-runs the (t-1, t) pair through the whole network for every frame.
:class:`StreamPredictor` instead keeps F_{t-1} and L_{t-1} from the frame before, so each
frame runs the backbone once; :func:`predict_clip` is the uncached pair evaluation, kept as
the reference the cache is tested against (they agree up to float rounding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager

import numpy as np
import torch
from torch import Tensor

from ditta_ros.config import FusionConfig, ModelConfig
from ditta_ros.engine.errors import ConfigError, InputError
from ditta_ros.engine.preprocess import check_frame, prepare, to_frame_size

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

# Weight of the plain branch where both reliabilities are 0 (R0 + R1 = 0, i.e. both
# branches sit at their frame's maximum entropy): w = R0 / (R0 + R1) is 0/0 there, and the
# reference would produce NaN. Neither branch is more reliable, so both count equally.
TIE_WEIGHT = 0.5


def fusion_weight(r_plain: Tensor, r_addon: Tensor, tau: float) -> Tensor:
    """Weight w of the plain branch per pixel: (B, H, W) reliabilities -> (B, H, W).

    w = R0 / (R0 + R1) where R0 < tau (strict), :data:`TIE_WEIGHT` where R0 + R1 = 0 there,
    and exactly 1 elsewhere (plain branch only).
    """
    total = r_plain + r_addon
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    w = torch.where(total > 0, r_plain / safe_total, torch.full_like(total, TIE_WEIGHT))
    return torch.where(r_plain < tau, w, torch.ones_like(w))


def branch_reliability(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) R = 1 - E / max_frame(E), as stage A's
    :func:`~ditta_ros.engine.reliability.reliability` (0 log 0 = 0, an all-certain frame
    gives R = 1).

    The entropy uses torch.special.entr (one kernel) where stage A uses xlogy, which torch
    runs as five passes over the C x H x W map (log, mul, eq, masked_fill, copy); at 124 x
    480 x 854 that is the largest cost of fusion on CPU. Both compute -p log p; they differ
    only in float rounding (about 1e-7 in R).
    """
    e = torch.special.entr(probs.float()).sum(dim=1)            # (B, H, W)
    e_max = e.amax(dim=(1, 2), keepdim=True)                    # (B, 1, 1)
    safe_max = torch.where(e_max > 0, e_max, torch.ones_like(e_max))
    return 1.0 - e / safe_max


def fuse(p_plain: Tensor, p_addon: Tensor, tau: float, in_place: bool = False) -> Tensor:
    """Stage D fusion: (B, C, H, W) probabilities of both branches -> fused (B, C, H, W).

    R0, R1 are each branch's stage-A reliability (1 - E / max E, each normalised by its own
    frame maximum; :func:`branch_reliability`). Where R0 < tau:
    P = w P_plain + (1 - w) P_addon, w = R0 / (R0 + R1); elsewhere P = P_plain exactly.
    ``in_place`` writes P into ``p_addon`` (saves one C x H x W buffer per frame).

    Computed as lerp(P_addon, P_plain, w) = P_addon + w (P_plain - P_addon), one pass instead
    of three; torch evaluates it as P_plain - (P_plain - P_addon)(1 - w) for w >= 0.5, which
    is P_plain bit for bit where w = 1.
    """
    if p_plain.shape != p_addon.shape or p_plain.dim() != 4:
        raise InputError(f"fuse expects two (B, C, H, W) probability maps of one shape, got "
                         f"{tuple(p_plain.shape)} and {tuple(p_addon.shape)}")
    w = fusion_weight(branch_reliability(p_plain), branch_reliability(p_addon), tau)
    w = w.unsqueeze(1).to(p_plain.dtype)                         # (B, 1, H, W)
    if in_place:
        return p_addon.lerp_(p_plain, w)
    return torch.lerp(p_addon, p_plain, w)


@dataclass(frozen=True)
class FrameOutput:
    """Stage D output of one frame, tensors still on the model's device.

    labels: (H, W) int64. probs: (C, H, W) float32 final distribution (fused or plain) when
    asked for. reliability: (H, W) float32 of that distribution when asked for. fused: True
    when the add-on branch took part (there was a previous frame).
    """

    labels: Tensor
    probs: Tensor | None
    reliability: Tensor | None
    fused: bool


def frame_output(plain_logits: Tensor, addon_logits: Tensor | None, input_hw: tuple[int, int],
                 frame_hw: tuple[int, int], tau: float, with_probs: bool = False,
                 with_reliability: bool = False) -> FrameOutput:
    """(1, C, h, w) plain logits and optional (1, C, h, w) add-on logits of one frame ->
    labels (and optionally probabilities, reliability) at the frame size."""
    if addon_logits is None:
        logits = to_frame_size(plain_logits.float(), input_hw, frame_hw)   # (1, C, H, W)
        probs = torch.softmax(logits, dim=1)
        fused = False
    else:
        both = torch.cat([plain_logits, addon_logits]).float()             # (2, C, h, w)
        branch_probs = torch.softmax(to_frame_size(both, input_hw, frame_hw), dim=1)
        probs = fuse(branch_probs[0:1], branch_probs[1:2], tau, in_place=True)  # (1,C,H,W)
        fused = True
    labels = probs.argmax(dim=1)[0]          # (H, W); ties -> lowest class (first maximum)
    rel = branch_reliability(probs)[0] if with_reliability else None
    return FrameOutput(labels, probs[0] if with_probs else None, rel, fused)


def _to_numpy(out: FrameOutput) -> tuple[np.ndarray, np.ndarray | None]:
    # The only host synchronisation of the per-frame path.
    labels = out.labels.cpu().numpy()
    rel = out.reliability.cpu().numpy() if out.reliability is not None else None
    return labels, rel


def _autocast(device: torch.device, half: bool) -> ContextManager[object]:
    if half:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _check_half(model_config: ModelConfig, device: torch.device) -> None:
    if model_config.half and device.type != "cuda":
        raise ConfigError(f"ModelConfig.half = True needs a CUDA device, but the model runs on "
                          f"{device}; set half to false or device to cuda")


def _input_tensor(frame: np.ndarray, model_config: ModelConfig,
                  device: torch.device) -> Tensor:
    x = torch.from_numpy(prepare(frame, model_config.fit_long, model_config.fit_short))
    return x.unsqueeze(0).to(device, non_blocking=True)                  # (1, 3, Hin, Win)


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
        _check_half(model_config, self.device)
        self.use_addon = use_addon
        self._cache: _Cache | None = None

    @property
    def primed(self) -> bool:
        """True when the next frame (of the cached size) will use the add-on."""
        return self._cache is not None

    def reset(self) -> None:
        """Forget the previous frame (new stream, resolution change)."""
        self._cache = None

    def _encode(self, frame: np.ndarray) -> tuple[Tensor, Tensor, tuple[int, int]]:
        check_frame(frame)
        x = _input_tensor(frame, self.model_config, self.device)
        with _autocast(self.device, self.model_config.half):
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
                with _autocast(self.device, self.model_config.half):
                    addon_logits = self.model.addon(feats, self._cache.features,
                                                    self._cache.logits)   # (1, C, h, w)
            if self.use_addon:
                # Replaces the previous entry: the cache never grows with the stream.
                self._cache = _Cache(feats, logits, frame_hw)
            return frame_output(logits, addon_logits, input_hw, frame_hw,
                                self.fusion_config.tau, with_probs, with_reliability)

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
    _check_half(model_config, dev)
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
        with _autocast(dev, model_config.half):
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
