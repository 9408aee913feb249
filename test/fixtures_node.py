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


# --- a node under test, a client node, and what the client receives ------------------------

import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from fixtures_stream import OracleTeacher, make_video, tiny_model  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ditta_ros.engine.session import Session  # noqa: E402
from ditta_ros.msg import AdaptationStatus  # noqa: E402
from ditta_ros.ros.image import array_to_image  # noqa: E402
from ditta_ros.ros.node import DittaNode, LoadedSession  # noqa: E402
from ditta_ros.synthetic import SyntheticVideo  # noqa: E402

# The tiny engine of fixtures_stream (64 x 96 frames, 4 classes, network input = frame size).
TINY_PARAMS: dict[str, object] = {
    "model.num_classes": 4, "model.embed_dim": 32, "model.fit_long": 96, "model.fit_short": 64,
    "adaptation.warmup_frames": 3, "adaptation.iterations": 1,
    "input_reliability": "reliable", "input_depth": 50, "output_depth": 50,
    "status_rate": 0.0, "diagnostics_rate": 5.0,
}
SAM2_PARAMS: dict[str, object] = {
    "teacher.sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml", "teacher.image_size": 256,
    # A random-init SegFormer is nowhere confident: prompt at each class's peak anyway.
    "teacher.reliability_threshold": 0.0,
}



class LogLines:
    """A stand-in for a node's ROS logger (ros/log_bridge.RosLog): its lines by level, with
    waits for the lines a worker thread writes."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def _add(self, level: str, message: str) -> None:
        with self._cond:
            self.lines.append((level, message))
            self._cond.notify_all()

    def info(self, message: str) -> None:
        self._add("info", message)

    def warning(self, message: str) -> None:
        self._add("warning", message)

    def error(self, message: str) -> None:
        self._add("error", message)

    def warnings(self) -> list[str]:
        return [line for level, line in self.lines if level == "warning"]

    def wait_for_lines(self, count: int, timeout: float) -> bool:
        """True once at least ``count`` lines were written (False after ``timeout`` s)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.lines) >= count, timeout)

    def wait_for_warnings(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.warnings()) >= count, timeout)

def ros_args(params: dict[str, object]) -> list[str]:
    out = ["--ros-args"]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out += ["-p", f"{name}:={text}"]
    return out


def oracle_factory(video: SyntheticVideo, length: int = 200):
    """A session factory with the real tiny SegFormer and the ground-truth teacher."""
    teacher = OracleTeacher([video], length)

    def factory(config, on_status):
        model = tiny_model(config)
        return LoadedSession(Session(model, teacher, config, on_status), model.num_classes)
    factory.teacher = teacher  # type: ignore[attr-defined]
    return factory


def stamped(t: int, frame_id: str = "camera") -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = 1000 + t, 1000 * t
    return header


def stamp_key(header: Header) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Harness:
    """A DittaNode, a client node wired to all its topics and services, spinning."""

    context: Context
    node: DittaNode
    client: Node
    video: SyntheticVideo
    topics: dict[str, Collector] = field(default_factory=dict)
    image_pub: Any = None
    compressed_pub: Any = None
    # One service client per service for the harness's life: a client created and destroyed
    # per call had to be discovered anew each time, and once in a full run the node's
    # change_state stayed undiscovered for 60 s.
    service_clients: dict[str, Any] = field(default_factory=dict)

    def _service_client(self, srv_type: Any, name: str) -> Any:
        proxy = self.service_clients.get(name)
        if proxy is None:
            proxy = self.service_clients[name] = self.client.create_client(srv_type, name)
        return proxy

    def send(self, t: int, image: np.ndarray | None = None, frame_id: str = "camera") -> Header:
        """Publish frame t of the video (or ``image``, BGR) stamped 1000 + t s."""
        header = stamped(t, frame_id)
        pixels = self.video.frame(t).image if image is None else image
        self.image_pub.publish(array_to_image(pixels, "bgr8", header))
        return header

    def feed(self, frames: range, timeout: float = 20.0) -> list[Header]:
        """Send frames one at a time, each after the previous one's labels came back (the
        node drops frames that arrive while it is busy: latest frame wins)."""
        headers = []
        for t in frames:
            before = len(self.topics["labels"].items)
            headers.append(self.send(t))
            self.wait_labels(before + 1, timeout)
        return headers

    def send_msg(self, msg: Image | CompressedImage) -> None:
        pub = self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub
        pub.publish(msg)

    def wait_labels(self, count: int, timeout: float = 20.0) -> list[Image]:
        assert self.topics["labels"].wait_for(lambda items: len(items) >= count, timeout), \
            f"got {len(self.topics['labels'].items)} label images, expected {count}"
        return self.topics["labels"].snapshot()

    def wait_phase(self, label: str, timeout: float = 30.0, after: int = 0) -> AdaptationStatus:
        status = self.topics["status"]
        ok = status.wait_for(lambda items: any(m.phase_label == label for m in items[after:]),
                             timeout)
        assert ok, f"no status with phase {label!r}; saw {self.phases()}"
        return next(m for m in status.snapshot()[after:] if m.phase_label == label)

    def phases(self) -> list[str]:
        """Phases reported while the node lived (the finalized node reports "none")."""
        return [m.phase_label for m in self.topics["status"].snapshot()
                if m.lifecycle_label != "finalized"]

    def call(self, service: str, timeout: float = 10.0) -> Trigger.Response:
        name = f"/ditta_node/{service}"
        return call_service(self.client, Trigger, name, Trigger.Request(), timeout,
                            self._service_client(Trigger, name))

    def change_state(self, transition: int, timeout: float = 60.0) -> bool:
        request = ChangeState.Request()
        request.transition = Transition(id=transition)
        name = "/ditta_node/change_state"
        response = call_service(self.client, ChangeState, name, request, timeout,
                                self._service_client(ChangeState, name))
        return bool(response.success)

    def latest_status(self, timeout: float = 10.0) -> AdaptationStatus:
        """A fresh ~/status (asks the node to publish one)."""
        before = len(self.topics["status"].items)
        self.node.publish_status()
        assert self.topics["status"].wait_for(lambda items: len(items) > before, timeout)
        return self.topics["status"].snapshot()[-1]


def call_service(client: Node, srv_type: Any, name: str, request: Any, timeout: float,
                 proxy: Any = None) -> Any:
    """Call a service from a spinning client node; waits on an event, never sleeps. With
    ``proxy`` (a client of ``client`` kept by the caller) that client is used and kept,
    else one is made for this call."""
    owned = proxy is None
    if proxy is None:
        proxy = client.create_client(srv_type, name)
    try:
        assert proxy.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        done = threading.Event()
        future = proxy.call_async(request)
        future.add_done_callback(lambda _: done.set())
        assert done.wait(timeout), f"service {name} did not answer within {timeout} s"
        return future.result()
    finally:
        if owned:
            client.destroy_client(proxy)


@contextmanager
def harness(params: dict[str, object], factory: Any = None, video: SyntheticVideo | None = None,
            configure: bool = True, activate: bool = True) -> Iterator[Harness]:
    """A node with ``params`` (+ a client subscribed to every output), spinning."""
    video = video or make_video()
    if factory is None and "model.checkpoint" not in params and "teacher.sam2_config" not in params:
        factory = oracle_factory(video)
    with ros_context(ros_args(params)) as context:
        node = DittaNode(session_factory=factory, context=context)
        client = Node("ditta_test_client", context=context)
        h = Harness(context, node, client, video)
        for name, msg_type, qos in (
                ("status", AdaptationStatus, RELIABLE), ("labels", Image, RELIABLE),
                ("labels_color", Image, RELIABLE), ("overlay", Image, RELIABLE),
                ("confidence", Image, RELIABLE), ("diagnostics", DiagnosticArray, RELIABLE)):
            h.topics[name] = Collector()
            topic = "/diagnostics" if name == "diagnostics" else f"/ditta_node/{name}"
            client.create_subscription(msg_type, topic, h.topics[name], qos)
        h.image_pub = client.create_publisher(Image, "/image", RELIABLE)
        h.compressed_pub = client.create_publisher(CompressedImage, "/image/compressed", RELIABLE)
        try:
            with spinning(context, node, client):
                wait_matched(node._status_pub, 1, 10.0)
                if configure:
                    assert h.change_state(Transition.TRANSITION_CONFIGURE), "configure failed"
                if configure and activate:
                    assert h.change_state(Transition.TRANSITION_ACTIVATE), "activate failed"
                    wait_matched(h.compressed_pub if params.get("transport") == "compressed"
                                 else h.image_pub, 1, 10.0)
                    for name in ("labels", "labels_color", "overlay", "confidence"):
                        wait_matched(node._out_pubs[name], 1, 10.0)
                yield h
                if node.lifecycle_label != "finalized":
                    node.trigger_shutdown()
        finally:
            node.destroy_node()
            client.destroy_node()


def wait_matched(publisher: Any, count: int, timeout: float) -> None:
    """Wait until ``publisher`` has ``count`` subscribers (DDS discovery), polling its count
    through a condition with a deadline (rclpy has no discovery event to wait on)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while publisher.get_subscription_count() < count:
        assert time.monotonic() < deadline, "subscriber not discovered in time"
        event.wait(0.01)
