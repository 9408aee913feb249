"""The input stream's health: frame accounting, size changes, stamp jumps and rejections.

Pure Python (no rclpy): the node feeds it what it sees and logs the lines it returns, so
every rule here (what counts, what is logged, how often) is unit-tested without a ROS graph.
A method that returns a line returns None when that kind of line was printed less than
``log_period`` seconds ago; the line it returns then says how many were held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from ditta_ros.ros.worker import FrameCounts, FrameStats, RateLimitedLog, reason_kind


class StampCheck(NamedTuple):
    jumped_back: bool         # the stamp is older than the previous frame's
    warning: str | None       # the line to log, None when held back or not a jump
    seconds: float | None     # the stamp in seconds for the adaptation policy; None when
                              # unset (0: a driver that does not stamp; node clock then)


class StreamHealth:
    """What the node knows about its input stream since the last configure."""

    def __init__(self, log_period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = FrameStats(clock=clock)
        self._limit = RateLimitedLog(log_period, clock)
        self.reset()

    def reset(self) -> None:
        self.stats.reset()
        self._size: tuple[int, int] | None = None
        self._stamp: tuple[int, int] | None = None
        self.resolution_changes = 0
        self.stamp_jumps_back = 0
        self._rejected_at_last_report = 0

    def counts(self) -> FrameCounts:
        return self.stats.snapshot()

    def note_size(self, width: int, height: int, frame_id: str) -> str | None:
        """A frame of ``width`` x ``height`` arrived; a warning line when the size changed."""
        size = (int(width), int(height))
        previous, self._size = self._size, size
        if previous is None or previous == size:
            return None
        self.resolution_changes += 1
        suppressed = self._limit.check("resolution")
        if suppressed is None:
            return None
        return (f"resolution changed from {previous[0]}x{previous[1]} to {size[0]}x{size[1]} "
                f"(frame_id '{frame_id}'): a warm-up restarts, an adapted model drops its "
                f"previous-frame cache{_more(suppressed, '')}")

    def note_stamp(self, sec: int, nanosec: int, frame_id: str) -> StampCheck:
        """An input stamp older than the previous frame's (a bag that loops, a camera or
        clock restarted) is counted and jumped_back; the frame is still served."""
        stamp = (int(sec), int(nanosec))
        seconds = stamp[0] + stamp[1] * 1e-9 if stamp != (0, 0) else None
        previous, self._stamp = self._stamp, stamp
        if previous is None or stamp >= previous:
            return StampCheck(False, None, seconds)
        self.stamp_jumps_back += 1
        suppressed = self._limit.check("stamp")
        if suppressed is None:
            return StampCheck(True, None, seconds)
        back = (previous[0] - stamp[0]) + (previous[1] - stamp[1]) * 1e-9
        return StampCheck(True, (
            f"input stamp went back by {back:.3f} s (frame_id '{frame_id}'; a looping bag or "
            "a restarted camera?): served as usual without the add-on, outputs keep the "
            f"input stamp, the adaptation stays{_more(suppressed, '')}"), seconds)

    def rejected(self, reason: str, frame_id: str) -> str | None:
        """Count a rejected frame; a warning line at most once per period per kind."""
        self.stats.rejected(reason)
        suppressed = self._limit.check(reason_kind(reason))
        if suppressed is None:
            return None
        total = self.stats.snapshot().rejected
        return (f"rejected frame (frame_id '{frame_id}', {total} rejected so far): "
                f"{reason}{_more(suppressed, ' like it')}")

    def internal_error(self, err: BaseException) -> str | None:
        """Processing a frame raised unexpectedly: counted as rejected; an error line."""
        reason = f"internal error: {type(err).__name__}: {err}"
        self.stats.rejected(reason)
        suppressed = self._limit.check(f"internal error {type(err).__name__}")
        if suppressed is None:
            return None
        return f"frame processing failed: {reason}{_more(suppressed, ' like it')}"

    def publish_error(self, err: BaseException) -> str | None:
        """Publishing a processed frame's images raised: the frame stays counted as
        processed (the session served it), not also as rejected; an error line at most once
        per period."""
        suppressed = self._limit.check(f"publish error {type(err).__name__}")
        if suppressed is None:
            return None
        return (f"publishing the images of a processed frame failed: {type(err).__name__}: "
                f"{err}{_more(suppressed, ' like it')}")

    def rejected_since_last_report(self) -> bool:
        """True when frames were rejected since the previous call (diagnostics: WARN)."""
        rejected = self.stats.snapshot().rejected
        recent = rejected > self._rejected_at_last_report
        self._rejected_at_last_report = rejected
        return recent

    def diagnostic_values(self) -> list[tuple[str, str]]:
        return [("resolution_changes", str(self.resolution_changes)),
                ("stamp_jumps_back", str(self.stamp_jumps_back))]


def _more(suppressed: int, like: str) -> str:
    return f" ({suppressed} more{like} since the last report)" if suppressed else ""
