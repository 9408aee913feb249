"""Helpers for the tests that start rclpy (node, parameters, demo).

Importing this module pins DDS to this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and,
unless the caller chose one, a ROS_DOMAIN_ID of its own for this test process, so parallel
test runs do not see each other's nodes.
"""

from __future__ import annotations

import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402


@contextmanager
def ros_context(args: list[str] | None = None) -> Iterator[Context]:
    """A private rclpy context, shut down afterwards."""
    context = Context()
    rclpy.init(args=args, context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


@contextmanager
def spinning(context: Context, *nodes: Node, threads: int = 4) -> Iterator[MultiThreadedExecutor]:
    """Spin ``nodes`` in a background MultiThreadedExecutor until the block ends."""
    executor = MultiThreadedExecutor(num_threads=threads, context=context)
    for node in nodes:
        executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)


class Collector:
    """Thread-safe list of received messages with wait-for-condition (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.items.append(msg)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout=timeout)

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.items)
