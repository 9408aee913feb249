"""The session's side of streams (issue 13): the scene detector, the adaptation policy and
the counters ``~/status`` reports, behind one small object the session owns.

The session keeps the mechanics (one adaptation worker, cancel and supersede, the model
swap); this module keeps the bookkeeping of *why* and *how often*. What the session does
with it, per pushed frame::

    cut = watch.look(frame)                          # push lock: appearance, before serving
    decision = watch.before_frame_locked(cut, ...)   # state lock: restart fusion? adapt?
    ...serve the frame (fusion reset when decision.restart_fusion)...
    signal = watch.see(labels, rebase)               # push lock: the served labels
    watch.after_frame_locked(signal, phase)          # state lock: a drift becomes wanted

A warm-up the policy starts (cut, drift, period) goes through the session's own
``_begin_warmup_locked``, the same path as a service request: a running adaptation is
cancelled, the next one runs on the one worker after it has returned, from the base model,
and the serving model serves until the new one replaces it.

Locking: :meth:`StreamWatch.look` and :meth:`StreamWatch.see` touch the detector and run
under the session's push lock only; every ``*_locked`` method runs under its state lock.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ditta_ros.config import StreamConfig
from ditta_ros.engine.policy import Activity, AdaptationPolicy, Decision
from ditta_ros.engine.scene import SceneDetector, SceneSignal
from ditta_ros.engine.types import Phase, Reason


class StreamWatch:
    """Scene detector + adaptation policy + counters of one session's stream."""

    def __init__(self, config: StreamConfig, num_classes: int) -> None:
        self._policy = AdaptationPolicy(config)
        self._scene = SceneDetector(config, num_classes) if self._policy.detects else None
        self._policy.external_start()            # the session's first warm-up
        self.reason = Reason.STARTUP             # why the latest warm-up started
        self.adaptations_started = 0             # adaptations whose stages began
        self.cuts = 0                            # cuts the detector found
        self.consecutive_failures = 0            # failed adaptations since the last success
        self._rebase_look = False                # new appearance reference wanted
        self._rebase_classes = False             # new class reference wanted

    # ------------------------------------------------------------------ push lock

    def look(self, frame: np.ndarray) -> bool:
        """True when ``frame`` cuts from the previous one (never under policy ``once``)."""
        return self._scene.before(frame) if self._scene is not None else False

    def see(self, labels: np.ndarray, rebase: tuple[bool, bool]) -> SceneSignal | None:
        """Show the detector the served labels, after applying the rebase that
        :meth:`take_rebase_locked` returned for this frame; None under policy ``once``."""
        if self._scene is None:
            return None
        if any(rebase):
            self._scene.rebase(*rebase)
        return self._scene.after(labels)

    # ------------------------------------------------------------------ state lock

    def before_frame_locked(self, cut: bool, stamp: float | None, phase: Phase) -> Decision:
        """The policy's decision for the frame about to be served; ``stamp`` in seconds
        (None: ``time.monotonic()``)."""
        now = time.monotonic() if stamp is None else stamp
        self.cuts += int(cut)
        return self._policy.before_frame(now, cut, Activity.of(phase))

    def after_frame_locked(self, signal: SceneSignal | None, phase: Phase) -> None:
        if signal is not None:
            self._policy.after_frame(signal, Activity.of(phase))

    def take_rebase_locked(self) -> tuple[bool, bool]:
        """(appearance, classes) references to rebase before the next :meth:`see`."""
        rebase = (self._rebase_look, self._rebase_classes)
        self._rebase_look = self._rebase_classes = False
        return rebase

    def warmup_started_locked(self, reason: Reason) -> None:
        """A new warm-up starts with the next collected frame: it is the new appearance
        reference. A start the policy did not decide counts for its cooldown and rate."""
        if reason in (Reason.STARTUP, Reason.SERVICE):
            self._policy.external_start()
        self.reason = reason
        self._rebase_look = True
        if reason is Reason.STARTUP:             # reset(): the base model serves again
            self._rebase_classes = True

    def adaptation_started_locked(self) -> None:
        self.adaptations_started += 1

    def adaptation_ended_locked(self, succeeded: bool) -> None:
        """The current adaptation ended: a new model (adapted, or ISS again after a
        failure) labels the scene, so the class reference starts over."""
        self.consecutive_failures = 0 if succeeded else self.consecutive_failures + 1
        self._rebase_classes = True

    def model_loaded_locked(self) -> None:
        """A saved adaptation serves: the scene in view is the reference of both signals."""
        self._rebase_look = self._rebase_classes = True

    def status_fields_locked(self) -> dict[str, Any]:
        """The SessionStatus fields this module owns."""
        return {"adaptation_reason": self.reason,
                "adaptations_started": self.adaptations_started, "cuts": self.cuts,
                "consecutive_failures": self.consecutive_failures}
