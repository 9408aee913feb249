"""The streaming session: warm-up, background adaptation and the serving-model swap.

One :class:`Session` per stream. ``push(frame)`` is synchronous: every pushed frame returns
exactly one :class:`~ditta_ros.engine.types.Result`, served by whichever model serves at
that moment. Phases (``types.Phase``)::

    WARMUP --(warmup_frames collected)--> ADAPTING --(stages A+B+C done)--> ADAPTED
                                              \\--(any exception, no object)--> FAILED

- WARMUP: copies of the first ``AdaptationConfig.warmup_frames`` frames are kept (a bounded
  buffer, handed to the adaptation and released when it ends); the ISS model serves.
- ADAPTING: stages A, B and C (:func:`~ditta_ros.engine.warmup.run_warmup`) run in the
  session's one adaptation thread with a cancel Event; ``status().stage`` says which stage
  runs. The ISS model keeps serving. On success the adapted model's add-on cache is primed
  with the newest frame pushed so far (the last warm-up frame when none arrived meanwhile),
  then the serving predictor is swapped under the state lock.
- ADAPTED: the adapted model serves with fusion (stage D).
- FAILED: adaptation raised (teacher error, torch out of memory, ...) or stage B found no
  object; ``status().message`` says why and the ISS model serves. Nothing adapts again
  until :meth:`Session.request_adaptation` or the stream policy (below) starts a warm-up.

One adaptation at a time, by construction (engine/adaptation_worker.py): one worker thread,
a queue of length one; a request or reset cancels the running adaptation and the next starts
only once it has returned. A superseded run's failure shows in ``status().superseded_error``.

Streams (issue 13; engine/stream_watch.py, scene.py, policy.py): unless
``StreamConfig.policy`` is ``once``, a scene detector looks at every frame. A cut resets the
fusion state before that frame is served, so fusion never blends across a cut. The policy
may start a new warm-up with a frame (cut, drift, period) through the same path as
:meth:`Session.request_adaptation`: the running adaptation is cancelled, the new one runs on
the one worker from the base (ISS) model, and the serving model keeps serving until the new
one replaces it. ``status()`` says why the latest warm-up started and counts adaptations,
cuts and consecutive failures.

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
- ``on_status`` is called on every phase change and on progress (each warm-up frame, each
  stage, each adaptation step), in order, never while the session's state lock is held and
  never from two threads at once: the thread that caused a change delivers it, unless
  another thread is delivering at that moment, which then delivers it too. It must return
  quickly; it may call any method of the session (a request or reset from inside it is
  delivered after the current callback returns).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection

import numpy as np
import torch

from ditta_ros.config import DittaConfig
from ditta_ros.engine import checkpoints
from ditta_ros.engine.adaptation_worker import AdaptationWorker, WorkerHooks
from ditta_ros.engine.fusion import StreamPredictor
from ditta_ros.engine.preprocess import check_frame
from ditta_ros.engine.status_relay import StatusRelay
from ditta_ros.engine.stream_watch import StreamWatch
from ditta_ros.engine.types import Phase, Reason, Result, SessionStatus, Source, Teacher
from ditta_ros.errors import AdaptationError, DittaError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

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
        self._config = config
        self._device = torch.device(config.model.device)
        self._iss = StreamPredictor(model, config.model, config.fusion, self._device,
                                    use_addon=False)
        self._lock = threading.Lock()            # guards every field below
        self._cond = threading.Condition(self._lock)
        self._push_lock = threading.Lock()       # one push at a time (predictor caches)
        self._relay = StatusRelay(on_status, self._lock)
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
        self._closed = False
        self._frames_pushed = 0
        self._adaptations_done = 0
        # The adaptation thread and its progress, under this session's lock (its *_locked
        # methods and .progress only with the lock held).
        self._worker = AdaptationWorker(
            self._model, teacher, config, self._cond,
            WorkerHooks(self._progress_locked, self._adapted, self._failed_locked, self._flush))
        self._watch = StreamWatch(config.stream, model.num_classes)   # issue 13
        self._warmup_why = ""                    # why the warm-up being collected started

    # ------------------------------------------------------------------ serving

    def push(self, frame: np.ndarray, with_reliability: bool = False,
             stamp: float | None = None) -> Result:
        """Serve one (H, W, 3) uint8 BGR frame; labels (H, W) int64 at the frame's size.

        ``stamp``: the frame's time in seconds (any origin, one clock per stream), on which
        the adaptation policy's cooldown and period are measured; None: time.monotonic().
        Raises InputError for a malformed frame (nothing is counted then) and DittaError
        after :meth:`close`.
        """
        check_frame(frame)
        with self._push_lock:
            cut = self._watch.look(frame)
            with self._lock:
                if self._closed:
                    raise DittaError("push() on a closed session; create a new Session")
                index = self._frames_pushed
                self._frames_pushed += 1
                decision = self._watch.before_frame_locked(cut, stamp, self._phase)
                if decision.adapt is not None:   # this frame is the new warm-up's first
                    self._begin_warmup_locked(decision.adapt)
                rebase = self._watch.take_rebase_locked()
                phase = self._phase
                if phase is Phase.WARMUP:
                    self._collect_locked(frame, index)
                elif phase is Phase.ADAPTING:
                    self._last_frame, self._last_index = frame.copy(), index
                prime = self._take_prime_locked()
                predictor, source = self._serving, self._source
            start = time.perf_counter()
            if decision.restart_fusion:
                predictor.reset()                # fusion never blends across a cut
            elif prime is not None:
                predictor.prime(prime)
            labels, rel = predictor.predict(frame, with_reliability)
            elapsed = time.perf_counter() - start
            signal = self._watch.see(labels, rebase)
            if signal is not None:
                with self._lock:
                    self._watch.after_frame_locked(signal, self._phase)
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
        why = "frame size changed, warm-up restarted: " if restarted else self._warmup_why
        self._message = f"{why}collecting warm-up frames ({len(self._warmup)}/{target})"
        self._notify_locked()

    # ------------------------------------------------------------------ adaptation

    def _start_adaptation_locked(self) -> None:
        frames, self._warmup = self._warmup, []
        self._worker.submit_locked(frames)      # replaces a queued job that has not started
        self._watch.adaptation_started_locked()
        self._set_phase_locked(Phase.ADAPTING, f"adapting on {len(frames)} warm-up frames")

    def _adapted(self, generation: int, model: DittaModel) -> None:
        """The worker's hand-over (no lock held): serve ``model`` with fusion, its add-on cache
        primed with the newest frame pushed, unless the generation was dropped meanwhile."""
        predictor = StreamPredictor(model, self._config.model, self._config.fusion,
                                    self._device, use_addon=True)
        with self._lock:
            prime, prime_index = self._last_frame, self._last_index
        if prime is not None:
            predictor.prime(prime)
        with self._lock:
            if not self._worker.current_locked(generation):
                return
            self._serving, self._source = predictor, Source.ADAPTED
            self._adapted_model = model
            self._needs_prime = self._last_index != prime_index
            self._adaptations_done += 1
            self._worker.progress.ended()
            self._watch.adaptation_ended_locked(succeeded=True)
            self._set_phase_locked(
                Phase.ADAPTED, f"adapted with {self._worker.progress.num_objects} objects; "
                "serving the adapted model with fusion")

    def _failed_locked(self, reason: str) -> None:
        """The current adaptation failed (the worker logged it): the ISS model serves."""
        self._serving, self._source = self._iss, Source.ISS
        self._adapted_model = None
        self._watch.adaptation_ended_locked(succeeded=False)
        self._set_phase_locked(
            Phase.FAILED, f"adaptation failed: {reason}; serving the ISS model "
            "(request a new adaptation to try again)")

    def _drop_adaptation_locked(self) -> None:
        """Cancel a running adaptation and forget the warm-up (caller sets the phase)."""
        self._worker.drop_locked()
        self._warmup, self._warmup_hw = [], None

    def _begin_warmup_locked(self, reason: Reason, why: str = "") -> None:
        """A new warm-up starts with the next collected frame; a running adaptation is
        cancelled (the worker starts the next one only after it returned) and the serving
        model keeps serving. Service requests, resets and the policy all come here."""
        restarted = self._phase is Phase.WARMUP and bool(self._warmup)
        self._drop_adaptation_locked()
        self._watch.warmup_started_locked(reason)
        self._warmup_why = (f"adaptation ({reason.value})"
                            f"{', warm-up restarted' if restarted else ''}: ")
        self._set_phase_locked(Phase.WARMUP, f"{why}{self._warmup_why}collecting warm-up "
                               f"frames (0/{self._config.adaptation.warmup_frames})")

    # ------------------------------------------------------------------ control

    def request_adaptation(self) -> None:
        """Start a new warm-up now; a running adaptation is cancelled. An existing adaptation
        keeps serving until the new one replaces it (or fails: then the ISS model serves)."""
        with self._lock:
            self._check_open_locked()
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
            self._serving, self._source, self._adapted_model = self._iss, Source.ISS, None
            self._last_frame, self._needs_prime = None, False
            self._begin_warmup_locked(Reason.STARTUP, "reset to the base model; ")
        self._flush()

    def save_adaptation(self, path: Path | str) -> None:
        """Write the serving adaptation (checkpoints.save_adaptation); AdaptationError when
        there is none."""
        with self._lock:
            model, phase = self._adapted_model, self._phase
            meta = {"num_objects": self._worker.progress.num_objects,
                    "adaptations_done": self._adaptations_done,
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
            self._watch.model_loaded_locked()
            self._set_phase_locked(Phase.ADAPTED, f"loaded adaptation {str(path)!r}; serving "
                                   "the adapted model with fusion")
        self._flush()

    def close(self, timeout: float | None = None) -> None:
        """Cancel a running adaptation and join the adaptation thread (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._drop_adaptation_locked()
                self._last_frame = None
            thread = self._worker.close_locked()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)                 # (close() from on_status cannot join)
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
            frames_pushed=self._frames_pushed, adaptations_done=self._adaptations_done,
            serving=self._source, **self._worker.progress.status_fields(),
            **self._watch.status_fields_locked())

    def _set_phase_locked(self, phase: Phase, message: str) -> None:
        self._phase, self._message = phase, message
        self._cond.notify_all()
        self._notify_locked()

    def _notify_locked(self) -> None:
        self._relay.queue_locked(self._snapshot_locked)

    def _progress_locked(self, message: str | None) -> None:
        """The worker's progress (a stage, a step, a superseded failure)."""
        if message is not None:
            self._message = message
        self._notify_locked()

    def _flush(self) -> None:
        self._relay.flush()
