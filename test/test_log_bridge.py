"""The engine's Python log records reach a node's ROS logger (ros/log_bridge.py), and from
there /rosout: checked with a real node and a real /rosout subscription."""

from __future__ import annotations

import logging

from fixtures_node import RELIABLE, Collector, ros_context, spinning
from rcl_interfaces.msg import Log
from rclpy.node import Node

from ditta_ros.ros.log_bridge import RosLogHandler, install_bridge


class RecordingLogger:
    """An object with rclpy's logger methods that remembers what it was given."""

    def __init__(self, level: int = 20) -> None:
        self.lines: list[tuple[str, str]] = []
        self.level = level

    def get_effective_level(self) -> int:
        return self.level

    def debug(self, text: str) -> None:
        self.lines.append(("debug", text))

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))


def test_levels_map_and_one_bridge_at_a_time() -> None:
    first, second = RecordingLogger(), RecordingLogger(level=10)
    remove_first = install_bridge(first)
    remove_second = install_bridge(second)              # replaces the first
    engine = logging.getLogger("ditta_ros.engine.session")
    try:
        engine.debug("details")
        engine.info("phase change")
        engine.warning("superseded failure")
        try:
            raise ValueError("expected")
        except ValueError:
            engine.debug("failed", exc_info=True)
        engine.error("bug")
        handlers = [h for h in logging.getLogger("ditta_ros").handlers
                    if isinstance(h, RosLogHandler)]
        assert len(handlers) == 1
    finally:
        remove_first()                                  # stale: must not remove the second
        assert any(isinstance(h, RosLogHandler)
                   for h in logging.getLogger("ditta_ros").handlers)
        remove_second()
    assert first.lines == []
    levels = [level for level, _ in second.lines]
    assert levels == ["debug", "info", "warning", "debug", "error"]
    assert second.lines[1] == ("info", "[engine.session] phase change")
    assert "Traceback" in second.lines[3][1] and "ValueError: expected" in second.lines[3][1]
    assert not any(isinstance(h, RosLogHandler) for h in logging.getLogger("ditta_ros").handlers)
    assert logging.getLogger("ditta_ros").propagate


def test_engine_records_reach_rosout() -> None:
    with ros_context() as context:
        node = Node("bridge_test_node", context=context)
        listener = Node("bridge_test_listener", context=context)
        rosout = Collector()
        listener.create_subscription(Log, "/rosout", rosout, RELIABLE)
        remove = install_bridge(node.get_logger())
        try:
            with spinning(context, listener):
                logging.getLogger("ditta_ros.engine.session").warning("adaptation superseded")
                assert rosout.wait_for(lambda items: any(
                    m.name == "bridge_test_node" and m.level == Log.WARN
                    and m.msg == "[engine.session] adaptation superseded" for m in items), 10.0)
        finally:
            remove()
            node.destroy_node()
            listener.destroy_node()
