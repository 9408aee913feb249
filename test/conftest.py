"""Session-wide test environment for ditta_ros.

Runs at import time, before any test module can import rclpy or torch:
- DDS stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) and each test run
  gets its own ``ROS_DOMAIN_ID`` (derived from the pid) so parallel runs do not talk to
  each other. A ROS_DOMAIN_ID already set wins (CI may pin it); the discovery range is
  always forced to LOCALHOST (no DDS traffic may leave the machine).
- Thread pools of torch/OpenMP are kept small: CPU test machines are shared.
- The install prefix (the virtual environment, where colcon installs) is on
  ``AMENT_PREFIX_PATH`` so ament_index finds ditta_ros's share directory with nothing sourced.

Fixtures here are the few that many test files need; put the rest in your own test file or in
``test/fixtures_<area>.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Domain ids 10..99 stay clear of the default (0) and of the ids above 101 that collide with
# ephemeral ports on Linux.
_DOMAIN_LOW, _DOMAIN_SPAN = 10, 90

REPO_ROOT = Path(__file__).resolve().parent.parent


def _configure_environment() -> None:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(_DOMAIN_LOW + os.getpid() % _DOMAIN_SPAN))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    threads = str(max(1, min(2, os.cpu_count() or 1)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    # Tests never reach a model hub: loading code must take local paths.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if (Path(sys.prefix) / "share" / "ament_index").is_dir() and sys.prefix not in prefixes:
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([*prefixes, sys.prefix])


_configure_environment()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
            f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"]


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as in pyproject.toml so the marker exists however pytest
    # is started (e.g. with -c or from another directory).
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where package.xml is)."""
    return REPO_ROOT


@pytest.fixture()
def rclpy_context() -> Iterator[Any]:
    """A fresh, initialised rclpy Context for one test, shut down afterwards.

    Pass it to nodes (``Node(name, context=ctx)``) and executors
    (``SingleThreadedExecutor(context=ctx)``) so tests never share the global context.
    """
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)
