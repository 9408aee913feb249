"""``ditta-eval --live``: replay a bag into a running ``ditta_node`` and score what it publishes.

The bag's image messages are published unchanged (recorded timing, scaled by ``--rate``) on
the node's input topic; every ``~/labels`` image the node publishes carries its input's header,
so outputs are matched to inputs by header stamp. Frames from the warm-up length on are
scored as offline (the same metrics), plus the end-to-end latency (input published -> labels
received) and the share of frames that got no labels (the node drops frames that arrive while
it is busy: latest frame wins). Frames the bag scan finds bad (the node's own checks) are
sent too; the node rejects them, and they are counted as rejected, not as dropped. The
throughput is frames answered per second of wall-clock time, from the first frame sent to
the last labels received. ``ros2 bag play`` can be the player instead; see
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.engine.runner import warmup_length
from ditta_ros.errors import InputError
from ditta_ros.labels import load_classes
from ditta_ros.tools.bags import COMPRESSED_TYPE, BagSource, labels_from_image, read_id_map
from ditta_ros.tools.bagscan import scan_bag
from ditta_ros.tools.evaluation import EvalOptions, Scorer, finish_report, run_settings
from ditta_ros.tools.replay import RosPublisher, bag_items, localhost_only, play
from ditta_ros.tools.report import MethodResult, VideoResult, save_video_result

LIVE_METHOD = "live"


@dataclass
class _Received:
    """Label images received from the node, by header stamp (ns), with arrival times."""

    labels: dict[int, np.ndarray] = field(default_factory=dict)
    arrival: dict[int, float] = field(default_factory=dict)
    inputs: dict[int, float] = field(default_factory=dict)   # stamp -> input seen (external)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add_input(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.cond:
            self.inputs.setdefault(stamp, time.monotonic())
            self.cond.notify_all()

    def wait_first_input(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: bool(self.inputs), timeout=timeout)

    def add(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        labels = labels_from_image(msg.height, msg.width, msg.encoding, msg.is_bigendian,
                                   msg.step, msg.data)
        with self.cond:
            self.labels.setdefault(stamp, labels)
            self.arrival.setdefault(stamp, time.monotonic())
            self.cond.notify_all()

    def wait_quiet(self, expected: set[int], quiet: float) -> None:
        """Until every expected stamp arrived, or nothing new came for ``quiet`` seconds."""
        with self.cond:
            while not expected <= set(self.labels):
                before = len(self.labels)

                def grew(before: int = before) -> bool:
                    return len(self.labels) > before
                if not self.cond.wait_for(grew, timeout=quiet):
                    return


class _Listener:
    """Subscribes to the node's labels in the replay's rclpy context and spins it."""

    def __init__(self, publisher: RosPublisher, topic: str,
                 input_topic: tuple[str, str] | None = None) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.received = _Received()
        self.topic = topic
        self.node = publisher.node
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, topic, self.received.add, qos)
        if input_topic is not None:     # an external player: watch its input too
            name, msgtype = input_topic
            kind = CompressedImage if msgtype == COMPRESSED_TYPE else Image
            best_effort = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
            self.node.create_subscription(kind, name, self.received.add_input, best_effort)
        self.executor = SingleThreadedExecutor(context=publisher.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_for_node(self, timeout: float) -> bool:
        """Until the node publishes on the label topic (discovery), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            if self.node.count_publishers(self.topic) > 0:
                return True
            pause.wait(0.02)       # discovery has no event to wait on in rclpy
        return False

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


@dataclass
class LiveRun:
    """What a live replay saw: the inputs, their ground truth, and the node's answers."""

    bag: Path
    stamps: list[int]                        # header stamps of the frames, ns
    truth: list[np.ndarray | None] | None    # ground truth per frame (label topic given)
    labels: dict[int, np.ndarray]            # stamp -> labels the node published
    latency: dict[int, float]                # stamp -> seconds from publishing to labels
    height: int
    width: int
    rejected: frozenset[int] = frozenset()   # stamps of the frames the node must reject
    wall_s: float = 0.0                      # first frame sent -> last labels received


def replay_into_node(bag: Path, node_input: str, node_labels: str,
                     image_topic: str | None = None, label_topic: str | None = None,
                     id_map: Mapping[int, int] | None = None, ignore: tuple[int, ...] = (),
                     rate: float = 1.0, quiet: float = 10.0, domain_id: int | None = None,
                     discovery_timeout: float = 30.0, external_player: bool = False,
                     ready: threading.Event | None = None) -> LiveRun:
    """Replay ``bag``'s images into a running ditta_node and collect its label images.

    external_player: publish nothing; another player (``ros2 bag play``, ``ditta-replay``)
    publishes the bag on ``node_input``, watched here for the latency. Waits up to
    ``discovery_timeout`` s for its first frame. ``ready`` is set once listening.
    """
    localhost_only()
    with BagSource(bag, image_topic, label_topic, id_map, ignore) as source:
        scan = scan_bag(source)
        if not scan.segments:
            raise InputError(f"bag {bag} has no good frame ({len(scan.rejected)} rejected); "
                             "`ditta-eval --check-only` shows why")
        items = bag_items(source, node_input)
        stamps = source.stamps
        good = {i for s in scan.segments for i in s.frames}
        truth = ([source.labels(i) if i in good and i not in scan.bad_labels else None
                  for i in range(len(source))] if label_topic else None)
        msgtype = source.image_type
        first = scan.segments[0]
        rejected = frozenset(r.stamp for r in scan.rejected)
    publisher = RosPublisher({} if external_player else {node_input: msgtype}, reliable=True,
                             domain_id=domain_id, node_name="ditta_eval_live")
    listener = _Listener(publisher, node_labels,
                         (node_input, msgtype) if external_player else None)
    got = listener.received
    try:
        if not listener.wait_for_node(discovery_timeout) or not (
                external_player or publisher.wait_for_subscribers(1, discovery_timeout)):
            raise InputError(f"no ditta_node found within {discovery_timeout} s: nothing "
                             f"subscribes to {node_input} or publishes {node_labels}; start "
                             "it (active, same ROS_DOMAIN_ID) or set --node-input/--node-labels")
        if ready is not None:
            ready.set()
        if external_player:
            if not got.wait_first_input(discovery_timeout):
                raise InputError(f"no frame arrived on {node_input} within "
                                 f"{discovery_timeout} s; start the player (e.g. ros2 bag "
                                 f"play {bag} --remap <image topic>:={node_input})")
            sent = got.inputs
        else:
            stats = play(items, publisher.publish, rate)
            publisher.wait_for_acks(quiet)    # the last frames reach the node before closing
            sent = {stamps[t]: when for t, when in stats.publish_times.items()}
        got.wait_quiet(set(stamps) - rejected, quiet)
    finally:
        listener.close()
        publisher.close()
    latency = {s: got.arrival[s] - sent[s] for s in got.labels if s in sent}
    wall = (max(got.arrival.values()) - min(sent.values())) if got.arrival and sent else 0.0
    return LiveRun(bag, stamps, truth, dict(got.labels), latency, first.height, first.width,
                   rejected, max(wall, 0.0))


def score_live(run: LiveRun, config: DittaConfig, options: EvalOptions,
               num_classes: int) -> dict[str, Any]:
    """Score a live run like an offline one (frames from the warm-up length on); write and
    return the report, with latency and the share of dropped frames."""
    total = len(run.stamps)
    warmup = (warmup_length(total, config.adaptation.warmup_ratio)
              if options.warmup_frames is None else options.warmup_frames)
    if warmup >= total:
        raise InputError(f"bag {run.bag} has {total} frames; a warm-up of {warmup} leaves "
                         "none to evaluate")
    scorer = Scorer(MethodResult.empty(num_classes))
    result = scorer.result
    answered: list[int] = []
    size: tuple[int, ...] = ()
    for t in range(warmup, total):
        stamp = run.stamps[t]
        labels = run.labels.get(stamp)
        if labels is not None and labels.shape != size:
            scorer.break_windows()        # a resolution change: a new segment
            size = labels.shape
        if labels is None:
            if stamp in run.rejected:
                result.rejected += 1      # a bad frame: the node rejects it, as it should
            else:
                result.dropped += 1
            scorer.break_windows()        # a frame without labels breaks every window
            continue
        answered.append(t)
        if stamp in run.latency:
            result.latencies_s.append(run.latency[stamp])
        gt = run.truth[t] if run.truth is not None else None
        if gt is not None and gt.shape != labels.shape:
            gt = None                     # a label of another size than its frame
        scorer.add(labels, gt, run.truth is None, 0.0)
    # Throughput as seen from outside: answered frames per second of wall-clock time.
    result.wall_s = run.wall_s
    result.notes.append(f"live: of {total - warmup} frames after the warm-up, "
                        f"{len(answered)} processed, {result.dropped} dropped (no labels), "
                        f"{result.rejected} rejected (bad frames)")
    labelled = sum(run.truth[t] is not None for t in answered) if run.truth else 0
    video = VideoResult(run.bag.name, total, warmup, labelled, run.height, run.width,
                        {LIVE_METHOD: scorer.finish()}, evaluated=len(answered),
                        rejected=_rejected_kinds(run, warmup))
    settings = run_settings(config, options, num_classes)
    options.output.mkdir(parents=True, exist_ok=True)
    save_video_result(options.output, video)
    return finish_report(options.output, [video], settings, load_classes(options.classes),
                         options.plots)


def _rejected_kinds(run: LiveRun, warmup: int) -> dict[str, int]:
    count = sum(1 for t in range(warmup, len(run.stamps)) if run.stamps[t] in run.rejected)
    return {"rejected by the node's checks": count} if count else {}


def live_main(args: argparse.Namespace, config: DittaConfig, options: EvalOptions) -> int:
    if len(args.sources) != 1:
        raise InputError("--live replays exactly one bag")
    id_map = read_id_map(args.label_map) if args.label_map is not None else None
    run = replay_into_node(args.sources[0], args.node_input, args.node_labels,
                           args.image_topic, args.label_topic, id_map,
                           tuple(args.label_ignore), args.rate, args.live_timeout,
                           args.domain_id, args.live_start_timeout,
                           args.live_player == "external")
    report = score_live(run, config, options, config.model.num_classes)
    print((options.output / "report.md").read_text().split("## Per video")[0].rstrip())
    print("\n" + live_summary(report))
    return 0


def live_summary(report: Mapping[str, Any]) -> str:
    """One line: processed / dropped / rejected, wall-clock throughput, mean latency."""
    s = report["overall"].get(LIVE_METHOD, {})
    fps, latency = s.get("fps"), s.get("latency_mean_ms")
    return (f"live: {s.get('processed', 0)} processed, {s.get('dropped', 0)} dropped, "
            f"{s.get('rejected', 0)} rejected; throughput "
            f"{'-' if fps is None else format(fps, '.2f')} frames/s over "
            f"{s.get('wall_s', 0.0):.1f} s wall clock; mean latency "
            f"{'-' if latency is None else format(latency, '.1f')} ms")
