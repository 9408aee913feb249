"""Adaptation policy (ditta_ros.engine.policy): once / on_scene_change / periodic, cooldown,
rate limit, and the clock going back; pure, on hand-made signals and times."""

from __future__ import annotations

import pytest

from ditta_ros.config import StreamConfig
from ditta_ros.engine.policy import Activity, AdaptationPolicy, Decision
from ditta_ros.engine.scene import SceneSignal
from ditta_ros.engine.types import Phase, Reason
from ditta_ros.errors import ConfigError

SERVING, COLLECTING, ADAPTING = Activity.SERVING, Activity.COLLECTING, Activity.ADAPTING
QUIET = SceneSignal(False, False, 0.01, 0.01, 0.01)
DRIFT = SceneSignal(False, True, 0.05, 0.5, 0.3)


def _policy(**changes: object) -> AdaptationPolicy:
    policy = AdaptationPolicy(StreamConfig(**changes))  # type: ignore[arg-type]
    policy.external_start()                             # the startup warm-up
    assert policy.before_frame(0.0, False, COLLECTING) == Decision(False, None)
    return policy


def test_activity_of_each_phase() -> None:
    assert Activity.of(Phase.WARMUP) is COLLECTING
    assert Activity.of(Phase.ADAPTING) is ADAPTING
    assert Activity.of(Phase.ADAPTED) is SERVING and Activity.of(Phase.FAILED) is SERVING


def test_once_never_restarts_nor_adapts() -> None:
    policy = _policy(policy="once")
    assert not policy.detects
    for t in range(1, 100):
        assert policy.before_frame(float(t), True, SERVING) == Decision(False, None)
        policy.after_frame(DRIFT, SERVING)


def test_on_scene_change_cut_restarts_fusion_and_adapts_with_that_frame() -> None:
    policy = _policy(cooldown_s=5.0)
    assert policy.before_frame(1.0, False, SERVING) == Decision(False, None)
    assert policy.before_frame(20.0, True, SERVING) == Decision(True, Reason.CUT)
    # a second cut inside the warm-up restarts the warm-up at once (nothing ran yet)
    assert policy.before_frame(21.0, True, COLLECTING) == Decision(True, Reason.CUT)
    # a cut while adapting, inside the cooldown: fusion restarts now, the adaptation waits
    assert policy.before_frame(22.0, True, ADAPTING) == Decision(True, None)
    assert policy.waiting is Reason.CUT
    assert policy.before_frame(24.0, False, ADAPTING) == Decision(False, None)
    # cooldown over (5 s after the start at 20 s): the waiting cut cancels and restarts
    assert policy.before_frame(25.0, False, ADAPTING) == Decision(False, Reason.CUT)
    assert policy.waiting is None


def test_drift_adapts_only_once_the_current_adaptation_serves() -> None:
    policy = _policy(cooldown_s=0.0)
    policy.after_frame(DRIFT, COLLECTING)
    policy.after_frame(DRIFT, ADAPTING)
    assert policy.waiting is None
    policy.after_frame(QUIET, SERVING)
    assert policy.before_frame(1.0, False, SERVING) == Decision(False, None)
    policy.after_frame(DRIFT, SERVING)
    assert policy.before_frame(2.0, False, SERVING) == Decision(False, Reason.DRIFT)


def test_cooldown_and_hourly_limit_hold_triggers_back_until_allowed() -> None:
    policy = _policy(cooldown_s=10.0, max_per_hour=3)
    starts = []
    for t in range(1, 4000):
        policy.after_frame(DRIFT, SERVING)       # drifting all the time
        if policy.before_frame(float(t), False, SERVING).adapt is not None:
            starts.append(t)
    # the startup at 0 s plus two more fill the first hour; then one more each time the
    # oldest start leaves the hour
    assert starts[:2] == [10, 20]
    assert starts[2:] == [3600, 3610, 3620]


def test_no_limit_when_max_per_hour_is_zero() -> None:
    policy = _policy(cooldown_s=1.0, max_per_hour=0)
    count = 0
    for t in range(1, 1001):
        policy.after_frame(DRIFT, SERVING)
        count += policy.before_frame(float(t), False, SERVING).adapt is not None
    assert count == 1000


def test_periodic_adapts_every_period_and_only_resets_fusion_on_cuts() -> None:
    policy = _policy(policy="periodic", period_s=30.0, cooldown_s=0.0)
    reasons = {}
    for t in range(1, 100):
        cut = t == 45
        decision = policy.before_frame(float(t), cut, SERVING)
        assert decision.restart_fusion is cut
        policy.after_frame(DRIFT, SERVING)            # drift means nothing here
        if decision.adapt is not None:
            reasons[t] = decision.adapt
    assert reasons == {30: Reason.PERIOD, 60: Reason.PERIOD, 90: Reason.PERIOD}


def test_a_service_request_counts_for_the_cooldown_and_clears_a_waiting_trigger() -> None:
    policy = _policy(cooldown_s=10.0)
    assert policy.before_frame(5.0, True, SERVING) == Decision(True, None)   # cooldown
    assert policy.waiting is Reason.CUT
    policy.external_start()                       # e.g. the node's service at 6 s
    assert policy.waiting is None
    assert policy.before_frame(6.0, False, COLLECTING) == Decision(False, None)
    assert policy.before_frame(15.0, True, SERVING) == Decision(True, None)  # 9 s after it
    assert policy.before_frame(16.0, False, SERVING) == Decision(False, Reason.CUT)


def test_the_clock_going_back_does_not_block_adaptation() -> None:
    policy = _policy(cooldown_s=10.0)
    assert policy.before_frame(1000.0, True, SERVING) == Decision(True, Reason.CUT)
    # a bag looped: stamps start again near 0
    assert policy.before_frame(2.0, True, SERVING) == Decision(True, Reason.CUT)


def test_policy_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="policy"):
        StreamConfig(policy="sometimes")
    with pytest.raises(ConfigError, match="cut_threshold"):
        StreamConfig(cut_threshold=1.5)
