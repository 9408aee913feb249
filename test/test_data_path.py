"""The node's data path on its own (ros/data_path.py): messages in, published images and
counted frames out, without a ROS graph. A real Session (tiny seeded SegFormer, oracle
teacher) serves; a fake clock drives the rate-limited logs."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from fixtures_node import LogLines
from fixtures_stream import OracleTeacher, make_video, tiny_config, tiny_model
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ditta_ros.config import NodeConfig
from ditta_ros.engine.session import Session
from ditta_ros.engine.types import Result
from ditta_ros.labels import load_classes
from ditta_ros.ros.data_path import DataPath, FrameTarget
from ditta_ros.ros.image import array_to_image
from ditta_ros.ros.stream_health import StreamHealth

WAIT = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingSession(Session):
    """The real session, remembering what it served and how often the stream restarted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[Result] = []
        self.restarts = 0

    def push(self, frame: np.ndarray, with_reliability: bool = False,
             stamp: float | None = None) -> Result:
        result = super().push(frame, with_reliability, stamp)
        self.results.append(result)
        return result

    def restart_stream(self) -> None:
        self.restarts += 1
        super().restart_stream()


class Rig:
    """A data path on a real session, with everything it sends recorded."""

    def __init__(self, node: NodeConfig | None = None, configured: bool = True) -> None:
        config = tiny_config(warmup_frames=1000)           # stay in warm-up: the ISS serves
        self.video = make_video(21)
        self.session = RecordingSession(tiny_model(config), OracleTeacher([self.video], 4),
                                        config)
        palette = load_classes("vspw").palette
        self.target = FrameTarget(self.session, node or NodeConfig(), palette, 4)
        self.configured = configured
        self.published: list[tuple[str, Image]] = []
        self.statuses = 0
        self.log = LogLines()
        self.clock = FakeClock()
        self.health = StreamHealth(log_period=5.0, clock=self.clock)
        self.fail_publish: Exception | None = None
        self.labels_out = threading.Semaphore(0)
        self.path = DataPath(self.health, lambda: self.target if self.configured else None,
                             self._publish, self.log, self._status)

    def _publish(self, name: str, image: Image) -> None:
        if self.fail_publish is not None:
            raise self.fail_publish
        self.published.append((name, image))
        if name == "labels":
            self.labels_out.release()

    def _status(self) -> None:
        self.statuses += 1

    def message(self, t: int, sec: int = 100, encoding: str = "bgr8") -> Image:
        header = Header(stamp=Time(sec=sec, nanosec=t), frame_id="cam")
        return array_to_image(self.video.frame(t).image, "bgr8", header) \
            if encoding == "bgr8" else Image(header=header, height=2, width=2,
                                             encoding=encoding, step=4, data=bytes(8))

    def close(self) -> None:
        self.path.stop(timeout=WAIT)
        self.session.close()
        self.target.session.close()


def test_a_frame_is_pushed_and_its_images_go_out_with_the_input_header() -> None:
    rig = Rig(NodeConfig(publish_overlay=False, publish_confidence=True))
    try:
        msg = rig.message(0)
        rig.path.process((msg, 0.0))
        assert [name for name, _ in rig.published] == ["labels", "labels_color", "confidence"]
        assert all(image.header == msg.header for _, image in rig.published)
        served = rig.session.results[0]
        assert served.reliability is not None                  # publish_confidence asked
        labels = rig.published[0][1]
        assert (labels.encoding, labels.height, labels.width) == ("mono8", 64, 96)
        np.testing.assert_array_equal(
            np.frombuffer(bytes(labels.data), np.uint8).reshape(64, labels.step)[:, :96],
            served.labels)
        counts = rig.health.counts()
        assert (counts.processed, counts.rejected, counts.dropped) == (1, 0, 0)
    finally:
        rig.close()


def test_rejections_are_counted_and_logged_once_per_period_and_a_stamp_jump_restarts() -> None:
    rig = Rig()
    try:
        rig.path.process((rig.message(0, encoding="yuv9"), 0.0))
        rig.path.process((rig.message(1, encoding="yuv9"), 0.0))   # held back: same kind
        assert [level for level, _ in rig.log.lines] == ["warning"]
        assert "rejected frame (frame_id 'cam', 1 rejected so far)" in rig.log.lines[0][1]
        assert rig.statuses == 1 and rig.published == [] and rig.session.results == []
        rig.path.process((rig.message(2, sec=100), 0.0))
        rig.path.process((rig.message(3, sec=50), 0.0))            # the stamp went back
        assert rig.session.restarts == 1
        assert "input stamp went back by 50.000 s" in rig.log.lines[-1][1]
        counts = rig.health.counts()
        assert (counts.rejected, counts.processed) == (2, 2)
        assert [r.frame_index for r in rig.session.results] == [0, 1]   # both served
    finally:
        rig.close()


def test_every_received_frame_is_processed_dropped_or_rejected() -> None:
    rig = Rig(configured=False)
    try:
        rig.path.on_image(rig.message(0))
        rig.path.on_image(rig.message(1))             # replaces frame 0 in the slot
        assert rig.path.pending == 1 and not rig.path.running
        rig.path.process((rig.message(2), 0.0))       # nothing configured: dropped
        assert rig.path.stop(timeout=WAIT)            # frame 1 is left in the slot: dropped
        counts = rig.health.counts()
        assert (counts.received, counts.dropped, counts.processed) == (2, 3, 0)
        assert rig.path.pending == 0
    finally:
        rig.close()


def test_an_unexpected_error_is_one_error_line_and_the_worker_goes_on() -> None:
    rig = Rig()
    try:
        rig.path.start()
        assert rig.path.running
        rig.session.close()                           # push() now raises a DittaError
        rig.path.on_image(rig.message(0))
        assert rig.log.wait_for_lines(1, WAIT)
        assert rig.log.lines == [("error", "frame processing failed: internal error: "
                                  "DittaError: push() on a closed session; create a new "
                                  "Session")]
        config = tiny_config(warmup_frames=1000)
        fresh = RecordingSession(tiny_model(config), OracleTeacher([rig.video], 4), config)
        rig.target = rig.target._replace(session=fresh)
        rig.path.on_image(rig.message(1))
        assert rig.labels_out.acquire(timeout=WAIT)   # the same worker serves the next frame
        assert rig.path.stop(timeout=WAIT) and not rig.path.running
        assert [r.frame_index for r in fresh.results] == [0]
        counts = rig.health.counts()
        assert (counts.received, counts.rejected, counts.processed, counts.dropped) == \
            (2, 1, 1, 0)
    finally:
        rig.close()


def test_a_frame_whose_images_cannot_be_published_is_counted_once() -> None:
    rig = Rig()
    try:
        rig.path.start()
        rig.fail_publish = RuntimeError("publisher is gone")
        rig.path.on_image(rig.message(0))
        assert rig.log.wait_for_lines(1, WAIT)        # one error line, the worker goes on
        assert rig.log.lines == [("error", "publishing the images of a processed frame "
                                  "failed: RuntimeError: publisher is gone")]
        rig.fail_publish = None
        rig.path.on_image(rig.message(1))
        assert rig.labels_out.acquire(timeout=WAIT)
        assert rig.path.stop(timeout=WAIT)
        counts = rig.health.counts()                  # served: processed, never rejected too
        assert (counts.received, counts.processed, counts.rejected) == (2, 2, 0)
        assert [r.frame_index for r in rig.session.results] == [0, 1]
    finally:
        rig.close()
