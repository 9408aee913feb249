"""The node's frame hand-over: a latest-frame-wins slot, a worker thread, frame accounting.

The subscription callback must never wait for the model: it puts the message into a slot of
size one and returns. A frame still waiting in the slot when a newer one arrives is dropped
and counted, so memory stays bounded whatever the camera rate. One worker thread takes frames
out of the slot and processes them.

Pure Python (no rclpy), unit-tested on its own.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item; a new item replaces (and returns) the waiting one."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> T | None:
        """Store ``item``; returns the item it replaced (a dropped frame) or None."""
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> T | None:
        """The waiting item (removed), waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout=timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> T | None:
        with self._cond:
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiting ``take`` (it returns what is left, then None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def pending(self) -> int:
        with self._cond:
            return int(self._item is not None)


class Worker(Generic[T]):
    """A thread that feeds every item taken from ``slot`` to ``handle`` until stopped.

    ``handle`` must not raise; an exception escaping it is passed to ``on_error`` and the
    loop goes on (a bad frame never ends processing).
    """

    def __init__(self, slot: LatestSlot[T], handle: Callable[[T], None],
                 on_error: Callable[[BaseException], None], name: str = "ditta_worker") -> None:
        self._slot, self._handle, self._on_error = slot, handle, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._slot.reopen()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self._handle(item)
            except Exception as err:  # noqa: BLE001 - reported, the loop must survive
                self._on_error(err)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the current item; True when the thread has ended within ``timeout``."""
        self._stop.set()
        self._slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()


@dataclass(frozen=True)
class FrameCounts:
    """A snapshot of the frame accounting (received = processed + dropped + rejected + pending)."""

    received: int
    processed: int
    dropped: int
    rejected: int
    last_rejection: str
    latency_ms: float        # mean receive-to-publish time over recent frames, NaN if none
    inference_ms: float      # mean model time over recent frames, NaN if none
    input_hz: float          # received frames per second over the recent window
    output_hz: float         # processed frames per second over the recent window


class FrameStats:
    """Thread-safe frame counters and recent timings for ~/status and /diagnostics."""

    def __init__(self, window: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._window = window
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._received = self._processed = self._dropped = self._rejected = 0
            self._last_rejection = ""
            self._latency: deque[float] = deque(maxlen=self._window)
            self._inference: deque[float] = deque(maxlen=self._window)
            self._in_times: deque[float] = deque(maxlen=self._window)
            self._out_times: deque[float] = deque(maxlen=self._window)

    def received(self) -> None:
        with self._lock:
            self._received += 1
            self._in_times.append(self._clock())

    def processed(self, inference_s: float) -> None:
        """A frame went through the model (counted before its outputs go out, so that a
        subscriber that has the labels also sees the frame counted)."""
        with self._lock:
            self._processed += 1
            self._inference.append(inference_s)
            self._out_times.append(self._clock())

    def published(self, latency_s: float) -> None:
        """A processed frame's outputs are out, ``latency_s`` after it was received."""
        with self._lock:
            self._latency.append(latency_s)

    def rejected(self, reason: str) -> None:
        with self._lock:
            self._rejected += 1
            self._last_rejection = reason

    def dropped(self, count: int = 1) -> None:
        """Frames discarded without processing (e.g. left in the slot at deactivate)."""
        with self._lock:
            self._dropped += count

    def snapshot(self) -> FrameCounts:
        with self._lock:
            return FrameCounts(
                received=self._received, processed=self._processed, dropped=self._dropped,
                rejected=self._rejected, last_rejection=self._last_rejection,
                latency_ms=_mean_ms(self._latency), inference_ms=_mean_ms(self._inference),
                input_hz=_rate(self._in_times, self._clock()),
                output_hz=_rate(self._out_times, self._clock()))


def _mean_ms(values: deque[float]) -> float:
    return 1000.0 * sum(values) / len(values) if values else float("nan")


def _rate(times: deque[float], now: float) -> float:
    """Events per second over the recent window, 0 when the stream has stopped."""
    if len(times) < 2:
        return 0.0
    span = now - times[0]
    return (len(times) - 1) / span if span > 0 else 0.0


class RateLimitedLog:
    """At most one log line per ``period`` seconds per kind of message.

    ``check(key)`` returns None when the line must be suppressed, else the number of lines of
    that kind suppressed since the last one printed (to append "(N more since)").
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period, self._clock = period, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason: its text before the first ':', quoted values and
    numbers blanked (a stream of ever-new unknown encodings is one kind, not one each).
    Digits that end a name (``bgr8``, ``mono16``) are part of the name, not a number."""
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", reason)
    return re.sub(r"(?<!\w)\d+", "#", unquoted.split(":", 1)[0].strip())
