"""The session's one adaptation thread, its queue of length one, and the adaptation's progress.

One adaptation at a time, by construction: a single worker thread runs adaptations (stages
A + B + C, :func:`~ditta_ros.engine.warmup.run_warmup`), fed by a queue of length one. A
request or reset drops the current adaptation: its cancel Event is set and its generation
becomes stale. The next one starts only once the cancelled one has returned (a newer pending
warm-up replaces an older one), so two adaptations never share the teacher, the device or
torch's random state. A stale run never touches the session: its progress, its model and its
failure are ignored, except that a superseded run failing for a reason other than its
cancellation is reported in ``status().superseded_error`` (and logged), not silently dropped.

Each job travels as an explicit, typed handle (:class:`AdaptationJob`: generation, warm-up
frames, cancel flag); the thread checks the job's generation against the current one under
the session's state lock before anything it does reaches the session.

Locking: ``cond`` is the session's Condition on its state lock. Every ``*_locked`` method
runs with that lock held, and so does every access to :attr:`AdaptationWorker.progress`.
The thread takes the lock itself for its own bookkeeping and calls the session's
:class:`WorkerHooks` as each one's documentation says.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.engine.types import StepLosses, Teacher
from ditta_ros.engine.warmup import StageStart, WarmupOutcome, run_warmup
from ditta_ros.errors import AdaptationError, CancelledError, DittaError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

# The adaptation's log lines are the session's: users filter /rosout on "[engine.session]".
logger = logging.getLogger("ditta_ros.engine.session")

THREAD_NAME = "ditta-adaptation"

STAGE_MESSAGES = {"A": "stage A: ISS labels on the warm-up",
                  "B": "stage B: running the teacher",
                  "C": "stage C: adapting with {} objects"}


class AdaptationJob(NamedTuple):
    """One adaptation for the worker: its generation, warm-up frames and cancel flag."""

    generation: int
    frames: list[np.ndarray]
    cancel: threading.Event


class WorkerHooks(NamedTuple):
    """What the worker's thread calls on the session.

    progress_locked(message): state lock held; the status changed (``message``, when not
    None, is the new status message): queue a status snapshot.
    adapted(generation, model): no lock held; ``model`` is generation's adapted model, to
    serve if the generation is still current (check with ``current_locked``). Raising here
    fails the adaptation as if stage C had raised.
    failed_locked(reason): state lock held; the current adaptation failed for ``reason``.
    flush(): no lock held; deliver the queued status snapshots.
    """

    progress_locked: Callable[[str | None], None]
    adapted: Callable[[int, DittaModel], None]
    failed_locked: Callable[[str], None]
    flush: Callable[[], None]


class AdaptationProgress:
    """How far the current adaptation got, as ``SessionStatus`` reports it. Plain data under
    the session's state lock; the methods that return a string return the status message."""

    def __init__(self) -> None:
        self.stage = ""                          # "A", "B" or "C" while adapting
        self.steps_done = 0
        self.steps_total = 0
        self.last_losses: StepLosses | None = None
        self.num_objects = 0                     # objects stage B found, latest adaptation
        self.stage_seconds: dict[str, float] = {}
        self.superseded_error = ""

    def start(self, total_steps: int) -> None:
        """A new adaptation is queued: counters from zero, ``total_steps`` planned."""
        self.steps_done, self.last_losses, self.num_objects = 0, None, 0
        self.steps_total = total_steps
        self.stage_seconds, self.stage = {}, ""

    def clear(self) -> None:
        """The adaptation was dropped: no stage, no steps (objects and times stay)."""
        self.stage = ""
        self.steps_done, self.steps_total, self.last_losses = 0, 0, None

    def stage_started(self, event: StageStart) -> str:
        self.stage = event.stage
        self.stage_seconds = dict(event.stage_seconds)
        if event.num_objects is not None:
            self.num_objects = event.num_objects
        return STAGE_MESSAGES[event.stage].format(event.num_objects)

    def step(self, losses: StepLosses) -> str:
        self.steps_done, self.steps_total = losses.step + 1, losses.total_steps
        self.last_losses = losses
        return f"adapting: step {losses.step + 1}/{losses.total_steps}, loss {losses.total:.4f}"

    def finished(self, outcome: WarmupOutcome) -> None:
        """Stages done (adapted or not): their times and stage B's object count."""
        self.stage_seconds = dict(outcome.stage_seconds)
        self.num_objects = outcome.num_objects

    def ended(self) -> None:
        """The adaptation's result serves (or its failure is the phase): no stage runs."""
        self.stage = ""

    def status_fields(self) -> dict[str, Any]:
        """The SessionStatus fields this class owns."""
        return {"steps_done": self.steps_done, "steps_total": self.steps_total,
                "last_losses": self.last_losses, "num_objects": self.num_objects,
                "stage_seconds": dict(self.stage_seconds), "stage": self.stage,
                "superseded_error": self.superseded_error}


class AdaptationWorker:
    """Runs the session's adaptations of ``model`` with ``teacher``, one at a time, on one
    thread started with the first job. ``cond``: the session's Condition on its state lock."""

    def __init__(self, model: DittaModel, teacher: Teacher, config: DittaConfig,
                 cond: threading.Condition, hooks: WorkerHooks) -> None:
        self._model, self._teacher, self._config = model, teacher, config
        self._cond = cond
        self._hooks = hooks
        self.progress = AdaptationProgress()
        self._generation = 0                     # bumped whenever an adaptation is dropped
        self._cancel: threading.Event | None = None   # the current generation's run
        self._job: AdaptationJob | None = None   # the queue of length one
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ state lock held

    def submit_locked(self, frames: list[np.ndarray]) -> None:
        """Queue an adaptation on ``frames`` (the worker owns them from now on); it replaces
        a queued one that has not started. Ignored after :meth:`close_locked`."""
        if self._closed:
            return
        self._generation += 1
        cancel = threading.Event()
        self._cancel = cancel
        self.progress.start(self._config.adaptation.iterations * len(frames))
        self._job = AdaptationJob(self._generation, frames, cancel)
        self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def drop_locked(self) -> None:
        """Cancel the running adaptation and forget a queued one; from now on nothing of
        either reaches the session (a stale failure only as ``superseded_error``)."""
        if self._cancel is not None:
            self._cancel.set()
        self._cancel, self._job = None, None     # a job not started yet never runs
        self._generation += 1
        self.progress.clear()

    def current_locked(self, generation: int) -> bool:
        """True while ``generation``'s adaptation has not been dropped."""
        return generation == self._generation

    def close_locked(self) -> threading.Thread | None:
        """Let the thread end once its job has returned (call :meth:`drop_locked` first to
        cancel it); returns the thread to join (outside the lock), None if none started."""
        self._closed = True
        self._cond.notify_all()
        return self._thread

    # ------------------------------------------------------------------ the thread

    def _work(self) -> None:
        """The adaptation thread: one job at a time, until closed."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    self._job = None
                    return
                job, self._job = self._job, None
            if job is not None:
                self._run(job)
                del job                          # the warm-up frames go with it
            self._hooks.flush()

    def _run(self, job: AdaptationJob) -> None:
        """Stages A + B + C of one job, then the hand-over to the session (or FAILED)."""
        generation = job.generation
        try:
            outcome = run_warmup(
                self._model, self._teacher, job.frames, self._config,
                on_stage=lambda event: self._on_stage(generation, event),
                on_step=lambda losses: self._on_step(generation, losses), cancel=job.cancel)
            job.frames.clear()
            with self._cond:
                current = self.current_locked(generation)
                if current:
                    self.progress.finished(outcome)
            if not current:
                return                           # superseded by reset/request/load/close
            if outcome.model is None:
                raise AdaptationError(outcome.reason)
            self._hooks.adapted(generation, outcome.model)
        except CancelledError as exc:
            logger.info("adaptation cancelled: %s", exc)
        except Exception as exc:  # noqa: BLE001 - any failure (incl. OOM) -> FAILED
            self._failed(generation, exc)

    def _failed(self, generation: int, exc: Exception) -> None:
        """FAILED with the reason; an expected failure (a DittaError) logs its traceback at
        DEBUG only, anything else (a bug, out of memory) at ERROR."""
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, DittaError):
            logger.debug("adaptation failed: %s", reason, exc_info=exc)
        else:
            logger.error("adaptation failed: %s", reason, exc_info=exc)
        with self._cond:
            if self.current_locked(generation):
                self.progress.ended()
                self._hooks.failed_locked(reason)
            else:
                self.progress.superseded_error = f"a superseded adaptation failed: {reason}"
                logger.warning(self.progress.superseded_error)
                self._hooks.progress_locked(None)

    def _on_stage(self, generation: int, event: StageStart) -> None:
        with self._cond:
            if self.current_locked(generation):
                self._hooks.progress_locked(self.progress.stage_started(event))
        self._hooks.flush()

    def _on_step(self, generation: int, losses: StepLosses) -> None:
        with self._cond:
            if not self.current_locked(generation):
                return
            self._hooks.progress_locked(self.progress.step(losses))
        self._hooks.flush()
