"""When a stream adapts again: the adaptation policy (issue 13).

Pure bookkeeping on times and scene signals; the session asks it once before each frame is
served (:meth:`AdaptationPolicy.before_frame`: restart the fusion state? start a new
warm-up with this frame, and why?) and tells it what the detector saw after
(:meth:`AdaptationPolicy.after_frame`). Times are seconds on one clock of the caller's
choice (stream stamps, or ``time.monotonic()``), so a recorded stream replays with the same
decisions at any speed.

Policies (``StreamConfig.policy``):

- ``once``: adapt on the first warm-up only (the paper's protocol); cuts are not looked for.
- ``on_scene_change``: a cut restarts the fusion state at once and starts a new warm-up
  with the frame after the cut; a drift starts a new warm-up once the current adaptation
  serves (ADAPTED or FAILED). A cut while a warm-up is being collected restarts that
  warm-up (free: nothing ran yet), so a warm-up never spans a cut.
- ``periodic``: a new warm-up every ``period_s`` seconds after the last one started; cuts
  restart the fusion state but start nothing.

Policy-triggered starts (cut, drift, period) wait for ``cooldown_s`` after the last start
of any kind and for room under ``max_per_hour``; a trigger that has to wait is kept and
fires as soon as it may (a cut is never forgotten, a drift is re-measured on every frame).
Every new adaptation starts from the base ISS model (the session's job), so errors of one
adaptation do not carry into the next.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from ditta_ros.config import StreamConfig
from ditta_ros.engine.scene import SceneSignal
from ditta_ros.engine.types import Phase, Reason

HOUR_S = 3600.0


class Activity(enum.Enum):
    """What the session is doing, as the policy needs to know it."""

    COLLECTING = "collecting"   # phase WARMUP: a warm-up is being collected
    ADAPTING = "adapting"       # phase ADAPTING: stages A-C run in the background
    SERVING = "serving"         # phase ADAPTED or FAILED: nothing runs

    @staticmethod
    def of(phase: Phase) -> Activity:
        if phase is Phase.WARMUP:
            return Activity.COLLECTING
        return Activity.ADAPTING if phase is Phase.ADAPTING else Activity.SERVING


@dataclass(frozen=True)
class Decision:
    """What to do before serving a frame."""

    restart_fusion: bool        # forget the previous frame (no add-on for this frame)
    adapt: Reason | None        # start a new warm-up with this frame, for this reason


class AdaptationPolicy:
    """The policy of one stream (see the module docstring). Not thread-safe: the session
    calls it under its state lock."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self._wanted: Reason | None = None        # a trigger waiting for cooldown/rate
        self._starts: deque[float] = deque()     # start times within the last hour
        self._last_start: float | None = None
        self._unstamped_start = False            # a start whose time the next frame gives

    @property
    def detects(self) -> bool:
        """True when the policy uses the scene detector (every policy but ``once``)."""
        return self.config.policy != "once"

    @property
    def waiting(self) -> Reason | None:
        """A trigger that waits for the cooldown or the rate limit."""
        return self._wanted

    def external_start(self) -> None:
        """A warm-up started outside the policy (startup, a service call): it counts for
        the cooldown and the rate, timed by the next frame."""
        self._wanted = None
        self._unstamped_start = True

    def before_frame(self, now: float, cut: bool, activity: Activity) -> Decision:
        """Decide before serving a frame stamped ``now`` whose detector said ``cut``."""
        if self._unstamped_start:
            self._unstamped_start = False
            self._record(now)
        if not self.detects:
            return Decision(False, None)
        policy = self.config.policy
        if cut and policy == "on_scene_change":
            if activity is Activity.COLLECTING:
                self._wanted = None
                return Decision(True, Reason.CUT)          # restart the warm-up: free
            self._wanted = Reason.CUT
        if (policy == "periodic" and activity is Activity.SERVING and self._wanted is None
                and self._last_start is not None
                and now - self._last_start >= self.config.period_s):
            self._wanted = Reason.PERIOD
        reason = self._wanted
        if reason is None or activity is Activity.COLLECTING or not self._allowed(now):
            return Decision(cut, None)
        if activity is Activity.ADAPTING and reason is not Reason.CUT:
            return Decision(cut, None)     # a drift/period waits for the running adaptation
        self._wanted = None
        self._record(now)
        return Decision(cut, reason)

    def after_frame(self, signal: SceneSignal, activity: Activity) -> None:
        """Note the detector's signal of the frame just served."""
        if (self.config.policy == "on_scene_change" and signal.drift
                and activity is Activity.SERVING and self._wanted is None):
            self._wanted = Reason.DRIFT

    def _allowed(self, now: float) -> bool:
        if self._last_start is not None and now < self._last_start:
            # The clock went back (a bag looped, a stream restarted): forget the old times
            # rather than wait for the new clock to catch up with them.
            self._starts.clear()
            self._last_start = None
        while self._starts and now - self._starts[0] >= HOUR_S:
            self._starts.popleft()
        if self._last_start is not None and now - self._last_start < self.config.cooldown_s:
            return False
        limit = self.config.max_per_hour
        return limit == 0 or len(self._starts) < limit

    def _record(self, now: float) -> None:
        self._last_start = now
        self._starts.append(now)
        if len(self._starts) > max(self.config.max_per_hour, 1):
            self._starts.popleft()         # only the newest max_per_hour matter
