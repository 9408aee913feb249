"""What the node says about itself: ``~/status``, ``/diagnostics`` and one log line for every
phase change of its session.

No rclpy here: the node hands in a view of itself (:class:`NodeView`), its clock, its logger
and the two publishers' ``publish``; the messages themselves are built in
:mod:`ditta_ros.ros.outputs`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, KeyValue

from ditta_ros.engine.types import Phase, SessionStatus
from ditta_ros.msg import AdaptationStatus
from ditta_ros.ros import outputs
from ditta_ros.ros.loading import StreamSession
from ditta_ros.ros.log_bridge import RosLog
from ditta_ros.ros.stream_health import StreamHealth


class NodeView(NamedTuple):
    """The node as a report sees it, read once per report."""

    lifecycle: str                     # "unconfigured", "inactive", "active", "finalized"
    session: StreamSession | None      # None when not configured
    last_error: str                    # why the last configure failed ("" when it did not)


class StatusReport:
    """``view()``: the node now. ``now()``: the ROS clock's time for the stamps.
    ``send_status`` / ``send_diagnostics``: publish on ``~/status`` / ``/diagnostics``.
    ``name``: the node's fully qualified name (the diagnostics' hardware id)."""

    def __init__(self, health: StreamHealth, view: Callable[[], NodeView],
                 now: Callable[[], Time], log: RosLog,
                 send_status: Callable[[AdaptationStatus], None],
                 send_diagnostics: Callable[[DiagnosticArray], None], name: str) -> None:
        self._health, self._view, self._now, self._log = health, view, now, log
        self._send_status, self._send_diagnostics = send_status, send_diagnostics
        self._name = name
        self._phase_lock = threading.Lock()
        self._last_phase: Phase | None = None
        self.last_failure = ""                   # the latest FAILED message (/diagnostics)

    def reset(self) -> None:
        """A new session (configure): no phase seen yet, no failure."""
        with self._phase_lock:
            self._last_phase, self.last_failure = None, ""

    def on_session_status(self, status: SessionStatus) -> None:
        """Publish and log every phase change, from the session's own snapshot (the session
        calls this in order, once per change), so no phase is skipped however short."""
        with self._phase_lock:
            if status.phase is self._last_phase:
                return
            previous, self._last_phase = self._last_phase, status.phase
            self.publish(status=status)
            change = (f"phase {previous.value if previous else 'none'} -> "
                      f"{status.phase.value}: {status.message}")
            if status.phase is Phase.FAILED:
                self.last_failure = status.message
                self._log.warning(change)
            else:
                self._log.info(change)

    def message(self, message: str = "", status: SessionStatus | None = None
                ) -> AdaptationStatus:
        """~/status now; ``status``: a session snapshot to report instead of a fresh one."""
        view = self._view()
        session = view.session
        if status is None and session is not None:
            status = session.status()
        serving = status.serving if session is not None and status is not None else None
        if session is None and not message:
            message = view.last_error
        return outputs.status_message(self._now(), view.lifecycle, status, serving,
                                      self._health.counts(), message)

    def publish(self, message: str = "", status: SessionStatus | None = None) -> None:
        self._send_status(self.message(message, status))

    def publish_diagnostics(self) -> None:
        health = self._health
        recent = health.rejected_since_last_report()
        array = outputs.diagnostics_message(self._now(), self._name, self.message(),
                                            health.counts(), recent, self.last_failure)
        array.status[0].values.extend(KeyValue(key=k, value=v)
                                      for k, v in health.diagnostic_values())
        self._send_diagnostics(array)
