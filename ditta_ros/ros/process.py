"""The ditta_node process's lifetime: spin, stop on a signal, finalize while ROS still works.

rclpy's own SIGINT/SIGTERM handler shuts the ROS context down at once; a lifecycle node then
cannot run its shutdown transition ("Unable to start transition 7 ...") and every later log
line fails to reach /rosout ("publisher's context is invalid"). The executable therefore
initialises rclpy without signal handlers and installs :class:`StopRequest`; :func:`run`
spins in a background thread, waits for the stop, and finalizes the node (the shutdown
transition, or the same clean-up when a signal cut a transition short) before the context
goes away. :func:`run` also returns when someone else shuts the context down (a caller that
kept rclpy's handlers, a test).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Protocol

from rclpy.executors import Executor, ExternalShutdownException


class FinalizableNode(Protocol):
    """What :func:`run` needs of the node (``DittaNode``)."""

    @property
    def context(self) -> Any: ...

    @property
    def lifecycle_label(self) -> str: ...

    def autostart_if_requested(self) -> bool: ...

    def trigger_shutdown(self) -> Any: ...

    def release(self) -> None: ...

    def get_logger(self) -> Any: ...

    def destroy_node(self) -> None: ...


class StopRequest:
    """The first SIGINT or SIGTERM asks :func:`run` to stop; while the main thread runs a
    transition (autostart loading models) it also interrupts that transition."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupt_main = True           # False once the main thread only waits

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first and self.interrupt_main:
            raise KeyboardInterrupt


def run(node: FinalizableNode, executor: Executor, stop: StopRequest | None = None) -> None:
    """Spin ``node`` in a background thread until ``stop`` is set (or the context shuts
    down), then finalize it and destroy it; never raises for a signal."""
    stop = stop or StopRequest()
    node.context.on_shutdown(stop.event.set)
    executor.add_node(node)  # type: ignore[arg-type]
    spinner = threading.Thread(target=_spin, args=(executor,), name="ditta-executor",
                               daemon=True)
    spinner.start()
    try:
        node.autostart_if_requested()   # a signal may arrive while models load
        stop.interrupt_main = False
        stop.event.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop.interrupt_main = False
        finalize(node)
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()


def _spin(executor: Executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass                            # the context went away: run() finalizes


def finalize(node: FinalizableNode) -> None:
    """The shutdown transition, or the same clean-up when it cannot run (a signal left the
    state machine mid-transition, or the context is already gone)."""
    if node.lifecycle_label == "finalized":
        return
    if node.context.ok():
        try:
            node.trigger_shutdown()
            return
        except Exception as err:  # noqa: BLE001 - rclpy raises RCLError, not a return
            node.get_logger().info(f"shutdown transition not possible ({err}): releasing "
                                   "directly")
    node.release()
    if node.context.ok():
        node.get_logger().info("shut down: input stopped, session and models released")
