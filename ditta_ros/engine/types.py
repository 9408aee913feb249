"""Typed values that cross module boundaries inside the engine and out of it.

Nothing here computes anything; each type documents its arrays' shapes and dtypes.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence, TypeVar

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


class ObjectMasks(NamedTuple):
    """The masks of several tracked objects on one frame (stage B).

    ids: object ids, in the tracker's object order (SAM2's order; it matters for merging
        and for ties in rendering).
    masks: (K, H, W) bool, original frame size; ``masks[i]`` belongs to ``ids[i]``.
    """

    ids: tuple[int, ...]
    masks: np.ndarray

    @staticmethod
    def empty(height: int, width: int) -> ObjectMasks:
        return ObjectMasks((), np.zeros((0, height, width), dtype=bool))

    def select(self, keep: Sequence[int]) -> ObjectMasks:
        """The objects at positions ``keep`` (in that order)."""
        idx = np.asarray(list(keep), dtype=np.int64)
        return ObjectMasks(tuple(self.ids[i] for i in keep), self.masks[idx])

    def concat(self, other: ObjectMasks) -> ObjectMasks:
        return ObjectMasks(self.ids + other.ids, np.concatenate([self.masks, other.masks]))


Clip = TypeVar("Clip")


class MaskPropagator(Protocol[Clip]):
    """The part of a video object tracker (SAM2) that stage B drives.

    :meth:`start` loads a clip and returns its handle (as SAM2's predictor returns an
    inference state); every other call names the clip it works on, so a stale caller holding
    an old handle can never touch a newer clip, and a released handle fails loudly. Object
    ids are chosen by the caller. The tracker's *object order* is the order in which objects
    were first added since :meth:`start` or :meth:`reset`; every method that returns masks
    returns all tracked objects of the clip in that order, as :class:`ObjectMasks` with
    (K, H, W) bool masks at the clip's original frame size (for SAM2: logit > 0).

    Call sequence used by :class:`~ditta_ros.engine.teacher.PropagationTeacher`::

        clip = start(frames)
        (add_point | add_mask)(clip, t, ...)*, then propagate(clip, t, reverse) ...
        reset(clip); ...              # forget objects, keep the clip (and cached features)
        release(clip)

    An oracle for tests: remember, per object id, which ground-truth region the prompt
    pixel (or mask) selected, and return those regions' masks on the requested frames.
    """

    def start(self, frames: Sequence[np.ndarray]) -> Clip:
        """Load a new clip (frames (H, W, 3) uint8 BGR); returns its handle."""
        ...

    def reset(self, clip: Clip) -> None:
        """Forget every object, prompt and tracking result of ``clip``; keep its frames."""
        ...

    def add_point(self, clip: Clip, frame: int, object_id: int, row: int,
                  col: int) -> ObjectMasks:
        """Add a new object from one positive point at pixel (row, col) of ``frame``.

        Returns the masks of all tracked objects on ``frame``.
        """
        ...

    def add_mask(self, clip: Clip, frame: int, object_id: int,
                 mask: np.ndarray) -> ObjectMasks:
        """Add a new object from a (H, W) bool mask on ``frame`` (may be empty).

        Returns the masks of all tracked objects on ``frame``.
        """
        ...

    def propagate(self, clip: Clip, frame: int, reverse: bool) -> ObjectMasks:
        """Track every object from ``frame`` one frame on (``frame - 1`` when ``reverse``).

        Returns the masks on that next frame; the caller never asks past either end.
        """
        ...

    def release(self, clip: Clip) -> None:
        """Drop the clip and everything cached for it; later use of the handle raises."""
        ...


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
    stage: str = ""                   # "A", "B" or "C" while ADAPTING runs that stage
    superseded_error: str = ""        # latest failure of a run that a newer one replaced
    # streams (issue 13): why the latest warm-up started, adaptations whose stages began,
    # cuts the scene detector found, failed adaptations since the last success
    adaptation_reason: Reason = Reason.STARTUP
    adaptations_started: int = 0
    cuts: int = 0
    consecutive_failures: int = 0
