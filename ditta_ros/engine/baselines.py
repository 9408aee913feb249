"""Baselines DiTTA is compared against (ALGORITHM.md, "Reported results").

``sam2-refine``, the paper's "SAM2 zero-shot refinement": no adaptation; SAM2 runs on every
frame at inference time. The frozen ISS model labels every frame (stage A); the classes of the
*first* frame prompt SAM2 with the same rule as stage B (:func:`teacher.select_prompts`: one
positive point at each reliable class's peak pixel); SAM2 propagates those objects through
the whole video; each object takes a class by the soft vote of Eq. 4 (:func:`teacher.vote`)
over all frames; each frame's objects are rendered as in stage B
(:func:`teacher.render_objects`) and the ISS label fills every pixel no classed object
covers (:func:`adapt.distillation_labels`, Eq. 5). The machinery is stage B's, so the two
methods differ only in where SAM2's knowledge goes: into the labels directly (here, every
frame) or into the ISS decoder (DiTTA, warm-up only).

Memory: the ISS labels (int32) and reliabilities (float32) of the whole video are kept, and
the object masks bit-packed (1 bit per pixel and object).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ditta_ros.config import DittaConfig
from ditta_ros.engine.adapt import distillation_labels
from ditta_ros.engine.reliability import iss_labels
from ditta_ros.engine.teacher import (
    MaskPropagator,
    ObjectMasks,
    render_objects,
    select_prompts,
    vote,
)
from ditta_ros.errors import InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RefinedFrame:
    """One evaluated frame of the baseline: labels (H, W) int64 at the frame's own size."""

    index: int
    labels: np.ndarray
    inference_s: float        # this frame's share of the whole-video time, see RefineSummary


@dataclass
class RefineSummary:
    """What the baseline did on one video.

    seconds: wall time of everything it did (stage A on all frames, SAM2 on all frames,
    voting, rendering). SAM2 must see the whole video before any frame's label is final, so
    the time is shared evenly over the frames processed: per-frame cost = seconds / T.
    """

    num_frames: int
    warmup: int
    num_objects: int = 0
    reason: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)   # "A", "SAM2", "vote"

    @property
    def seconds(self) -> float:
        return float(sum(self.stage_seconds.values()))


class _PackedMasks(Sequence[ObjectMasks]):
    """Per-frame object masks stored 1 bit per pixel; unpacked when read."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self._ids: list[tuple[int, ...]] = []
        self._bits: list[np.ndarray] = []

    def append(self, objects: ObjectMasks) -> None:
        self._ids.append(tuple(objects.ids))
        self._bits.append(np.packbits(objects.masks.reshape(len(objects.ids), -1), axis=1))

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, t: int) -> ObjectMasks:  # type: ignore[override]
        ids = self._ids[t]
        flat = np.unpackbits(self._bits[t], axis=1, count=self.height * self.width)
        return ObjectMasks(ids, flat.reshape(len(ids), self.height, self.width).astype(bool))


class Sam2Refine(Iterator[RefinedFrame]):
    """The baseline on one video; all SAM2 work is done on construction, then frames
    W_n..T-1 are rendered one at a time while iterating."""

    def __init__(self, model: DittaModel, propagator: MaskPropagator[Any],
                 frames: Sequence[np.ndarray], config: DittaConfig, warmup: int,
                 device: torch.device | str | None = None,
                 progress: ProgressCallback | None = None) -> None:
        num_frames = len(frames)
        if not 1 <= warmup <= num_frames:
            raise InputError(f"warm-up length {warmup} must lie in [1, {num_frames}] for a "
                             f"video of {num_frames} frames")
        dev = torch.device(device if device is not None else config.model.device)
        self.summary = RefineSummary(num_frames, warmup)
        self._next = warmup
        self._progress = progress
        start = time.perf_counter()
        self._labels, self._rel = self._stage_a(model, frames, config, dev)
        self.summary.stage_seconds["A"] = time.perf_counter() - start
        _, height, width = self._labels.shape
        self._masks = _PackedMasks(height, width)
        self._classes: dict[int, int] = {}
        self._best: dict[int, float] = {}
        start = time.perf_counter()
        ids = self._propagate(propagator, frames, config, model.num_classes)
        self.summary.stage_seconds["SAM2"] = time.perf_counter() - start
        if ids:
            start = time.perf_counter()
            counts = np.bincount(self._labels.reshape(-1),
                                 minlength=model.num_classes).astype(np.int64)   # N_c
            scores, classes = vote(self._masks, self._labels, self._rel, counts, ids,
                                   config.teacher.size_power, config.teacher.frequency_power)
            self._classes = {oid: int(c) for oid, c in zip(ids, classes) if c >= 0}
            self._best = {oid: float(s) for oid, s in zip(ids, scores.max(axis=1))}
            self.summary.stage_seconds["vote"] = time.perf_counter() - start
            self.summary.reason = (f"{len(ids)} SAM2 objects from frame 0, "
                                   f"{len(self._classes)} with a class")
        self._share = self.summary.seconds / num_frames

    def _stage_a(self, model: DittaModel, frames: Sequence[np.ndarray], config: DittaConfig,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """ISS labels (T, H, W) int32 and reliabilities (T, H, W) float32 of every frame."""
        y, r = iss_labels(model, [frames[0]], config.model, device)        # (1, H, W) each
        labels = np.empty((len(frames), *y.shape[1:]), np.int32)
        rel = np.empty((len(frames), *y.shape[1:]), np.float32)
        for t in range(len(frames)):
            if t > 0:
                y, r = iss_labels(model, [frames[t]], config.model, device)
            if y.shape[1:] != labels.shape[1:]:
                raise InputError(f"frame {t} is {y.shape[1]} x {y.shape[2]} but frame 0 is "
                                 f"{labels.shape[1]} x {labels.shape[2]}; sam2-refine needs "
                                 "one frame size per video")
            labels[t], rel[t] = y[0], r[0]
            if self._progress is not None:
                self._progress("A", t + 1, len(frames))
        return labels, rel

    def _propagate(self, propagator: MaskPropagator[Any], frames: Sequence[np.ndarray],
                   config: DittaConfig, num_classes: int) -> list[int]:
        """Prompt frame 0's reliable classes and track them through the video; the ids."""
        cfg = config.teacher
        num_frames, height, width = self._labels.shape
        chosen = select_prompts(self._labels[0], self._rel[0],
                                np.zeros((height, width), dtype=bool), 0, num_classes,
                                cfg.reliability_threshold, cfg.max_objects)
        if not chosen.points:
            self.summary.reason = ("no class of frame 0 reaches the reliability threshold "
                                   f"{cfg.reliability_threshold}: ISS labels unchanged")
            return []
        clip = propagator.start([frames[t] for t in range(num_frames)])
        try:
            current = ObjectMasks.empty(height, width)
            for k, point in enumerate(chosen.points):
                current = propagator.add_point(clip, 0, k + 1, point.row, point.col)
            self._masks.append(current)
            for t in range(num_frames - 1):
                self._masks.append(propagator.propagate(clip, t, reverse=False))
                if self._progress is not None:
                    self._progress("SAM2", t + 2, num_frames)
        finally:
            propagator.release(clip)
        self.summary.num_objects = len(chosen.points)
        return list(range(1, len(chosen.points) + 1))

    def __iter__(self) -> Sam2Refine:
        return self

    def __next__(self) -> RefinedFrame:
        t = self._next
        if t >= self.summary.num_frames:
            raise StopIteration
        self._next += 1
        start = time.perf_counter()
        if self._classes:
            _, height, width = self._labels.shape
            ids = render_objects(self._masks[t], self._best, height, width)   # (H, W) int32
            labels = distillation_labels(ids, self._classes, self._labels[t])
        else:
            labels = self._labels[t].astype(np.int64)
        render_s = time.perf_counter() - start
        return RefinedFrame(t, labels, self._share + render_s)


def sam2_refine(model: DittaModel, propagator: MaskPropagator[Any], frames: Sequence[np.ndarray],
                config: DittaConfig, warmup: int, device: torch.device | str | None = None,
                progress: ProgressCallback | None = None) -> Sam2Refine:
    """The ``sam2-refine`` baseline on one video: an iterator over frames W_n..T-1."""
    return Sam2Refine(model, propagator, frames, config, warmup, device, progress)
