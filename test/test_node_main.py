"""The ditta_node executable as a user starts it: a separate process, autostart, real DDS,
the real loading path (tiny SegFormer, random SAM2 Hiera-T), a clean exit on Ctrl-C (SIGINT)
and on SIGTERM (what ros2 launch sends after SIGINT, and what a supervisor sends): the
shutdown transition runs (its log line is out), no ERROR line, exit status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_node import (
    RELIABLE,
    SAM2_PARAMS,
    TINY_PARAMS,
    Collector,
    ros_args,
    ros_context,
    spinning,
)
from rclpy.node import Node

from ditta_ros.msg import AdaptationStatus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_executable_autostarts_serves_status_and_exits_cleanly_on_a_signal(
        stop: signal.Signals) -> None:
    params = {**TINY_PARAMS, **SAM2_PARAMS, "autostart": True, "status_rate": 2.0}
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with ros_context() as context:
        client = Node("main_test_client", context=context)
        status = Collector()
        client.create_subscription(AdaptationStatus, "/ditta_node/status", status, RELIABLE)
        with spinning(context, client):
            process = subprocess.Popen(
                [sys.executable, "-m", "ditta_ros.ros.node", *ros_args(params)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                active = status.wait_for(
                    lambda items: any(m.lifecycle_label == "active" for m in items), 120.0)
                process.send_signal(stop)
                output, _ = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        client.destroy_node()
    assert active, output[-3000:]
    assert process.returncode == 0, output[-3000:]
    assert "active: listening on /image" in output
    assert "Traceback" not in output
    assert "ERROR" not in output and "Failed to publish" not in output, output[-3000:]
    assert "shut down: input stopped, session and models released" in output  # on_shutdown
    phases = {m.phase_label for m in status.snapshot() if m.lifecycle_label == "active"}
    assert phases == {"warmup"}
