"""Drive a real ditta_node in its own process over real DDS, for bench_node, bench_load, soak.

Two sides:

- the node process (``python bench/node_harness.py --record FILE --ros-args -p ...``): the
  real :class:`~ditta_ros.ros.node.DittaNode` with the real engine (``default_session_factory``:
  SegFormer + DiTTA head, SAM2 teacher, streaming Session). The only addition is a thin
  wrapper around the session that notes, for each pushed frame, when ``push`` started and
  ended (wall clock) and the model time the session reports (``Result.inference_s``, the
  figure behind ``AdaptationStatus.inference_ms``), in a preallocated ring buffer (nothing
  grows with the stream), written to FILE when the node shuts down (SIGINT).
- this process: a camera node that publishes ``sensor_msgs/Image`` stamped with the wall
  clock just before ``publish`` and a subscriber that notes when each ``~/labels`` image
  arrives (same clock, same machine). :class:`NodeProcess` starts and stops the node process
  and reads its resident memory from ``/proc``.

The node is put in its steady state by loading an adaptation file at configure (phase
ADAPTED: the adapted model with the add-on and fusion serves every frame). The file holds
the base model's own decoder and head weights, so the compute per frame is exactly an
adapted model's; only the weights' values differ from a real adaptation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ros_environment, rss_bytes  # noqa: E402

ros_environment()

RECORD_ROWS = 20000          # ring buffer rows in the node process (about 0.8 MB, preallocated)
LARGE_SHM_PROFILE = Path(__file__).resolve().parent.parent / "config" / "fastdds_large_shm.xml"


def use_large_shm() -> None:
    """Fast DDS over shared memory only, 32 MiB segment, for this process and the node
    process started after this call (see fastdds_large_shm.xml: with the default 512 KiB
    segment, best-effort raw images of 640 x 480 and up never arrived on this machine).
    Call before the first Camera."""
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(LARGE_SHM_PROFILE)


# ============================================================================ node process


class RecordingSession:
    """The real session, with each push's wall-clock start, end and model time noted."""

    def __init__(self, session: Any, rows: int = RECORD_ROWS) -> None:
        self._session = session
        self._rows = np.full((rows, 4), np.nan)   # frame index, start, end, inference_s
        self._count = 0
        self._lock = threading.Lock()

    def push(self, frame: np.ndarray, with_reliability: bool = False,
             stamp: float | None = None) -> Any:
        start = time.time()
        result = self._session.push(frame, with_reliability, stamp)
        end = time.time()
        with self._lock:
            self._rows[self._count % len(self._rows)] = (result.frame_index, start, end,
                                                         result.inference_s)
            self._count += 1
        return result

    def records(self) -> list[list[float]]:
        with self._lock:
            rows = self._rows[: min(self._count, len(self._rows))]
            return sorted(rows.tolist(), key=lambda r: r[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def serve(argv: Sequence[str] | None = None) -> int:
    """The node process: ditta_node with a recording session; writes the records on exit."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from ditta_ros.ros.node import DittaNode, LoadedSession, default_session_factory, run

    args_in = list(sys.argv[1:] if argv is None else argv)
    split = args_in.index("--ros-args") if "--ros-args" in args_in else len(args_in)
    parser = argparse.ArgumentParser(description="ditta_node with per-frame timing records")
    parser.add_argument("--record", type=Path, required=True, help="JSON file for the records")
    parser.add_argument("--relay", choices=("reliable", "best_effort"), default=None,
                        help="run the baseline relay node (this input QoS) instead")
    args = parser.parse_args(args_in[:split])
    if args.relay is not None:
        return relay(args.relay, args.record)
    holder: list[RecordingSession] = []

    def factory(config: Any, on_status: Any) -> Any:
        loaded = default_session_factory(config, on_status)
        recording = RecordingSession(loaded.session)
        holder.append(recording)
        return LoadedSession(recording, loaded.num_classes)

    rclpy.init(args=["node_harness", *args_in[split:]])
    try:
        node = DittaNode(session_factory=factory)
        run(node, MultiThreadedExecutor())
    finally:
        rclpy.try_shutdown()
        records = [r for h in holder for r in h.records()]
        args.record.write_text(json.dumps({"records": records}))
    return 0


def relay(reliability: str, record: Path) -> int:
    """The baseline: the least a Python ROS 2 node does with a camera image. Same topics
    as ditta_node; in the subscription callback itself, decode the Image (the node's own
    ``image_to_frame``) and publish a mono8 label image of the frame's size with the input's
    header. No model, no hand-over to a worker thread, no other outputs."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ditta_ros.ros.image import array_to_image, image_to_frame

    rclpy.init(args=["node_harness_relay"])
    node = Node("ditta_node")
    out = node.create_publisher(Image, "~/labels", QoSProfile(
        depth=2, reliability=ReliabilityPolicy.RELIABLE))

    def on_image(msg: Image) -> None:
        frame = image_to_frame(msg).frame                               # (H, W, 3) BGR
        labels = np.zeros(frame.shape[:2], dtype=np.uint8)              # (H, W)
        out.publish(array_to_image(labels, "mono8", msg.header))

    qos = QoSProfile(depth=1, reliability=(
        ReliabilityPolicy.RELIABLE if reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT), durability=qos_profile_sensor_data.durability)
    node.create_subscription(Image, "/image", on_image, qos)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        record.write_text(json.dumps({"records": []}))
    return 0


# ============================================================================ this process


def node_parameters(*, variant: str = "tiny", num_classes: int = 124, embed_dim: int = 256,
                    device: str = "cpu", adaptation_file: str = "",
                    input_reliability: str = "reliable", sam2_image_size: int = 256,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's parameters for a bench run: random-weight models, autostart, steady state."""
    params: dict[str, Any] = {
        "model.variant": variant, "model.num_classes": num_classes,
        "model.embed_dim": embed_dim, "model.device": device,
        "teacher.sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "teacher.image_size": sam2_image_size,
        "input_reliability": input_reliability, "input_depth": 1,
        "status_rate": 2.0, "diagnostics_rate": 0.0, "autostart": True,
        "adaptation_file": adaptation_file,
    }
    params.update(extra or {})
    return params


def write_adaptation_file(path: Path, params: dict[str, Any]) -> None:
    """An adaptation file for the node's base model (its own weights: see the module doc)."""
    from ditta_ros.config import ModelConfig
    from ditta_ros.engine.checkpoints import build_model, save_adaptation

    config = ModelConfig(variant=params["model.variant"], num_classes=params["model.num_classes"],
                         embed_dim=params["model.embed_dim"])
    model = build_model(config, "cpu")
    save_adaptation(model, path, {"bench": "base weights, steady-state compute"})


def _ros_args(params: dict[str, Any]) -> list[str]:
    out = ["--ros-args"]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if text == "":
            text = "''"
        out += ["-p", f"{name}:={text}"]
    return out


@dataclass
class Labels:
    """Label images received: header stamp (ns) -> receive wall time (s)."""

    arrivals: dict[int, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, stamp_ns: int, received: float) -> None:
        with self.cond:
            self.arrivals[stamp_ns] = received
            self.cond.notify_all()

    def wait(self, stamp_ns: int, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: stamp_ns in self.arrivals, timeout=timeout)
            return self.arrivals.get(stamp_ns)

    def count(self) -> int:
        with self.cond:
            return len(self.arrivals)

    def since(self, start: float) -> list[tuple[int, float]]:
        with self.cond:
            return [(s, r) for s, r in self.arrivals.items() if r >= start]


class Camera:
    """This process's ROS side: an image publisher, a labels and a status subscriber."""

    def __init__(self, reliability: str = "reliable", name: str = "bench_camera") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from ditta_ros.msg import AdaptationStatus

        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = Node(name, context=self.context)
        qos = QoSProfile(depth=1, reliability=(
            ReliabilityPolicy.RELIABLE if reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT), durability=qos_profile_sensor_data.durability)
        self.publisher = self.node.create_publisher(Image, "/image", qos)
        self.labels = Labels()
        self.sent_count = 0
        self.publish_s: dict[int, float] = {}     # stamp ns -> publish() seconds, if tracked
        self.track_publish = False
        self.status: list[Any] = []
        self._status_cond = threading.Condition()
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, "/ditta_node/labels", self._on_labels, reliable)
        # ~/confidence goes out last of a frame's outputs: its arrival means the node's
        # worker is free for the next frame.
        self.last_output = Labels()
        self.node.create_subscription(Image, "/ditta_node/confidence", self._on_last_output,
                                      reliable)
        self.node.create_subscription(AdaptationStatus, "/ditta_node/status", self._on_status,
                                      reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_labels(self, msg: Any) -> None:
        received = time.time()
        self.labels.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, received)

    def _on_last_output(self, msg: Any) -> None:
        received = time.time()
        self.last_output.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, received)

    def _on_status(self, msg: Any) -> None:
        with self._status_cond:
            self.status.append(msg)
            del self.status[:-200]                 # the latest ones are enough
            self._status_cond.notify_all()

    def wait_status(self, predicate: Any, timeout: float) -> Any | None:
        """The first status message (received from now on or kept) that satisfies
        ``predicate``, waiting up to ``timeout`` s."""
        with self._status_cond:
            found: list[Any] = []

            def check() -> bool:
                found[:] = [m for m in self.status if predicate(m)]
                return bool(found)
            self._status_cond.wait_for(check, timeout=timeout)
            return found[-1] if found else None

    def latest_status(self) -> Any | None:
        with self._status_cond:
            return self.status[-1] if self.status else None

    def image(self, frame_bgr: np.ndarray) -> Any:
        """A reusable Image message holding ``frame_bgr`` (built once, stamped at send)."""
        from std_msgs.msg import Header

        from ditta_ros.ros.image import array_to_image

        return array_to_image(frame_bgr, "bgr8", Header(frame_id="camera"))

    def send(self, msg: Any) -> int:
        """Stamp ``msg`` with the wall clock now and publish it; returns the stamp in ns."""
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        self.publisher.publish(msg)
        if self.track_publish:
            self.publish_s[now] = time.time() - now / 1e9
        self.sent_count += 1
        return now

    def subscribers_ready(self, timeout: float) -> bool:
        """The node subscribes to /image (discovery done), waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        event = threading.Event()
        while time.monotonic() < deadline:
            if self.publisher.get_subscription_count() > 0:
                return True
            event.wait(0.05)          # polling a graph count: nothing to wait on instead
        return False

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)


class NodeProcess:
    """ditta_node (with per-frame records) in a child process; ``stop()`` returns them."""

    def __init__(self, params: dict[str, Any], workdir: Path, threads: int = 0,
                 relay: str | None = None) -> None:
        self.record_path = workdir / "node_records.json"
        self.log_path = workdir / "node.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        if threads > 0:
            env["OMP_NUM_THREADS"] = str(threads)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--record", str(self.record_path),
             *(["--relay", relay] if relay else []), *_ros_args(params)], cwd=ROOT, env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text()[-chars:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the node process ended (exit {self.process.returncode}):\n"
                               f"{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> list[list[float]]:
        """SIGINT, wait, and the records [frame index, push start, push end, inference_s]."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if not self.record_path.exists():
            return []
        return list(json.loads(self.record_path.read_text())["records"])


def wait_active(camera: Camera, node: NodeProcess, phase: str, timeout: float) -> Any:
    """Wait until the node reports lifecycle active in ``phase``; raise with its log if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node.check_alive()
        status = camera.wait_status(
            lambda m: m.lifecycle_label == "active" and m.phase_label == phase, 2.0)
        if status is not None and camera.subscribers_ready(30.0):
            return status
    raise RuntimeError(f"the node did not become active in phase {phase!r} within {timeout} s;"
                       f" last status: {camera.latest_status()}\n{node.log_tail()}")


def pair_records(sent: Sequence[tuple[int, float | None]],
                 records: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """Match each received label (stamp ns, receive s) with the push that served it: the
    push that started after the stamp and ended before the receipt (the latest such)."""
    by_start = sorted(records, key=lambda r: r[1])
    starts = np.array([r[1] for r in by_start]) if by_start else np.zeros(0)
    out = []
    for stamp_ns, received in sent:
        if received is None:
            continue
        stamp = stamp_ns / 1e9
        i = int(np.searchsorted(starts, received)) - 1
        while i >= 0 and by_start[i][2] > received:
            i -= 1
        if i < 0 or by_start[i][1] < stamp:
            continue
        _, start, end, inference = by_start[i]
        out.append({"e2e": received - stamp, "model": inference, "before": start - stamp,
                    "push": end - start, "after": received - end,
                    "overhead": received - stamp - inference})
    return out


if __name__ == "__main__":
    sys.exit(serve())
