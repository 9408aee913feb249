"""ditta_node lifecycle over real DDS: failures name the parameter, nothing half-loaded stays,
deactivate keeps the adaptation, cleanup frees it (tiny real SegFormer, ground-truth teacher)."""

from __future__ import annotations

import gc
import weakref

import pytest
from fixtures_node import TINY_PARAMS, harness, oracle_factory, ros_args, ros_context
from fixtures_stream import make_video
from lifecycle_msgs.msg import Transition
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from ditta_ros.ros.node import DittaNode


def test_deactivate_keeps_and_cleanup_frees_the_adaptation() -> None:
    with harness(TINY_PARAMS) as h:
        h.feed(range(3))
        h.wait_phase("adapted")
        session = weakref.ref(h.node._session)
        assert h.change_state(Transition.TRANSITION_DEACTIVATE)
        status = h.latest_status()
        assert (status.lifecycle_label, status.phase_label) == ("inactive", "adapted")
        assert h.change_state(Transition.TRANSITION_ACTIVATE)
        h.feed(range(3, 4))
        status = h.latest_status()
        assert status.serving == "adapted" and status.adaptations_completed == 1

        assert h.change_state(Transition.TRANSITION_DEACTIVATE)
        assert h.change_state(Transition.TRANSITION_CLEANUP)
        gc.collect()
        assert session() is None, "the session (and its models) outlived cleanup"
        status = h.latest_status()
        assert (status.lifecycle_label, status.phase_label, status.serving) == (
            "unconfigured", "none", "none")
        assert not h.call("adapt").success                      # nothing to adapt now

        assert h.change_state(Transition.TRANSITION_CONFIGURE)
        assert h.change_state(Transition.TRANSITION_ACTIVATE)
        h.feed(range(4, 5))
        status = h.latest_status()
        assert status.phase_label == "warmup" and status.adaptations_completed == 0


def test_configure_time_parameters_are_refused_while_configured() -> None:
    with harness(TINY_PARAMS) as h:
        refused = h.node.set_parameters([Parameter("adaptation.warmup_frames", value=5)])[0]
        assert not refused.successful and "applied at configure" in refused.reason
        invalid = h.node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0]
        assert not invalid.successful
        assert h.change_state(Transition.TRANSITION_DEACTIVATE)
        assert h.change_state(Transition.TRANSITION_CLEANUP)
        accepted = h.node.set_parameters([Parameter("adaptation.warmup_frames", value=5)])[0]
        assert accepted.successful, accepted.reason
        assert h.change_state(Transition.TRANSITION_CONFIGURE)
        assert h.latest_status().warmup_frames_target == 5


@pytest.mark.parametrize("params, named", [
    ({"overlay_alpha": 1}, "parameter 'overlay_alpha'"),          # int for a double
    ({"classes": "/no/such/classes.yaml"}, "parameter 'classes'"),
    ({"model.device": "cuda:7"}, "parameter 'model.device'"),
    ({"model.device": "tpu"}, "parameter 'model.device'"),
    ({"model.fit_long": 64, "model.fit_short": 96}, "parameter 'model.fit_long'"),
])
def test_bad_settings_fail_configure_naming_the_parameter(params, named: str) -> None:
    video = make_video()
    factory = oracle_factory(video)
    calls = []

    def counting(config, on_status):
        calls.append(config)
        return factory(config, on_status)

    with harness({**TINY_PARAMS, **params}, factory=counting, configure=False) as h:
        assert not h.change_state(Transition.TRANSITION_CONFIGURE)
        status = h.latest_status()
        failed = [m for m in h.topics["status"].snapshot() if "configure failed" in m.message]
        if "overlay_alpha" in params:  # a bad start-up value can be replaced, then it works
            fixed = h.node.set_parameters([Parameter("overlay_alpha", value=0.3)])[0]
            assert fixed.successful, fixed.reason
            assert h.change_state(Transition.TRANSITION_CONFIGURE)
    assert failed and named in failed[-1].message, [m.message for m in failed]
    assert status.lifecycle_label == "unconfigured"
    if "classes" in params or "device" in str(params) or "fit" in str(params):
        assert calls == []  # rejected before any model was loaded


def test_a_failure_after_loading_releases_the_session(tmp_path) -> None:
    """A bad adaptation_file fails configure after the models loaded: they are released."""
    made = []
    factory = oracle_factory(make_video())

    def recording(config, on_status):
        loaded = factory(config, on_status)
        made.append(weakref.ref(loaded.session))
        return loaded

    bad = tmp_path / "missing.pt"
    with harness({**TINY_PARAMS, "adaptation_file": str(bad)}, factory=recording,
                 configure=False) as h:
        assert not h.change_state(Transition.TRANSITION_CONFIGURE)
        message = h.latest_status().message
        gc.collect()
        assert made and made[0]() is None
        assert "parameter 'adaptation_file'" in message and str(bad) in message


def test_autostart_configures_and_activates() -> None:
    video = make_video()
    with ros_context(ros_args({**TINY_PARAMS, "autostart": True})) as context:
        node = DittaNode(session_factory=oracle_factory(video), context=context)
        try:
            assert node.autostart_if_requested()
            assert node.lifecycle_label == "active"
            assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
            assert node.lifecycle_label == "finalized" and node._session is None
        finally:
            node.destroy_node()
