"""ditta-replay: recorded timing, bytes and stamps over real rclpy/DDS (localhost only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_eval import LABEL_TOPIC, PERIOD_NS, T0_NS, synthetic, write_bag

from ditta_ros.errors import ConfigError
from ditta_ros.tools.bags import BagSource
from ditta_ros.tools.replay import bag_items, main, play, replay, schedule


def test_schedule_and_start_offset(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=5, labels=True)
    with BagSource(bag, label_topic=LABEL_TOPIC) as source:
        items = bag_items(source, "/out", "/labels_out", start_offset=0.25)
    assert [(i.topic, i.frame) for i in items] == [
        ("/out", 3), ("/labels_out", 3), ("/out", 4), ("/labels_out", 4)]
    times = [t for t, _ in schedule(items, rate=2.0)]
    # record times: image at +1 us, label at +2 us after each 100 ms stamp; rate 2 halves
    assert times == pytest.approx([0.0, 0.0000005, 0.05, 0.0500005], abs=1e-9)
    with pytest.raises(ConfigError):
        list(schedule(items, rate=0))


def test_play_loops_and_stops(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=3, labels=False)
    with BagSource(bag) as source:
        items = bag_items(source, "/out")
    sent: list[int] = []
    stats = play(items, lambda topic, raw, frame: sent.append(frame), rate=10.0, loops=2)
    assert sent == [0, 1, 2, 0, 1, 2] and stats.loops == 2
    assert stats.seconds >= 2 * 0.2 / 10 * 0.9       # two loops of 200 ms at rate 10
    stop = threading.Event()
    stop.set()
    assert play(items, lambda *a: None, loops=0, stop=stop).published == 0


@pytest.fixture
def listener() -> Iterator[tuple[Any, Any]]:
    """A subscriber node in its own rclpy context, spinning in a thread."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("replay_listener", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node, executor
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(timeout=5.0)


@pytest.mark.parametrize("encoding", ["rgb8", "jpeg"])
def test_replay_over_dds(tmp_path: Path, listener: tuple[Any, Any], encoding: str) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from ditta_ros.ros.image import compressed_to_frame, image_to_frame

    node, _ = listener
    bag = write_bag(tmp_path / "bag", frames=5, storage="mcap", encoding=encoding)
    got: list[tuple[int, float, np.ndarray]] = []
    labels: list[int] = []
    done = threading.Event()
    msg_type = CompressedImage if encoding == "jpeg" else Image
    decode = compressed_to_frame if encoding == "jpeg" else image_to_frame

    def on_image(msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        got.append((stamp, time.monotonic(), decode(msg).frame))
        if len(got) == 5 and len(labels) == 5:
            done.set()

    def on_label(msg: Any) -> None:
        labels.append(msg.header.stamp.nanosec)
        if len(got) == 5 and len(labels) == 5:
            done.set()

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(msg_type, "/replayed", on_image, qos)
    node.create_subscription(Image, "/replayed_labels", on_label, qos)
    stats = replay(bag, "/replayed", label_topic=LABEL_TOPIC, label_out="/replayed_labels",
                   rate=2.0, wait_subscribers=1, wait_timeout=20.0)
    assert done.wait(20.0), f"received {len(got)} images, {len(labels)} labels"
    assert [s for s, _, _ in got] == [T0_NS + t * PERIOD_NS for t in range(5)]
    with BagSource(bag) as source:
        for t, (_, _, frame) in enumerate(got):
            np.testing.assert_array_equal(frame, source.frames()[t])   # same bytes
    if encoding == "rgb8":
        np.testing.assert_array_equal(got[2][2], synthetic().frame(2).image)
    # 4 gaps of 100 ms at rate 2: the replay takes about 0.2 s, not less. (Measured where
    # the pacing happens; arrival times also carry DDS's repairs of a reliable stream.)
    assert stats.seconds >= 0.2 * 0.9
    assert stats.publish_times[4] - stats.publish_times[0] >= 0.2 * 0.9
    assert stats.acknowledged is True and stats.subscribers == 1


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bag = write_bag(tmp_path / "bag", frames=2)
    assert main([str(bag), "--label-out", "/x"]) == 2
    assert "--label-out needs --label-topic" in capsys.readouterr().err


def test_fast_replay_delivers_and_gets_acknowledged_every_frame(
        tmp_path: Path, listener: tuple[Any, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """As fast as it goes (rate 1000), started before anyone listens: the CLI waits for the
    subscriber (its default), every frame arrives in order, and it reports the acks."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    node, _ = listener
    frames = 40
    bag = write_bag(tmp_path / "bag", frames=frames, storage="mcap", labels=False)
    got: list[int] = []
    done = threading.Event()

    def on_image(msg: Any) -> None:
        got.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        if len(got) == frames:
            done.set()

    codes: list[int] = []
    player = threading.Thread(target=lambda: codes.append(main(
        [str(bag), "--topic", "/fast", "--rate", "1000", "--wait-timeout", "20"])))
    player.start()             # publishes nothing until the subscription below is matched
    qos = QoSProfile(depth=frames, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/fast", on_image, qos)
    player.join(timeout=60.0)
    assert codes == [0]
    assert done.wait(20.0), f"received {len(got)} of {frames}"
    assert got == [T0_NS + t * PERIOD_NS for t in range(frames)]
    out = capsys.readouterr().out
    assert f"sent {frames} messages" in out and "all acknowledged by 1 subscriber" in out
