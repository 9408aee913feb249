"""What the node says about itself (ros/status_report.py), without a ROS graph: one ~/status
and one log line per phase change, the latest failure in /diagnostics, the configure error
while nothing is loaded. A real Session (tiny seeded SegFormer, failing oracle teacher)."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from fixtures_node import LogLines
from fixtures_stream import OracleTeacher, frames_of, make_video, tiny_config, tiny_model

from ditta_ros.engine.session import Session
from ditta_ros.engine.types import Phase, SessionStatus
from ditta_ros.msg import AdaptationStatus
from ditta_ros.ros.status_report import NodeView, StatusReport
from ditta_ros.ros.stream_health import StreamHealth

WAIT = 60.0


class Rig:
    def __init__(self) -> None:
        self.view = NodeView("unconfigured", None, "")
        self.log = LogLines()
        self.status: list[AdaptationStatus] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.health = StreamHealth()
        self.report = StatusReport(self.health, lambda: self.view, lambda: Time(sec=7),
                                   self.log, self.status.append, self.diagnostics.append,
                                   "/robot/ditta_node")


def test_each_phase_change_is_published_and_logged_once_and_reset_forgets() -> None:
    rig = Rig()
    warmup = SessionStatus(Phase.WARMUP, "collecting warm-up frames (1/3)")
    rig.report.on_session_status(warmup)
    rig.report.on_session_status(SessionStatus(Phase.WARMUP, "collecting (2/3)"))
    failed = SessionStatus(Phase.FAILED, "adaptation failed: teacher broke")
    rig.report.on_session_status(failed)
    assert [m.phase_label for m in rig.status] == ["warmup", "failed"]
    assert rig.status[1].message == "adaptation failed: teacher broke"
    assert rig.log.lines == [
        ("info", "phase none -> WARMUP: collecting warm-up frames (1/3)"),
        ("warning", "phase WARMUP -> FAILED: adaptation failed: teacher broke")]
    assert rig.report.last_failure == "adaptation failed: teacher broke"
    rig.report.reset()                                 # a new configure
    assert rig.report.last_failure == ""
    rig.report.on_session_status(failed)
    assert rig.log.lines[-1][1].startswith("phase none -> FAILED")


def test_without_a_session_status_says_why_configure_failed() -> None:
    rig = Rig()
    rig.view = NodeView("unconfigured", None, "configure failed: parameter 'classes' ...")
    rig.report.publish()
    sent = rig.status[-1]
    assert sent.header.stamp == Time(sec=7) and sent.lifecycle_label == "unconfigured"
    assert sent.message == "configure failed: parameter 'classes' ..."
    assert sent.phase == AdaptationStatus.PHASE_NONE and sent.serving == "none"
    rig.report.publish("service: nothing to reset")   # an explicit message wins
    assert rig.status[-1].message == "service: nothing to reset"


def test_diagnostics_warn_with_the_latest_failure_after_two_failed_adaptations() -> None:
    rig = Rig()
    config = tiny_config(warmup_frames=2)
    video = make_video(31)
    teacher = OracleTeacher([video], 4, fail=RuntimeError("SAM2 exploded"))
    with Session(tiny_model(config), teacher, config, rig.report.on_session_status) as session:
        rig.view = NodeView("active", session, "")
        frames = frames_of(video, 4)
        for frame in frames[:2]:
            session.push(frame)
        assert rig.log.wait_for_warnings(1, WAIT)      # the FAILED status was delivered
        session.request_adaptation()
        for frame in frames[2:]:
            session.push(frame)
        assert rig.log.wait_for_warnings(2, WAIT)
        assert session.status().consecutive_failures == 2
        rig.report.publish_diagnostics()
        assert rig.status[-1].phase_label == "failed"
    assert all(w.startswith("phase ADAPTING -> FAILED: adaptation failed: RuntimeError: SAM2 "
                            "exploded") for w in rig.log.warnings())
    entry = rig.diagnostics[-1].status[0]
    assert entry.level == DiagnosticStatus.WARN and entry.hardware_id == "/robot/ditta_node"
    assert entry.message.startswith("adaptations fail repeatedly: 2 in a row; latest: "
                                    "adaptation failed: RuntimeError: SAM2 exploded")
    values = {kv.key: kv.value for kv in entry.values}
    assert values["consecutive_failures"] == "2" and values["stamp_jumps_back"] == "0"
