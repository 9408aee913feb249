"""Python ``logging`` records of ditta_ros (the engine's) into a node's ROS logger.

The engine logs through ``logging.getLogger("ditta_ros....")``; without a bridge those lines
go to stderr only, never to /rosout, rqt_console or a recorded bag. :func:`install_bridge`
puts one handler on the ``ditta_ros`` logger that forwards each record to the ROS logger at
the same severity (a traceback, when the record has one, stays with its record: the engine
logs the tracebacks of expected failures at DEBUG). One bridge per process: installing a new
one replaces the previous one; the returned function removes it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

ROOT_LOGGER = "ditta_ros"
_lock = threading.Lock()


class RosLog(Protocol):
    """What the node's pure parts (data_path.py, status_report.py) write to: its ROS logger
    (``node.get_logger()``), or anything with these methods in a test."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


class RosLogHandler(logging.Handler):
    """Forwards records to an rclpy logger (``node.get_logger()``)."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger
        self.setFormatter(logging.Formatter("[%(name)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).replace(f"[{ROOT_LOGGER}.", "[", 1)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the engine
            self.handleError(record)


def install_bridge(ros_logger: Any) -> Callable[[], None]:
    """Route ``ditta_ros.*`` records to ``ros_logger`` (and no longer to stderr directly);
    returns the function that undoes it (safe to call twice, and after a newer install)."""
    python_logger = logging.getLogger(ROOT_LOGGER)
    handler = RosLogHandler(ros_logger)
    with _lock:
        for old in [h for h in python_logger.handlers if isinstance(h, RosLogHandler)]:
            python_logger.removeHandler(old)
        python_logger.addHandler(handler)
        python_logger.propagate = False
        # Records below the ROS logger's level would be dropped there: skip formatting them.
        python_logger.setLevel(int(ros_logger.get_effective_level()))

    def remove() -> None:
        with _lock:
            if handler in python_logger.handlers:
                python_logger.removeHandler(handler)
                python_logger.propagate = True
                python_logger.setLevel(logging.NOTSET)

    return remove
