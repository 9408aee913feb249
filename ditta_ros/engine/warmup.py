"""The warm-up pipeline: stages A -> B -> C chained once, for the session and the W2F runner.

:func:`run_warmup` turns W_n warm-up frames into an adapted model (ALGORITHM.md, stages A, B
and C) and returns a typed :class:`WarmupOutcome` holding every stage's results and times,
so a caller can inspect each stage without re-running it by hand. The rule for a warm-up in
which stage B finds no object lives here and only here: nothing is adapted, the outcome says
why (:data:`NO_OBJECT`), and the caller serves the ISS model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ditta_ros.config import DittaConfig
from ditta_ros.engine.adapt import adapt
from ditta_ros.engine.reliability import iss_labels
from ditta_ros.engine.types import StepCallback, StepLosses, Targets, Teacher
from ditta_ros.errors import CancelledError, InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

NO_OBJECT = ("stage B found no object: no pixel of any warm-up frame passed the teacher's "
             "thresholds, nothing to distil")


class StageStart(NamedTuple):
    """Passed to ``on_stage`` as a stage begins: its name ("A", "B" or "C"), the seconds of
    the stages done so far, and stage B's object count once known (else None)."""

    stage: str
    stage_seconds: dict[str, float]
    num_objects: int | None


StageCallback = Callable[[StageStart], None]


@dataclass(frozen=True)
class WarmupOutcome:
    """What the warm-up produced, stage by stage.

    labels: (W_n, H, W) int64 stage-A ISS labels; reliability: (W_n, H, W) float32.
    targets: stage-B targets (per-frame rendered object ids, voted classes, scores).
    losses: every stage-C step's losses, in step order (empty when C did not run).
    model: the adapted copy (the input model is never modified); None when not adapted.
    reason: human-readable: what was adapted on, or why nothing was.
    """

    labels: np.ndarray
    reliability: np.ndarray
    targets: Targets
    losses: tuple[StepLosses, ...]
    model: DittaModel | None
    reason: str
    stage_seconds: dict[str, float] = field(default_factory=dict)   # "A", "B", "C"

    @property
    def adapted(self) -> bool:
        return self.model is not None

    @property
    def num_objects(self) -> int:
        return self.targets.num_objects


def run_warmup(model: DittaModel, teacher: Teacher, frames: Sequence[np.ndarray],
               config: DittaConfig, *, on_stage: StageCallback | None = None,
               on_step: StepCallback | None = None,
               cancel: threading.Event | None = None) -> WarmupOutcome:
    """Stages A, B and C on ``frames`` ((H, W, 3) uint8 BGR, one size) with ``model`` on
    ``config.model.device``.

    ``on_stage`` is called as each stage begins, ``on_step`` after each stage-C step's
    losses. ``cancel``, when set, stops between frames or steps with CancelledError. Other
    errors (InputError, a teacher's AdaptationError, torch's) propagate unchanged.
    """
    if len(frames) == 0:
        raise InputError("the warm-up needs at least one frame, got none")
    device = torch.device(config.model.device)
    seconds: dict[str, float] = {}

    def begin(stage: str, num_objects: int | None = None) -> float:
        if on_stage is not None:
            on_stage(StageStart(stage, dict(seconds), num_objects))
        return time.perf_counter()

    start = begin("A")
    labels, rel = iss_labels(model, frames, config.model, device, cancel=cancel)
    seconds["A"] = time.perf_counter() - start
    start = begin("B")
    targets = teacher.targets(frames, labels, rel, cancel=cancel)
    seconds["B"] = time.perf_counter() - start
    if cancel is not None and cancel.is_set():
        raise CancelledError("adaptation cancelled after stage B")
    if targets.num_objects == 0:
        return WarmupOutcome(labels, rel, targets, (), None, NO_OBJECT, seconds)
    losses: list[StepLosses] = []

    def step(value: StepLosses) -> None:
        losses.append(value)
        if on_step is not None:
            on_step(value)

    start = begin("C", targets.num_objects)
    adapted = adapt(model, frames, labels, targets, config.model, config.adaptation, device,
                    on_step=step, cancel=cancel)
    seconds["C"] = time.perf_counter() - start
    reason = f"adapted on {len(frames)} warm-up frames with {targets.num_objects} objects"
    return WarmupOutcome(labels, rel, targets, tuple(losses), adapted, reason, seconds)
