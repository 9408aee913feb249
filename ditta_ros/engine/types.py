"""Typed values that cross module boundaries inside the engine and out of it.

Nothing here computes anything; each type documents its arrays' shapes and dtypes.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np


class Phase(enum.Enum):
    """Where a streaming session is in its life (STYLE.md glossary: "phase")."""

    # While WARMUP/ADAPTING the ISS model serves, or the previous adaptation after a
    # requested re-adaptation: Result.source and SessionStatus.serving say which.
    WARMUP = "WARMUP"      # collecting warm-up frames
    ADAPTING = "ADAPTING"  # stages A + B + C run in the background
    ADAPTED = "ADAPTED"    # serving the adapted model with fusion (stage D)
    FAILED = "FAILED"      # adaptation raised or found nothing to learn; serving ISS labels


class Reason(enum.Enum):
    """Why the latest adaptation (its warm-up) started (engine/policy.py decides most)."""

    STARTUP = "startup"    # the session's first warm-up, or a reset to the base model
    SERVICE = "service"    # asked for (Session.request_adaptation, the node's service)
    CUT = "cut"            # the scene cut to an unrelated view
    DRIFT = "drift"        # the scene drifted away from the one adapted to
    PERIOD = "period"      # periodic policy: period_s elapsed


class Source(enum.Enum):
    """Which model produced a result."""

    ISS = "iss"            # the frozen base model, plain branch, no fusion
    ADAPTED = "adapted"    # the adapted model with the add-on and fusion


@dataclass(frozen=True)
class Result:
    """One processed frame.

    labels: (H, W) int64 class ids at the frame's own size (never the network's).
    reliability: (H, W) float32 in [0, 1] (1 - normalised entropy) when asked for, else None.
    """

    labels: np.ndarray
    reliability: np.ndarray | None
    phase: Phase
    source: Source
    frame_index: int          # 0-based count of frames pushed into the session
    inference_s: float        # model time of this frame, seconds


@dataclass(frozen=True)
class Prompt:
    """One positive point prompt of stage B (a new SAM2 object)."""

    frame: int        # warm-up frame index
    object_id: int    # from the per-stream counter, starting at 1
    row: int
    col: int
    iss_class: int    # the ISS class whose peak pixel this is


@dataclass(frozen=True)
class Targets:
    """Stage B output: the distillation targets of a warm-up clip.

    object_ids: (W_n, H, W) int32 rendered object-id map per warm-up frame, 0 = no object.
    ids: (K,) int32 object ids, ascending.
    classes: (K,) int64 voted class per object, -1 when the object gets no class.
    scores: (K, C) float32 Eq. 4 scores S(o, c).
    """

    object_ids: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    prompts: tuple[Prompt, ...] = ()

    @property
    def num_objects(self) -> int:
        return int(self.ids.shape[0])

    def class_of(self) -> dict[int, int]:
        """Object id -> voted class, objects without a class left out."""
        return {int(i): int(c) for i, c in zip(self.ids, self.classes) if c >= 0}


class Teacher(Protocol):
    """Stage B: turns a warm-up clip plus ISS labels into distillation targets.

    frames: W_n frames, (H, W, 3) uint8 BGR each, all the same size.
    labels: (W_n, H, W) int64 ISS labels (stage A).
    reliability: (W_n, H, W) float32 stage A reliabilities.
    cancel: set to ask for a cooperative stop (raise CancelledError).
    """

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray,
                cancel: threading.Event | None = None) -> Targets: ...


@dataclass(frozen=True)
class StepLosses:
    """Losses of one stage-C step, before the optimiser step (ALGORITHM.md, stage C)."""

    iteration: int            # 0-based pass over the warm-up
    frame: int                # warm-up frame index of this step
    step: int                 # 0-based global step count
    total_steps: int
    distill: float            # CE of the plain branch
    distill_addon: float | None   # CE of the add-on branch (t > 0)
    contrastive: float | None     # when the frame has at least one object
    total: float


StepCallback = Callable[[StepLosses], None]


@dataclass(frozen=True)
class SessionStatus:
    """A snapshot of a streaming session, for status messages and logs."""

    phase: Phase
    message: str                      # human-readable: what is happening and why
    warmup_collected: int = 0
    warmup_target: int = 0
    steps_done: int = 0
    steps_total: int = 0
    last_losses: StepLosses | None = None
    num_objects: int = 0              # SAM2 objects found by the last stage B
    stage_seconds: dict[str, float] = field(default_factory=dict)  # "A", "B", "C"
    frames_pushed: int = 0
    adaptations_done: int = 0
    serving: Source = Source.ISS          # the model serving the next pushed frame
    # streams (issue 13): why the latest warm-up started, adaptations whose stages began,
    # cuts the scene detector found, failed adaptations since the last success
    adaptation_reason: Reason = Reason.STARTUP
    adaptations_started: int = 0
    cuts: int = 0
    consecutive_failures: int = 0
