"""Stage C: test-time adaptation of the ISS decoder and the DiTTA head (ALGORITHM.md, stage C).

A fresh deep copy of the model (the live model) is trained on the warm-up frames for a few
passes, one AdamW step per frame, with the SAM2 distillation labels (Eq. 5) and the
object-prototype contrastive loss (Eq. 6-7); a second copy (the momentum model) follows the
live model by EMA and supplies the prototypes. The backbone stays frozen. The input model is
never modified: :func:`adapt` returns the adapted copy, frozen and in eval mode.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditta_ros.config import AdaptationConfig, ModelConfig
from ditta_ros.engine import preprocess
from ditta_ros.engine.precision import autocast
from ditta_ros.engine.types import StepCallback, StepLosses, Targets
from ditta_ros.errors import AdaptationError, CancelledError, ConfigError, InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

# ----------------------------------------------------------------------------- pure parts


def distillation_labels(object_ids: np.ndarray, classes_by_id: Mapping[int, int],
                        iss_labels: np.ndarray) -> np.ndarray:
    """Eq. 5: the class of the rendered object where it has one, else the ISS label.

    object_ids: (..., H, W) integer rendered object ids, 0 = no object.
    classes_by_id: object id -> voted class (objects without a class left out).
    iss_labels: (..., H, W) integer ISS labels, same shape. Returns int64, no pixel ignored.
    """
    if object_ids.shape != iss_labels.shape:
        raise InputError(f"object-id maps {object_ids.shape} and ISS labels {iss_labels.shape} "
                         "differ in shape; pass the stage-B targets of these very frames")
    ids = object_ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise InputError("object ids must be >= 0 (0 = no object)")
    # lookup table id -> class, -1 = no class: one gather instead of one pass per object
    size = max([int(ids.max(initial=0))] + [int(k) for k in classes_by_id]) + 1
    table = np.full(size, -1, np.int64)
    for object_id, cls in classes_by_id.items():
        table[int(object_id)] = int(cls)
    table[0] = -1
    voted = table[ids]
    return np.where(voted >= 0, voted, iss_labels.astype(np.int64))


def distill_loss(logits: Tensor, labels: Tensor, on_probabilities: bool = True) -> Tensor:
    """Cross-entropy over all pixels, mean. logits (B,C,H,W), labels (B,H,W) int64.

    on_probabilities: the reference applies the cross-entropy to softmax outputs, i.e. a
    second log-softmax over probabilities (ALGORITHM.md, stage C); off: plain CE on logits.
    """
    inputs = torch.softmax(logits, dim=1) if on_probabilities else logits
    return F.cross_entropy(inputs, labels, reduction="mean")


def contrastive_weights(probs: Tensor) -> Tensor:
    """Pixel weights from the momentum model's probabilities (C,H,W) -> (H,W) float32.

    Reference detail: the entropy of softmax(P) where P already holds probabilities (a double
    softmax), then min-max normalised over the frame: w = 1 - (E' - min) / (max - min).
    """
    probs = probs.float()
    q = torch.softmax(probs, dim=0)
    entropy = -(q * torch.log_softmax(probs, dim=0)).sum(dim=0)     # (H, W)
    low, high = entropy.min(), entropy.max()
    span = high - low
    if float(span) <= 0.0:
        # Deliberate deviation: a constant entropy map makes the reference divide 0 by 0
        # (NaN weights); every pixel then counts fully instead.
        return torch.ones_like(entropy)
    return 1.0 - (entropy - low) / span


def normalized_features(projected: Tensor, frame_hw: tuple[int, int]) -> Tensor:
    """(1,D,h,w) projection-head output -> (D,H,W): L2 over channels, one bilinear step to
    the frame size, L2 again (ALGORITHM.md, stage C, contrastive features)."""
    x = F.normalize(projected.float(), dim=1).contiguous()       # NCHW, as the reference
    x = F.interpolate(x, size=frame_hw, mode="bilinear", align_corners=False)
    return F.normalize(x, dim=1)[0]


def object_prototype(features: Tensor, weights: Tensor, region: Tensor) -> Tensor:
    """L2-normalised weighted mean feature of one object. features (D,H,W), weights (H,W),
    region (H,W) bool. Divides by the pixel count, not by the sum of weights (reference)."""
    count = region.sum().clamp(min=1)
    selected = features[:, region] * weights[region]                  # (D, n)
    return F.normalize(selected.sum(dim=1) / count, dim=0)


class PrototypeStore:
    """Object prototypes of one adaptation; a known object's prototype is averaged in."""

    def __init__(self) -> None:
        self._prototypes: dict[int, Tensor] = {}

    def update(self, object_id: int, prototype: Tensor) -> Tensor:
        """Store (D,) ``prototype`` for ``object_id``, or L2-normalise((new + old) / 2) when
        one is stored already; return the stored prototype (detached)."""
        new = prototype.detach()
        old = self._prototypes.get(object_id)
        stored = new if old is None else F.normalize((new + old) / 2, dim=0)
        self._prototypes[object_id] = stored
        return stored

    def get(self, object_id: int) -> Tensor | None:
        return self._prototypes.get(object_id)

    def __len__(self) -> int:
        return len(self._prototypes)


def contrastive_loss(features: Tensor, prototypes: Tensor, target: Tensor,
                     temperature: float = 1.0) -> Tensor:
    """Eq. 7: per-pixel CE of cosine logits against the pixel's object index.

    features (D,H,W) unit vectors of the live model; prototypes (K,D) unit vectors; target
    (H,W) int64 object index in [0, K) or -1 outside every object. The sum runs over object
    pixels and is divided by *all* H*W pixels (mmseg's reduction). One object: exactly 0.
    """
    logits = torch.einsum("kd,dhw->khw", prototypes, features) / temperature   # (K, H, W)
    total = F.cross_entropy(logits[None], target[None], ignore_index=-1, reduction="sum")
    return total / target.numel()


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _FrameTargets:
    """What one warm-up frame contributes (kept on the CPU, moved to the device per step)."""

    label: Tensor                 # (1, H, W) int64 Eq. 5 label
    object_ids: tuple[int, ...]   # ascending ids present in the rendered map
    object_index: Tensor          # (H, W) int64 index into object_ids, -1 = no object


def _frame_targets(rendered: np.ndarray, label: np.ndarray) -> _FrameTargets:
    present, inverse = np.unique(rendered, return_inverse=True)
    inverse = inverse.reshape(rendered.shape).astype(np.int64)
    if present.size and present[0] == 0:
        inverse -= 1                           # id 0 (no object) becomes -1 (ignored)
    ids = tuple(int(i) for i in present if i != 0)
    return _FrameTargets(torch.from_numpy(label[None].astype(np.int64)), ids,
                         torch.from_numpy(inverse))


def _parameter_group(model: DittaModel, which: str) -> list[nn.Parameter]:
    """Unfreeze exactly the trained parameters; everything else gets requires_grad off."""
    model.requires_grad_(False)
    params = model.head_parameters(which)
    for p in params:
        p.requires_grad_(True)
    return params


def _check_inputs(model: DittaModel, frames: Sequence[np.ndarray], iss_labels: np.ndarray,
                  targets: Targets, config: AdaptationConfig) -> None:
    if not config.distill and not config.contrastive:
        raise ConfigError("AdaptationConfig.distill and .contrastive are both off: nothing to "
                          "train; turn at least one on")
    if targets.num_objects == 0:
        raise AdaptationError("stage B found no object on the warm-up frames: nothing to "
                              "distil; serve the ISS model (or adapt again on other frames)")
    n = len(frames)
    if n == 0:
        raise InputError("adapt() got no warm-up frame; pass at least one")
    shape = (n,) + tuple(frames[0].shape[:2])
    if iss_labels.shape != shape or targets.object_ids.shape != shape:
        raise InputError(f"warm-up shapes disagree: frames {shape}, ISS labels "
                         f"{iss_labels.shape}, object ids {targets.object_ids.shape}; pass the "
                         "stage A/B outputs of these very frames")
    if any(f.shape[:2] != frames[0].shape[:2] for f in frames):
        raise InputError("warm-up frames differ in size; adapt on frames of one resolution")
    classes = targets.classes[targets.classes >= 0]
    top = max(int(iss_labels.max()), int(classes.max()) if classes.size else -1)
    if int(iss_labels.min()) < 0 or top >= model.num_classes:
        raise InputError(f"labels must lie in [0, {model.num_classes}); got up to {top}")


class _Adaptation:
    """The state of one adaptation: live and momentum models, optimiser, prototypes."""

    def __init__(self, model: DittaModel, inputs: Tensor, frame_hw: tuple[int, int],
                 per_frame: list[_FrameTargets], config: AdaptationConfig,
                 device: torch.device, precision: str = "fp32") -> None:
        self.device = device
        self.precision = precision
        self.live = copy.deepcopy(model).to(device)
        self.momentum = copy.deepcopy(model).to(device)
        self.momentum.requires_grad_(False)        # follows the live model by EMA only
        params = _parameter_group(self.live, config.parameters)
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
            weight_decay=config.weight_decay)
        self.live.train()
        self.momentum.train()
        self.inputs = inputs                       # (W_n, 3, Hin, Win), on the CPU
        self.input_hw = (int(inputs.shape[2]), int(inputs.shape[3]))
        self.frame_hw = frame_hw
        self.per_frame = per_frame
        self.config = config
        self.store = PrototypeStore()

    def _target(self, t: int) -> _FrameTargets:
        cpu = self.per_frame[t]
        return _FrameTargets(cpu.label.to(self.device), cpu.object_ids,
                             cpu.object_index.to(self.device))

    def _upsample(self, logits: Tensor) -> Tensor:
        """(B, C, h, w) logits -> float32 (B, C, H, W). NCHW-contiguous first, as stage D
        does: the add-on's logits come out channels-last, and bilinear upsampling of a
        channels-last map is another CPU kernel with other rounding."""
        return preprocess.to_frame_size(logits.float().contiguous(), self.input_hw,
                                        self.frame_hw)

    def _autocast(self) -> ContextManager[object]:
        return autocast(self.device, self.precision)

    def step(self, t: int) -> tuple[float, float | None, float | None, float]:
        """One optimiser step on warm-up frame t; losses (before the step) as floats."""
        cfg, target = self.config, self._target(t)
        clip = self.inputs[max(t - 1, 0):t + 1].to(self.device)   # (2 or 1, 3, Hin, Win)
        self.optimizer.zero_grad(set_to_none=True)   # untouched params stay untouched
        with self._autocast():                     # forward passes only; losses in float32
            feats, logits = self.live.iss.forward_features(clip)   # (B,D,h,w), (B,C,h,w)
        plain = distill_loss(self._upsample(logits[-1:]), target.label,
                             cfg.ce_on_probabilities)
        addon: Tensor | None = None
        if t > 0:
            with self._autocast():
                addon_logits = self.live.addon(feats[1:], feats[:1], logits[:1])  # (1,C,h,w)
            addon = distill_loss(self._upsample(addon_logits), target.label,
                                 cfg.ce_on_probabilities)
        contrast = self._contrastive(clip, feats[-1:], target) if cfg.contrastive else None
        total = torch.zeros((), device=clip.device)
        # L_distill = CE(plain) + CE(add-on), each a mean over the frame's pixels, as
        # ALGORITHM.md writes it (not the mean of the two halves of the clip batch).
        if cfg.distill:
            total = total + plain + (addon if addon is not None else 0.0)
        if contrast is not None:
            total = total + contrast
        if total.requires_grad:      # False only with distill off on a frame without objects
            total.backward()
            self.optimizer.step()
        self._update_momentum()
        return (_value(plain) if cfg.distill else 0.0,
                _value(addon) if addon is not None and cfg.distill else None,
                _value(contrast) if contrast is not None else None, _value(total))

    def _contrastive(self, clip: Tensor, live_feats: Tensor,
                     target: _FrameTargets) -> Tensor | None:
        """Eq. 6-7 on the clip's current frame, None when it has no rendered object.

        The momentum model runs after the live model, and only here: on a step without the
        contrastive term nothing reads it, and skipping it changes only its own (unused) BN
        statistics and which random numbers its dropout would have drawn.
        """
        if not target.object_ids:
            return None
        with self._autocast():
            live_projected = self.live.projection(live_feats)
        live = normalized_features(live_projected, self.frame_hw)
        with torch.no_grad():
            with self._autocast():
                m_feats, m_logits = self.momentum.iss.forward_features(clip)  # BN stats
                m_projected = self.momentum.projection(m_feats[-1:])
            mom = normalized_features(m_projected, self.frame_hw)
            probs = torch.softmax(self._upsample(m_logits[-1:]), dim=1)[0]   # (C, H, W)
            weights = contrastive_weights(probs)
            prototypes = torch.stack([
                self.store.update(oid, object_prototype(mom, weights, target.object_index == k))
                for k, oid in enumerate(target.object_ids)])              # (K, D)
        return contrastive_loss(live, prototypes, target.object_index, self.config.temperature)

    @torch.no_grad()
    def _update_momentum(self) -> None:
        """EMA of every parameter; buffers (BN statistics) evolve from the model's own runs."""
        m = self.config.momentum
        for p_m, p_l in zip(self.momentum.parameters(), self.live.parameters()):
            p_m.mul_(m).add_(p_l, alpha=1.0 - m)


def _value(loss: Tensor) -> float:
    return float(loss.detach())


def _schedule(num_frames: int, iterations: int) -> Iterator[tuple[int, int]]:
    """(pass, frame) of every step: the warm-up in order, ``iterations`` times."""
    for i in range(iterations):
        for t in range(num_frames):
            yield i, t


def adapt(model: DittaModel, frames: Sequence[np.ndarray], iss_labels: np.ndarray,
          targets: Targets, model_config: ModelConfig, config: AdaptationConfig,
          device: torch.device | str, on_step: StepCallback | None = None,
          cancel: threading.Event | None = None) -> DittaModel:
    """Stage C on the warm-up: returns a NEW adapted model (eval mode, parameters frozen).

    frames: W_n warm-up frames, (H, W, 3) uint8 BGR. iss_labels: (W_n, H, W) stage-A labels.
    targets: stage-B targets of the same frames. Raises AdaptationError when stage B found no
    object (the caller serves the ISS model), CancelledError when ``cancel`` is set (checked
    before every step), InputError on inconsistent inputs. Deterministic on CPU for a seed.
    """
    _check_inputs(model, frames, iss_labels, targets, config)
    dev = torch.device(device)
    frame_hw = (int(frames[0].shape[0]), int(frames[0].shape[1]))
    prepared = np.stack([preprocess.prepare(f, model_config.fit_long, model_config.fit_short)
                         for f in frames])                           # (W_n, 3, Hin, Win)
    labels = distillation_labels(targets.object_ids, targets.class_of(), iss_labels)
    total_steps = config.iterations * len(frames)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    # fork_rng: seed the dropout/drop-path draws without disturbing the caller's generator.
    # Every tensor is made inside inference_mode(False) + enable_grad, so adaptation also
    # works when the caller runs under inference mode or no_grad.
    with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(config.seed)
        per_frame = [_frame_targets(targets.object_ids[t], labels[t])
                     for t in range(len(frames))]
        run = _Adaptation(model, torch.from_numpy(prepared), frame_hw, per_frame, config, dev,
                          model_config.precision)
        for step, (i, t) in enumerate(_schedule(len(frames), config.iterations)):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"adaptation cancelled after {step} of {total_steps} "
                                     "steps; the model is unchanged")
            distill, addon, contrast, total = run.step(t)
            if on_step is not None:
                on_step(StepLosses(iteration=i, frame=t, step=step, total_steps=total_steps,
                                   distill=distill, distill_addon=addon,
                                   contrastive=contrast, total=total))
    adapted = run.live.eval()
    adapted.requires_grad_(False)
    return adapted
