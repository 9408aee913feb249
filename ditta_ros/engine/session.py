"""The streaming session: warm-up, background adaptation and the serving-model swap.

One :class:`Session` per stream. ``push(frame)`` is synchronous: every pushed frame returns
exactly one :class:`~ditta_ros.engine.types.Result`, served by whichever model serves at
that moment. Phases (``types.Phase``)::

    WARMUP --(warmup_frames collected)--> ADAPTING --(stages A+B+C done)--> ADAPTED
                                              \\--(any exception, no object)--> FAILED

- WARMUP: copies of the first ``AdaptationConfig.warmup_frames`` frames are kept (a bounded
  buffer, handed to the adaptation and released when it ends); the ISS model serves.
- ADAPTING: stages A, B and C run in ONE background thread with a cancel Event; the ISS
  model keeps serving. On success the adapted model's add-on cache is primed with the newest
  frame pushed so far (the last warm-up frame when none arrived meanwhile), then the serving
  predictor is swapped under the state lock.
- ADAPTED: the adapted model serves with fusion (stage D).
- FAILED: adaptation raised (teacher error, torch out of memory, ...) or stage B found no
  object; ``status().message`` says why and the ISS model serves. Nothing adapts again
  until :meth:`Session.request_adaptation`.

Decisions (documented here because the contract leaves them open):

- :meth:`Session.reset` drops any adaptation and serves the base model at once, and the
  session starts over as if new: phase WARMUP, and a new warm-up begins with the next frame.
- :meth:`Session.request_adaptation` starts a new warm-up now (cancelling a running
  adaptation). An existing adaptation keeps serving (``Result.source`` = ADAPTED) until the
  new one succeeds and replaces it; if the new one fails, the session is FAILED and serves
  the ISS model.
- Frame size changes: during WARMUP the warm-up restarts with the new frame (stages A-C need
  frames of one size); during ADAPTING the adaptation goes on (the adapted model is
  resolution-independent); when ADAPTED the adapted model stays and only its cache is
  dropped, so the first frame at the new size is served by the plain branch, as frame 0 of
  a stream.
- Streams (issue 13; engine/scene.py, engine/policy.py): unless ``StreamConfig.policy`` is
  ``once``, a scene detector looks at every frame. A cut resets the fusion state before the
  frame is served (fusion never blends across a cut); the policy may start a new warm-up with
  a frame (cut, drift, period), cancelling a running adaptation as
  :meth:`Session.request_adaptation` does, while the current model keeps serving.
- ``on_status`` is called on every phase change and on progress (each warm-up frame, each
  stage, each adaptation step), in order, from whichever thread caused it (mostly the
  background thread) and never while the session's state lock is held. It must return
  quickly; it may call :meth:`Session.status`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection

import numpy as np
import torch

from ditta_ros.config import DittaConfig
from ditta_ros.engine import checkpoints
from ditta_ros.engine.adapt import adapt
from ditta_ros.engine.errors import AdaptationError, CancelledError, DittaError
from ditta_ros.engine.fusion import StreamPredictor
from ditta_ros.engine.policy import Activity, AdaptationPolicy
from ditta_ros.engine.preprocess import check_frame
from ditta_ros.engine.reliability import iss_labels
from ditta_ros.engine.scene import SceneDetector
from ditta_ros.engine.types import (
    Phase,
    Reason,
    Result,
    SessionStatus,
    Source,
    StepLosses,
    Teacher,
)

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

logger = logging.getLogger(__name__)

StatusCallback = Callable[[SessionStatus], None]


class Session:
    """A stream's DiTTA session: serve labels now, adapt in the background, swap safely.

    ``model`` is the base (ISS) model, already on ``config.model.device``; it is put in eval
    mode and never modified. ``teacher`` produces the stage-B targets. Thread-safe: any
    thread may push frames (pushes are served one at a time, in order) or call the other
    methods.
    """

    def __init__(self, model: DittaModel, teacher: Teacher, config: DittaConfig,
                 on_status: StatusCallback | None = None) -> None:
        self._model = model.eval()
        self._teacher = teacher
        self._config = config
        self._device = torch.device(config.model.device)
        self._on_status = on_status
        self._iss = StreamPredictor(model, config.model, config.fusion, self._device,
                                    use_addon=False)
        self._lock = threading.Lock()            # guards every field below
        self._cond = threading.Condition(self._lock)
        self._push_lock = threading.Lock()       # one push at a time (predictor caches)
        self._emit_lock = threading.RLock()      # on_status calls, in order
        self._pending: deque[SessionStatus] = deque()
        self._phase = Phase.WARMUP
        self._message = "collecting warm-up frames"
        self._serving = self._iss
        self._source = Source.ISS
        self._adapted_model: DittaModel | None = None
        self._warmup: list[np.ndarray] = []
        self._warmup_hw: tuple[int, int] | None = None
        self._last_frame: np.ndarray | None = None   # newest frame, for priming the cache
        self._last_index = -1
        self._needs_prime = False
        self._generation = 0                     # bumped whenever an adaptation is dropped
        self._cancel: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._frames_pushed = 0
        self._adaptations_done = 0
        self._steps_done = 0
        self._steps_total = 0
        self._last_losses: StepLosses | None = None
        self._num_objects = 0
        self._stage_seconds: dict[str, float] = {}
        # streams (issue 13): the detector is touched under the push lock only, the policy
        # and the fields below under the state lock
        self._policy = AdaptationPolicy(config.stream)
        self._scene = (SceneDetector(config.stream, model.num_classes)
                       if self._policy.detects else None)
        self._policy.external_start()
        self._reason = Reason.STARTUP
        self._adaptations_started = 0
        self._cuts = 0
        self._consecutive_failures = 0
        self._rebase_look = self._rebase_classes = False

    # ------------------------------------------------------------------ serving

    def push(self, frame: np.ndarray, with_reliability: bool = False,
             stamp: float | None = None) -> Result:
        """Serve one (H, W, 3) uint8 BGR frame; labels (H, W) int64 at the frame's size.

        ``stamp``: the frame's time in seconds (any origin, one clock per stream), which the
        adaptation policy's cooldown and period are measured on; None: time.monotonic().
        Raises InputError for a malformed frame (nothing is counted then) and DittaError
        after :meth:`close`.
        """
        check_frame(frame)
        with self._push_lock:
            cut = self._scene.before(frame) if self._scene is not None else False
            with self._lock:
                if self._closed:
                    raise DittaError("push() on a closed session; create a new Session")
                index = self._frames_pushed
                self._frames_pushed += 1
                restart = self._policy_before_locked(cut, stamp)   # may begin a warm-up
                rebase = (self._rebase_look, self._rebase_classes)
                self._rebase_look = self._rebase_classes = False
                phase = self._phase
                if phase is Phase.WARMUP:
                    self._collect_locked(frame, index)
                elif phase is Phase.ADAPTING:
                    self._last_frame, self._last_index = frame.copy(), index
                prime = self._take_prime_locked()
                predictor, source = self._serving, self._source
            start = time.perf_counter()
            if prime is not None and not restart:
                predictor.prime(prime)
            if restart:
                predictor.reset()                # fusion never blends across a cut
            labels, rel = predictor.predict(frame, with_reliability)
            elapsed = time.perf_counter() - start
            self._scene_after(labels, rebase)
            if source is Source.ADAPTED and self._iss.buffer_bytes:
                # The ISS predictor's frame-size buffers (~0.4 GB at 480 x 854, 124 classes)
                # idle while the adapted model serves; freed here, under the push lock that
                # every use of a predictor holds. They come back if the ISS serves again.
                self._iss.release_buffers()
        self._flush()
        return Result(labels, rel, phase, source, index, elapsed)

    def _take_prime_locked(self) -> np.ndarray | None:
        """The frame to prime a freshly swapped-in predictor with, when frames arrived while
        the background thread primed it with an older one."""
        if self._phase is not Phase.ADAPTED:
            return None
        frame = self._last_frame if self._needs_prime else None
        self._needs_prime = False
        self._last_frame = None                  # the predictor's own cache takes over
        return frame

    def _policy_before_locked(self, cut: bool, stamp: float | None) -> bool:
        """Streams: ask the policy before serving a frame; True to restart the fusion."""
        now = time.monotonic() if stamp is None else stamp
        decision = self._policy.before_frame(now, cut, Activity.of(self._phase))
        self._cuts += int(cut)
        if decision.adapt is not None:
            self._begin_warmup_locked(decision.adapt)
        return decision.restart_fusion

    def _scene_after(self, labels: np.ndarray, rebase: tuple[bool, bool]) -> None:
        """Streams: show the detector the served labels, the policy the signal (push lock)."""
        if self._scene is None:
            return
        if any(rebase):
            self._scene.rebase(*rebase)
        signal = self._scene.after(labels)
        with self._lock:
            self._policy.after_frame(signal, Activity.of(self._phase))

    def _begin_warmup_locked(self, reason: Reason) -> None:
        """A new warm-up starts with the next collected frame; a running adaptation is
        cancelled, the serving model keeps serving."""
        self._drop_adaptation_locked()
        self._reason = reason
        self._rebase_look = True                 # the warm-up is the appearance reference
        self._set_phase_locked(Phase.WARMUP, f"adaptation ({reason.value}): collecting "
                               f"warm-up frames (0/{self._config.adaptation.warmup_frames})")

    def _collect_locked(self, frame: np.ndarray, index: int) -> None:
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        target = self._config.adaptation.warmup_frames
        restarted = bool(self._warmup) and hw != self._warmup_hw
        if restarted:
            self._warmup = []                    # stages A-C need frames of one size
        self._warmup.append(frame.copy())
        self._warmup_hw = hw
        self._last_frame, self._last_index = self._warmup[-1], index
        if len(self._warmup) >= target:
            self._start_adaptation_locked()
            return
        why = "frame size changed, warm-up restarted: " if restarted else ""
        self._message = f"{why}collecting warm-up frames ({len(self._warmup)}/{target})"
        self._notify_locked()

    # ------------------------------------------------------------------ adaptation

    def _start_adaptation_locked(self) -> None:
        frames, self._warmup = self._warmup, []
        self._generation += 1
        cancel = threading.Event()
        self._cancel = cancel
        self._steps_done, self._last_losses, self._num_objects = 0, None, 0
        self._steps_total = self._config.adaptation.iterations * len(frames)
        self._stage_seconds = {}
        self._adaptations_started += 1
        self._set_phase_locked(Phase.ADAPTING, f"adapting on {len(frames)} warm-up frames")
        self._threads = [t for t in self._threads if t.is_alive()]
        # The buffer travels in a box the worker empties, so that it is released when the
        # adaptation ends rather than when the thread object goes away.
        thread = threading.Thread(target=self._adapt_worker,
                                  args=(self._generation, [frames], cancel),
                                  name="ditta-adaptation", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _adapt_worker(self, generation: int, box: list[list[np.ndarray]],
                      cancel: threading.Event) -> None:
        """Stages A + B + C, then the swap; runs in the background thread."""
        try:
            adapted = self._adapt(generation, box.pop(), cancel)
            predictor = StreamPredictor(adapted, self._config.model, self._config.fusion,
                                        self._device, use_addon=True)
            with self._lock:
                prime, prime_index = self._last_frame, self._last_index
            if prime is not None:
                predictor.prime(prime)
            with self._lock:
                if generation != self._generation:
                    return                       # superseded by reset/request/load/close
                self._serving, self._source = predictor, Source.ADAPTED
                self._adapted_model = adapted
                self._needs_prime = self._last_index != prime_index
                self._adaptations_done += 1
                self._consecutive_failures = 0
                self._rebase_classes = True      # a new model labels: new class reference
                self._set_phase_locked(
                    Phase.ADAPTED, f"adapted with {self._num_objects} objects; serving the "
                    "adapted model with fusion")
        except CancelledError as exc:
            logger.info("adaptation cancelled: %s", exc)
        except Exception as exc:  # noqa: BLE001 - any failure (incl. OOM) -> FAILED
            logger.exception("adaptation failed")
            with self._lock:
                if generation == self._generation:
                    self._serving, self._source = self._iss, Source.ISS
                    self._adapted_model = None
                    self._consecutive_failures += 1
                    self._rebase_classes = True
                    self._set_phase_locked(
                        Phase.FAILED, f"adaptation failed: {type(exc).__name__}: {exc}; "
                        "serving the ISS model (request a new adaptation to try again)")
        finally:
            self._flush()

    def _adapt(self, generation: int, frames: list[np.ndarray],
               cancel: threading.Event) -> DittaModel:
        cfg = self._config
        start = time.perf_counter()
        labels, rel = iss_labels(self._model, frames, cfg.model, self._device, cancel=cancel)
        self._stage_done(generation, "A", start, "stage A done (ISS labels); running the "
                         "teacher")
        start = time.perf_counter()
        targets = self._teacher.targets(frames, labels, rel, cancel=cancel)
        if cancel.is_set():
            raise CancelledError("adaptation cancelled after stage B")
        with self._lock:
            self._num_objects = targets.num_objects
        if targets.num_objects == 0:
            raise AdaptationError("stage B found no object: no pixel of any warm-up frame "
                                  "passed the teacher's thresholds, nothing to distil")
        self._stage_done(generation, "B", start,
                         f"stage B found {targets.num_objects} objects; adapting")
        start = time.perf_counter()
        adapted = adapt(self._model, frames, labels, targets, cfg.model, cfg.adaptation,
                        self._device, on_step=lambda losses: self._on_step(generation, losses),
                        cancel=cancel)
        self._stage_done(generation, "C", start, "stage C done; priming the adapted model")
        return adapted

    def _stage_done(self, generation: int, stage: str, start: float, message: str) -> None:
        with self._lock:
            if generation == self._generation:
                self._stage_seconds[stage] = time.perf_counter() - start
                self._message = message
                self._notify_locked()
        self._flush()

    def _on_step(self, generation: int, losses: StepLosses) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._steps_done, self._steps_total = losses.step + 1, losses.total_steps
            self._last_losses = losses
            self._message = (f"adapting: step {losses.step + 1}/{losses.total_steps}, "
                             f"loss {losses.total:.4f}")
            self._notify_locked()
        self._flush()

    def _drop_adaptation_locked(self) -> None:
        """Cancel a running adaptation and forget the warm-up (caller sets the phase)."""
        if self._cancel is not None:
            self._cancel.set()
        self._cancel = None
        self._generation += 1
        self._warmup, self._warmup_hw = [], None
        self._steps_done, self._steps_total, self._last_losses = 0, 0, None

    # ------------------------------------------------------------------ control

    def request_adaptation(self) -> None:
        """Start a new warm-up now; a running adaptation is cancelled. An existing adaptation
        keeps serving until the new one replaces it (or fails: then the ISS model serves)."""
        with self._lock:
            self._check_open_locked()
            self._policy.external_start()
            self._begin_warmup_locked(Reason.SERVICE)
        self._flush()

    def restart_stream(self) -> None:
        """The stream jumped (a bag looped, a camera restarted): forget the previous frame,
        so the next frame is served without the add-on, as frame 0 of a stream. The phase and
        any adaptation stay."""
        with self._push_lock:
            with self._lock:
                self._check_open_locked()
                predictor = self._serving
                self._last_frame, self._needs_prime = None, False
            predictor.reset()

    def reset(self) -> None:
        """Drop any adaptation and serve the base model now; the session starts over (phase
        WARMUP, a new warm-up begins with the next frame)."""
        with self._lock:
            self._check_open_locked()
            self._drop_adaptation_locked()
            self._serving, self._source, self._adapted_model = self._iss, Source.ISS, None
            self._last_frame, self._needs_prime = None, False
            self._policy.external_start()
            self._reason = Reason.STARTUP
            self._rebase_look = self._rebase_classes = True
            self._set_phase_locked(Phase.WARMUP, "reset to the base model: collecting "
                                   "warm-up frames")
        self._flush()

    def save_adaptation(self, path: Path | str) -> None:
        """Write the serving adaptation (checkpoints.save_adaptation); AdaptationError when
        there is none."""
        with self._lock:
            model, phase = self._adapted_model, self._phase
            meta = {"num_objects": self._num_objects, "adaptations_done": self._adaptations_done,
                    "warmup_frames": self._config.adaptation.warmup_frames}
        if model is None:
            raise AdaptationError(f"nothing to save: the session has no adapted model (phase "
                                  f"{phase.value}); wait for phase ADAPTED or load one")
        checkpoints.save_adaptation(model, path, meta)

    def load_adaptation(self, path: Path | str) -> None:
        """Serve an adaptation saved earlier (phase ADAPTED); a running adaptation is
        cancelled. CheckpointError (session unchanged) when the file does not fit the base
        model. The first frame after loading is served without the add-on (no previous
        frame)."""
        model = copy.deepcopy(self._model)
        checkpoints.load_adaptation(model, path)
        model.eval().requires_grad_(False)
        predictor = StreamPredictor(model, self._config.model, self._config.fusion,
                                    self._device, use_addon=True)
        with self._lock:
            self._check_open_locked()
            self._drop_adaptation_locked()
            self._serving, self._source, self._adapted_model = predictor, Source.ADAPTED, model
            self._last_frame, self._needs_prime = None, False
            self._rebase_look = self._rebase_classes = True  # the scene in view is the reference
            self._set_phase_locked(Phase.ADAPTED, f"loaded adaptation {str(path)!r}; serving "
                                   "the adapted model with fusion")
        self._flush()

    def close(self, timeout: float | None = None) -> None:
        """Cancel a running adaptation and join the background thread (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._drop_adaptation_locked()
                self._last_frame = None
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():    # close() from on_status
                thread.join(timeout)
        self._flush()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open_locked(self) -> None:
        if self._closed:
            raise DittaError("the session is closed; create a new Session")

    # ------------------------------------------------------------------ status

    def status(self) -> SessionStatus:
        """A snapshot of the phase, its reason and the adaptation's progress."""
        with self._lock:
            return self._snapshot_locked()

    def wait_for_phase(self, phases: Collection[Phase], timeout: float) -> bool:
        """Block until the phase is one of ``phases``; False on timeout."""
        wanted = frozenset(phases)
        with self._cond:
            return self._cond.wait_for(lambda: self._phase in wanted, timeout)

    def _snapshot_locked(self) -> SessionStatus:
        return SessionStatus(
            phase=self._phase, message=self._message,
            warmup_collected=len(self._warmup),
            warmup_target=self._config.adaptation.warmup_frames,
            steps_done=self._steps_done, steps_total=self._steps_total,
            last_losses=self._last_losses, num_objects=self._num_objects,
            stage_seconds=dict(self._stage_seconds), frames_pushed=self._frames_pushed,
            adaptations_done=self._adaptations_done, serving=self._source,
            adaptation_reason=self._reason, adaptations_started=self._adaptations_started,
            cuts=self._cuts, consecutive_failures=self._consecutive_failures)

    def _set_phase_locked(self, phase: Phase, message: str) -> None:
        self._phase, self._message = phase, message
        self._cond.notify_all()
        self._notify_locked()

    def _notify_locked(self) -> None:
        if self._on_status is not None:
            self._pending.append(self._snapshot_locked())

    def _flush(self) -> None:
        """Deliver queued statuses in the order they happened, outside the state lock."""
        if self._on_status is None:
            return
        with self._emit_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    status = self._pending.popleft()
                try:
                    self._on_status(status)
                except Exception:  # noqa: BLE001 - a callback must not break the stream
                    logger.exception("on_status callback raised; status %s dropped",
                                     status.phase.value)

