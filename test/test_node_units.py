"""Unit tests of the node's pure parts: frame hand-over, accounting, rate-limited logs, and the
output messages (answers known by construction)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header

from ditta_ros.engine.types import Phase, Reason, SessionStatus, Source, StepLosses
from ditta_ros.msg import AdaptationStatus
from ditta_ros.ros import outputs
from ditta_ros.ros.worker import FrameStats, LatestSlot, RateLimitedLog, Worker, reason_kind


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_latest_slot_keeps_only_the_newest_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1 and slot.put(3) == 2
    assert slot.pending == 1
    assert slot.take(0.0) == 3 and slot.take(0.0) is None and slot.pending == 0


def test_worker_processes_survives_errors_and_stops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    seen: list[int] = []
    errors: list[BaseException] = []
    handled = {i: threading.Event() for i in (1, 2, 3)}

    def handle(item: int) -> None:
        try:
            if item == 2:
                raise RuntimeError("bad frame")
            seen.append(item)
        finally:
            handled[item].set()

    worker = Worker(slot, handle, errors.append)
    worker.start()
    for item in (1, 2, 3):          # one at a time: none is replaced in the slot
        slot.put(item)
        assert handled[item].wait(5.0)
    assert worker.stop(5.0)
    assert seen == [1, 3]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_frame_stats_accounting_and_rates() -> None:
    clock = FakeClock()
    stats = FrameStats(window=10, clock=clock)
    for i in range(5):
        clock.now = i * 0.1
        stats.received()
    stats.dropped()
    stats.rejected("truncated: x")
    stats.processed(0.010)
    stats.published(0.030)
    stats.processed(0.020)
    stats.published(0.050)
    counts = stats.snapshot()
    assert (counts.received, counts.processed, counts.dropped, counts.rejected) == (5, 2, 1, 1)
    assert counts.last_rejection == "truncated: x"
    assert counts.inference_ms == pytest.approx(15.0) and counts.latency_ms == pytest.approx(40.0)
    assert counts.input_hz == pytest.approx(10.0)
    stats.reset()
    assert math.isnan(stats.snapshot().latency_ms) and stats.snapshot().received == 0


def test_rate_limited_log_counts_suppressed_lines_per_kind() -> None:
    clock = FakeClock()
    limit = RateLimitedLog(period=5.0, clock=clock)
    assert limit.check("a") == 0
    assert limit.check("a") is None and limit.check("a") is None
    assert limit.check("b") == 0                     # another kind is not held back
    clock.now = 5.0
    assert limit.check("a") == 2
    assert reason_kind("data truncated: 10 bytes") == reason_kind("data truncated: 99 bytes")
    assert reason_kind("step 10 is shorter") == reason_kind("step 12 is shorter")


def test_label_images_mono8_and_mono16_with_unlabelled() -> None:
    labels = np.array([[0, 3, -1], [4, 2, 1]], np.int64)
    msg = outputs.label_image(labels, 4, Header())
    ids = np.frombuffer(msg.data, np.uint8).reshape(2, 3)
    assert msg.encoding == "mono8"
    np.testing.assert_array_equal(ids, [[0, 3, 255], [255, 2, 1]])
    big = np.array([[0, 299, 300]], np.int64)
    msg = outputs.label_image(big, 300, Header())
    assert msg.encoding == "mono16"
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint16), [0, 299, 65535])
    assert outputs.label_encoding(255) == "mono8" and outputs.label_encoding(256) == "mono16"


def test_colour_overlay_and_confidence_images() -> None:
    colours = np.zeros((1, 2, 3), np.uint8)
    colours[0, 0] = (10, 20, 30)
    frame = np.full((1, 2, 3), 100, np.uint8)                       # BGR grey
    rgb = outputs.colour_image(colours, "rgb8", Header())
    bgr = outputs.colour_image(colours, "bgr8", Header())
    assert list(rgb.data[:3]) == [10, 20, 30] and list(bgr.data[:3]) == [30, 20, 10]
    ovl = outputs.overlay_image(frame, colours, 0.25, "rgb8", Header())
    expected = np.round(0.25 * np.array([10, 20, 30]) + 0.75 * 100)
    np.testing.assert_allclose(list(ovl.data[:3]), expected, atol=1)
    rel = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)
    conf = outputs.confidence_image(rel, "mono8", Header())
    assert list(conf.data) == [0, 128, 255, 0]
    conf32 = outputs.confidence_image(rel, "32FC1", Header())
    np.testing.assert_array_equal(np.frombuffer(conf32.data, np.float32), [0.0, 0.5, 1.0, 0.0])


def test_status_message_maps_session_snapshot_and_counters() -> None:
    losses = StepLosses(iteration=0, frame=1, step=4, total_steps=10, distill=1.5,
                        distill_addon=None, contrastive=0.25, total=1.75)
    status = SessionStatus(phase=Phase.ADAPTING, message="adapting", warmup_collected=0,
                           warmup_target=30, steps_done=5, steps_total=10, last_losses=losses,
                           num_objects=7, stage_seconds={"A": 1.0, "B": 2.0},
                           adaptations_done=1, stage="C",
                           superseded_error="a superseded adaptation failed: boom",
                           adaptation_reason=Reason.CUT, adaptations_started=2, cuts=3)
    stats = FrameStats()
    stats.received()
    msg = outputs.status_message(Time(sec=5), "active", status, Source.ISS, stats.snapshot())
    assert (msg.phase, msg.phase_label) == (AdaptationStatus.PHASE_ADAPTING, "adapting")
    assert msg.lifecycle_state == AdaptationStatus.LIFECYCLE_ACTIVE and msg.serving == "iss"
    assert msg.adaptation_progress == pytest.approx(0.5) and msg.sam2_objects == 7
    assert msg.loss_distill == 1.5 and math.isnan(msg.loss_distill_addon)
    assert msg.stage_b_seconds == 2.0 and math.isnan(msg.stage_c_seconds)
    assert msg.frames_received == 1 and msg.header.stamp.sec == 5
    assert msg.stage == "C" and msg.superseded_error.endswith("boom")
    assert (msg.adaptation_reason, msg.adaptations_started, msg.scene_cuts,
            msg.consecutive_failures) == ("cut", 2, 3, 0)
    none = outputs.status_message(Time(), "unconfigured", None, None, stats.snapshot())
    assert (none.phase_label, none.serving, none.message) == ("none", "none", "not configured")

    diag = outputs.diagnostics_message(Time(), "/ditta_node", msg, stats.snapshot(), False)
    assert diag.status[0].level == DiagnosticStatus.OK
    assert outputs.diagnostics_message(Time(), "n", msg, stats.snapshot(), True
                                       ).status[0].level == DiagnosticStatus.WARN
    assert outputs.diagnostics_message(Time(), "n", none, stats.snapshot(), False
                                       ).status[0].level == DiagnosticStatus.STALE
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert (values["adaptation_reason"], values["scene_cuts"]) == ("cut", "3")


def test_diagnostics_warn_when_adaptations_fail_repeatedly() -> None:
    """One failure while the policy already collects the next warm-up is no warning; two in
    a row are, whatever the phase, with the latest failure's reason."""
    stats = FrameStats()
    for failures, level in ((1, DiagnosticStatus.OK), (2, DiagnosticStatus.WARN)):
        status = SessionStatus(phase=Phase.WARMUP, message="adaptation (drift): collecting",
                               adaptation_reason=Reason.DRIFT, consecutive_failures=failures)
        msg = outputs.status_message(Time(), "active", status, Source.ISS, stats.snapshot())
        entry = outputs.diagnostics_message(Time(), "n", msg, stats.snapshot(), False,
                                            "adaptation failed: no object").status[0]
        assert entry.level == level, (failures, entry.message)
    assert entry.message == ("adaptations fail repeatedly: 2 in a row; latest: adaptation "
                             "failed: no object")
    assert {kv.key: kv.value for kv in entry.values}["consecutive_failures"] == "2"


def test_label_info_lists_every_class() -> None:
    msg = outputs.label_info(("road", "car"), Header(frame_id="cam"))
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "road"), (1, "car")]


def test_reason_kind_keeps_encoding_names_whole() -> None:
    kind = reason_kind("step 10 is shorter than one row (8 px x 3 bytes = 24) for bgr8")
    assert kind == "step # is shorter than one row (# px x # bytes = #) for bgr8"
    assert reason_kind("mono16 frame: 0 x 4") == "mono16 frame"
