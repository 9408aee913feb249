"""Stage D: fused streaming inference with the previous frame cached (ALGORITHM.md, "Stage D").

Per frame the adapted model, frozen and in eval mode, yields two distributions at the
original frame resolution: the plain branch P_plain and the temporal add-on P_addon, whose
attention reads the *previous* frame's fused features F_{t-1} and plain logits L_{t-1}.
:func:`fuse` mixes them by reliability where the plain branch is unsure (R0 < tau).

The research code re-runs the (t-1, t) pair through the whole network for every frame.
:class:`StreamPredictor` instead keeps F_{t-1} and L_{t-1} from the frame before, so each
frame runs the backbone once; :func:`predict_clip` is the uncached pair evaluation, kept as
the reference the cache is tested against (they agree up to float rounding).

Frame-size work. On a CPU the output side costs more than a small network: per branch the
1/4-resolution logits become C x H x W floats (124 x 480 x 854 = 203 MB on VSPW) through two
bilinear steps, a softmax and an entropy. :func:`frame_output` therefore

- writes every C x H x W map into a :class:`FrameWorkspace` that a predictor keeps across
  frames of one size (a fresh map per call costs a page fault per 4 KiB, about as much as
  the arithmetic), upsamples each branch into it with the very kernel ``to_frame_size``
  uses, and takes the softmax in place;
- computes each branch's entropy terms into the workspace too (``torch.special.entr``, then
  a sum over classes: the same operations as before, see :func:`_entropy_into`);
- blends in place (``lerp_``) and takes one argmax (on CPU through a matrix product,
  :func:`_class_argmax`).

Every number is the one the straightforward pipeline (to_frame_size, softmax, entropy,
blend, argmax, each into a new tensor) gives, bit for bit; test_fusion.py keeps that
pipeline as its reference.

The labels, probabilities and reliabilities it returns are fresh tensors, never views of
the workspace. The per-frame path makes no host synchronisation on CUDA before the caller
copies the labels (and optionally the reliability) back: the input goes up from pinned
memory without blocking, and nothing reads a device value on the host.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ditta_ros.config import FusionConfig, ModelConfig
from ditta_ros.engine.errors import ConfigError, InputError
from ditta_ros.engine.preprocess import check_frame, prepare

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

# Weight of the plain branch where both reliabilities are 0 (R0 + R1 = 0, i.e. both
# branches sit at their frame's maximum entropy): w = R0 / (R0 + R1) is 0/0 there, and the
# reference would produce NaN. Neither branch is more reliable, so both count equally.
TIE_WEIGHT = 0.5

# ATen's bilinear upsampling with an output argument (the kernel F.interpolate and
# preprocess.to_frame_size call, without the allocation). Not in torch's type stubs.
_UPSAMPLE_BILINEAR_OUT: Callable[..., Tensor] = torch._C._nn.upsample_bilinear2d


def fusion_weight(r_plain: Tensor, r_addon: Tensor, tau: float) -> Tensor:
    """Weight w of the plain branch per pixel: (B, H, W) reliabilities -> (B, H, W).

    w = R0 / (R0 + R1) where R0 < tau (strict), :data:`TIE_WEIGHT` where R0 + R1 = 0 there,
    and exactly 1 elsewhere (plain branch only).
    """
    total = r_plain + r_addon
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    w = torch.where(total > 0, r_plain / safe_total, torch.full_like(total, TIE_WEIGHT))
    return torch.where(r_plain < tau, w, torch.ones_like(w))


def _entropy_into(probs: Tensor, scratch: Tensor, out: Tensor) -> Tensor:
    """(1, C, H, W) float32 probabilities -> ``out`` (1, H, W) = -sum_c p log p, with
    ``scratch`` (at least C x H x W float32 elements) holding the C x H x W terms.

    torch.special.entr (0 log 0 = 0) then a sum over classes, the very operations of the
    first implementation: the numbers must not change by a bit. Where a frame is nearly
    uniform (a random-init model: every entropy within ~1e-6 of log C), R = 1 - E / max E
    is a few ulps wide and w = R0 / (R0 + R1) is decided by rounding; a vectorised log
    (3x faster here) moves E by an ulp and changes labels there.
    """
    terms = scratch[:probs.numel()].view(probs.shape)          # (1, C, H, W)
    torch.special.entr(probs, out=terms)
    return torch.sum(terms, dim=1, out=out)                    # (1, H, W)


def _reliability_from_entropy(e: Tensor) -> Tensor:
    """(B, H, W) entropy -> R = 1 - E / max_frame(E); an all-certain frame gives R = 1."""
    e_max = e.amax(dim=(1, 2), keepdim=True)                   # (B, 1, 1)
    safe_max = torch.where(e_max > 0, e_max, torch.ones_like(e_max))
    return 1.0 - e / safe_max


def branch_reliability(probs: Tensor) -> Tensor:
    """(B, C, H, W) probabilities -> (B, H, W) R = 1 - E / max_frame(E), as stage A's
    :func:`~ditta_ros.engine.reliability.reliability` (0 log 0 = 0, an all-certain frame
    gives R = 1). The entropy uses torch.special.entr (one kernel) where stage A uses
    torch.log, so the two differ by float rounding (about 1e-7 in R).
    """
    if probs.dim() != 4:
        raise InputError(f"expected (B, C, H, W) probabilities, got shape {tuple(probs.shape)}")
    p = probs.float()
    e = torch.empty((p.shape[0],) + tuple(p.shape[2:]), dtype=torch.float32,
                    device=p.device)                           # (B, H, W)
    scratch = torch.empty(p[0].numel(), dtype=torch.float32, device=p.device)
    for b in range(p.shape[0]):
        _entropy_into(p[b:b + 1], scratch, e[b:b + 1])
    return _reliability_from_entropy(e)


def _blend_(p_plain: Tensor, p_addon: Tensor, r_plain: Tensor, r_addon: Tensor,
            tau: float) -> Tensor:
    """P_addon <- w P_plain + (1 - w) P_addon in place; (B, C, H, W) maps, (B, H, W) R.

    Computed as lerp(P_addon, P_plain, w) = P_addon + w (P_plain - P_addon), one pass
    instead of three; torch evaluates it as P_plain - (P_plain - P_addon)(1 - w) for
    w >= 0.5, which is P_plain bit for bit where w = 1.
    """
    w = fusion_weight(r_plain, r_addon, tau).unsqueeze(1).to(p_plain.dtype)  # (B,1,H,W)
    return p_addon.lerp_(p_plain, w)


def fuse(p_plain: Tensor, p_addon: Tensor, tau: float, in_place: bool = False) -> Tensor:
    """Stage D fusion: (B, C, H, W) probabilities of both branches -> fused (B, C, H, W).

    R0, R1 are each branch's stage-A reliability (1 - E / max E, each normalised by its own
    frame maximum; :func:`branch_reliability`). Where R0 < tau:
    P = w P_plain + (1 - w) P_addon, w = R0 / (R0 + R1); elsewhere P = P_plain exactly.
    ``in_place`` writes P into ``p_addon`` (saves one C x H x W buffer per frame).
    """
    if p_plain.shape != p_addon.shape or p_plain.dim() != 4:
        raise InputError(f"fuse expects two (B, C, H, W) probability maps of one shape, got "
                         f"{tuple(p_plain.shape)} and {tuple(p_addon.shape)}")
    target = p_addon if in_place else p_addon.clone()
    return _blend_(p_plain, target, branch_reliability(p_plain),
                   branch_reliability(p_addon), tau)


class FrameWorkspace:
    """The frame-size buffers of one stream, reused across frames of one size.

    ``probs`` (branches, C, H, W) float32 holds each branch's logits, then (in place) its
    probabilities, and the add-on half finally the fused distribution. ``scratch`` (flat
    float32, C x max(Hin x Win, H x W)) holds the network-input-size step of the
    upsampling, then each branch's entropy terms. Both are allocated on first use and again
    only when the class count, a size, the device or the number of branches grows, so
    memory does not grow with the stream: about (branches + 1) x C x H x W x 4 bytes (0.6
    GB for two branches at 124 x 480 x 864). :meth:`release` frees them.

    Not thread-safe: one workspace per stream (a :class:`StreamPredictor` owns one).
    """

    def __init__(self, branches: int = 2) -> None:
        self._min_branches = branches            # allocate for this many from the start
        self._probs: Tensor | None = None
        self._scratch: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(t.numel() * t.element_size()
                   for t in (self._probs, self._scratch) if t is not None)

    def release(self) -> None:
        """Free the buffers (they are allocated again on the next frame)."""
        self._probs = None
        self._scratch = None

    def buffers(self, branches: int, num_classes: int, input_hw: tuple[int, int],
                frame_hw: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        """(branches, C, H, W) probability buffer and the flat scratch buffer."""
        height, width = frame_hw
        probs_shape = (max(branches, self._min_branches), num_classes, height, width)
        scratch_len = num_classes * max(input_hw[0] * input_hw[1], height * width)
        probs = self._probs
        if (probs is None or probs.device != device or tuple(probs.shape[1:]) != probs_shape[1:]
                or probs.shape[0] < branches):
            self._probs = probs = None                 # drop the old one before allocating
            probs = self._probs = torch.empty(probs_shape, dtype=torch.float32, device=device)
        scratch = self._scratch
        if scratch is None or scratch.device != device or scratch.numel() != scratch_len:
            self._scratch = scratch = None
            scratch = self._scratch = torch.empty(scratch_len, dtype=torch.float32,
                                                  device=device)
        return probs[:branches], scratch


def _upsample_into(src: Tensor, dst: Tensor) -> None:
    """Bilinear (align_corners False) (1, C, h, w) -> ``dst`` (1, C, H, W), the same kernel
    and numbers as F.interpolate(src, size=(H, W), mode="bilinear", align_corners=False)."""
    size = [int(dst.shape[2]), int(dst.shape[3])]
    try:
        _UPSAMPLE_BILINEAR_OUT(src, size, False, None, None, out=dst)
    except TypeError:            # a torch without the out= overload: allocate, then copy
        dst.copy_(F.interpolate(src, size=(size[0], size[1]), mode="bilinear",
                                align_corners=False))


def _frame_logits_into(logits: Tensor, input_hw: tuple[int, int], frame_hw: tuple[int, int],
                       dst: Tensor, scratch: Tensor) -> None:
    """preprocess.to_frame_size into ``dst``: (1, C, h, w) float32 -> (1, C, H, W), bilinear
    to the network input size (through ``scratch``), then to the frame size, bit for bit;
    a step whose target equals its source size is skipped as there."""
    steps: list[tuple[int, int]] = []
    size = (int(logits.shape[2]), int(logits.shape[3]))
    for hw in (input_hw, frame_hw):
        hw = (int(hw[0]), int(hw[1]))
        if hw != size:
            steps.append(hw)
            size = hw
    if not steps:
        dst.copy_(logits)
        return
    src = logits
    for i, hw in enumerate(steps):
        if i == len(steps) - 1:
            out = dst
        else:
            out = scratch[:logits.shape[1] * hw[0] * hw[1]].view(1, logits.shape[1], *hw)
        _upsample_into(src, out)
        src = out


def _softmax_(x: Tensor) -> None:
    """Softmax over dim 1 of (B, C, H, W), in place.

    On CPU the kernel reads all of a pixel's class values before it writes them, so the
    output may alias the input (test_fusion checks the result bit for bit against the
    out-of-place softmax, at one and two threads). Other devices take the out-of-place
    softmax and a copy: the same numbers, with no reliance on how their kernel orders its
    reads and writes.
    """
    if x.device.type == "cpu":
        torch.softmax(x, dim=1, out=x)
    else:
        x.copy_(torch.softmax(x, dim=1))


def _class_argmax(probs: Tensor, scratch: Tensor) -> Tensor:
    """(1, C, H, W) -> (H, W) int64 argmax over classes, ties -> lowest class, exactly as
    ``probs.argmax(dim=1)[0]``; ``scratch`` (at least C x H x W float32) is overwritten.

    On CPU torch's argmax over a non-innermost dimension is a scalar loop; this takes the
    class maximum (vectorised), marks the classes that reach it (1.0 / 0.0) and gets, with
    one (2, C) x (C, H W) matrix product, the sum of the marked class indices and their
    count: where exactly one class reaches the maximum (integers below 2^24, one non-zero
    term: exact) that sum is the label. Pixels with a tie or a NaN (count != 1) are
    re-done by torch's argmax. Twice as fast at 124 x 480 x 854; finding those pixels needs
    the host, so other devices use torch's argmax (fast there).
    """
    if probs.device.type != "cpu":
        return probs.argmax(dim=1)[0]
    classes = int(probs.shape[1])
    flat = probs.reshape(classes, -1)                               # (C, H W)
    hits = scratch[:flat.numel()].view(flat.shape)
    torch.eq(flat, flat.amax(dim=0, keepdim=True), out=hits)       # 1.0 at each maximum
    weights = torch.stack([torch.arange(classes, dtype=torch.float32),
                           torch.ones(classes, dtype=torch.float32)])  # (2, C)
    index_count = weights @ hits                                   # (2, H W)
    labels = index_count[0].long()
    odd = (index_count[1] != 1).nonzero().squeeze(1)               # ties, NaN
    if odd.numel() > 0:
        labels[odd] = flat[:, odd].argmax(dim=0)
    return labels.view(tuple(probs.shape[2:]))


@dataclass(frozen=True)
class FrameOutput:
    """Stage D output of one frame, tensors still on the model's device.

    labels: (H, W) int64. probs: (C, H, W) float32 final distribution (fused or plain) when
    asked for. reliability: (H, W) float32 of that distribution when asked for. fused: True
    when the add-on branch took part (there was a previous frame). All are fresh tensors
    (never views of a :class:`FrameWorkspace`): they stay valid after later frames.
    """

    labels: Tensor
    probs: Tensor | None
    reliability: Tensor | None
    fused: bool


def frame_output(plain_logits: Tensor, addon_logits: Tensor | None, input_hw: tuple[int, int],
                 frame_hw: tuple[int, int], tau: float, with_probs: bool = False,
                 with_reliability: bool = False,
                 workspace: FrameWorkspace | None = None) -> FrameOutput:
    """(1, C, h, w) plain logits and optional (1, C, h, w) add-on logits of one frame ->
    labels (and optionally probabilities, reliability) at the frame size.

    ``workspace`` keeps the C x H x W buffers for the next frame (a temporary one is used
    when None). Same numbers as upsampling both branches with ``to_frame_size``, softmax,
    :func:`fuse` and argmax; the reliability as :func:`branch_reliability`.
    """
    if plain_logits.dim() != 4 or plain_logits.shape[0] != 1:
        raise InputError(f"frame_output expects (1, C, h, w) plain logits, got shape "
                         f"{tuple(plain_logits.shape)}")
    if addon_logits is not None and addon_logits.shape != plain_logits.shape:
        raise InputError(f"add-on logits {tuple(addon_logits.shape)} do not match the plain "
                         f"logits {tuple(plain_logits.shape)}")
    ws = workspace if workspace is not None else FrameWorkspace(branches=1)
    branches = [plain_logits] if addon_logits is None else [plain_logits, addon_logits]
    probs, scratch = ws.buffers(len(branches), int(plain_logits.shape[1]), input_hw, frame_hw,
                                plain_logits.device)                 # (n, C, H, W), flat
    for b, logits in enumerate(branches):
        # NCHW-contiguous as the batch torch.cat made before: the add-on's logits come out
        # channels-last, and bilinear upsampling of a channels-last map is another kernel
        # with other rounding.
        _frame_logits_into(logits.float().contiguous(), input_hw, frame_hw, probs[b:b + 1],
                           scratch)
    _softmax_(probs)                                                 # per branch
    if addon_logits is None:
        final = probs[0:1]                                           # (1, C, H, W)
    else:
        e = torch.empty((2,) + tuple(probs.shape[2:]), dtype=torch.float32,
                        device=probs.device)                         # (2, H, W)
        for b in range(2):
            _entropy_into(probs[b:b + 1], scratch, e[b:b + 1])
        r = _reliability_from_entropy(e)                             # (2, H, W)
        final = _blend_(probs[0:1], probs[1:2], r[0:1], r[1:2], tau)  # into the add-on half
    labels = _class_argmax(final, scratch)   # (H, W); ties -> lowest class (first maximum)
    rel = None
    if with_reliability:
        e_final = torch.empty((1,) + tuple(final.shape[2:]), dtype=torch.float32,
                              device=final.device)                   # (1, H, W)
        rel = _reliability_from_entropy(_entropy_into(final, scratch, e_final))[0]
    return FrameOutput(labels, final[0].clone() if with_probs else None, rel,
                       addon_logits is not None)


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

    The frame-size buffers (a :class:`FrameWorkspace`) are kept between frames; a change
    of frame size replaces them and :meth:`release_buffers` frees them.

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
        self._workspace = FrameWorkspace(branches=2 if use_addon else 1)

    @property
    def primed(self) -> bool:
        """True when the next frame (of the cached size) will use the add-on."""
        return self._cache is not None

    @property
    def buffer_bytes(self) -> int:
        """Bytes of frame-size buffers held between frames."""
        return self._workspace.nbytes

    def reset(self) -> None:
        """Forget the previous frame (new stream, resolution change)."""
        self._cache = None

    def release_buffers(self) -> None:
        """Free the frame-size buffers now (e.g. while this predictor is not serving); the
        next frame allocates them again. The cached previous frame is kept."""
        self._workspace.release()

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
                                self.fusion_config.tau, with_probs, with_reliability,
                                self._workspace)

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
