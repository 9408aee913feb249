"""Delivery of a session's status snapshots to its ``on_status`` callback.

In the order they happened, never while the session's state lock is held, and never from two
threads at once: a thread that finds another one delivering leaves its snapshots to it (so a
callback may call back into the session without deadlock), and the deliverer looks again
after letting go, so no snapshot is left behind.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from ditta_ros.engine.types import SessionStatus

logger = logging.getLogger(__name__)


class StatusRelay:
    """``lock`` is the session's state lock: :meth:`queue_locked` runs under it."""

    def __init__(self, callback: Callable[[SessionStatus], None] | None,
                 lock: threading.Lock) -> None:
        self.callback = callback
        self._lock = lock
        self._pending: deque[SessionStatus] = deque()
        self._delivering = threading.Lock()

    def queue_locked(self, snapshot: Callable[[], SessionStatus]) -> None:
        if self.callback is not None:
            self._pending.append(snapshot())

    def flush(self) -> None:
        if self.callback is None:
            return
        while True:
            if not self._delivering.acquire(blocking=False):
                return                           # the thread delivering takes ours too
            try:
                self._deliver(self.callback)
            finally:
                self._delivering.release()
            with self._lock:
                if not self._pending:
                    return

    def _deliver(self, callback: Callable[[SessionStatus], None]) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                status = self._pending.popleft()
            try:
                callback(status)
            except Exception:  # noqa: BLE001 - a callback must not break the stream
                logger.exception("on_status callback raised; status %s dropped",
                                 status.phase.value)
