"""``ditta-replay``: publish a bag's image topic (and optionally its labels) as live topics.

The messages keep their recorded timing (record times, scaled by ``--rate``), their bytes and
so their header stamps: a node downstream stamps its outputs with the input's header, which
is how ``ditta-eval --live`` matches outputs to inputs. ``ros2 bag play`` does the same job on
a full ROS 2 install (docs/evaluation.md); this tool needs only the rclpy wheels and rosbags.

Every frame is delivered: the replay waits for a subscriber on every topic before the first
message (``--wait-subscribers``, default 1: frames published during discovery reach nobody),
publishes reliable with a keep-all history (a fast replay queues rather than overwrites), and
before closing waits until every subscriber acknowledged every message (``--ack-timeout``);
it reports messages sent and whether all were acknowledged.

DDS discovery is kept on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` is set
before rclpy starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

from ditta_ros.errors import ConfigError, DittaError, InputError
from ditta_ros.tools.bags import COMPRESSED_TYPE, IMAGE_TYPE, BagSource

PublishFn = Callable[[str, bytes, int], None]   # (topic, serialised message, index)


@dataclass(frozen=True)
class ReplayItem:
    """One message to replay: where, what (serialised CDR) and when (record time, ns)."""

    topic: str
    msgtype: str
    raw: bytes
    log_time: int
    frame: int          # index of the image frame this message belongs to


@dataclass(frozen=True)
class ReplayStats:
    published: int
    loops: int
    seconds: float
    publish_times: dict[int, float]      # frame index -> time.monotonic() of its publishing
    acknowledged: bool | None = None     # reliable: every subscriber acked every message
    subscribers: int = 0                 # fewest subscribers of a replayed topic at the end

    def describe(self) -> str:
        """One line: sent vs acknowledged."""
        loops = f"{self.loops} loop{'s' if self.loops != 1 else ''}"
        sent = f"sent {self.published} messages in {self.seconds:.2f} s ({loops})"
        if self.acknowledged is None:
            return f"{sent}; best effort: no acknowledgements"
        if self.acknowledged:
            return (f"{sent}; all acknowledged by {self.subscribers} subscriber"
                    f"{'s' if self.subscribers != 1 else ''}")
        return (f"{sent}; NOT all acknowledged within the --ack-timeout ({self.subscribers} "
                "subscribers at the end): a subscriber is slow or left")


def bag_items(source: BagSource, image_out: str, label_out: str | None = None,
              start_offset: float = 0.0) -> list[ReplayItem]:
    """The messages to replay, in record-time order, frames before ``start_offset`` seconds
    (from the first image) left out. Labels go along when ``label_out`` is given."""
    if start_offset < 0:
        raise ConfigError(f"--start-offset must be >= 0 seconds, got {start_offset}")
    first = source.records[0].log_time
    begin = first + int(start_offset * 1e9)
    items: list[ReplayItem] = []
    # As recorded (a player replays record order, like ros2 bag play); ``frame`` is the
    # frame's position in the source's reading order.
    for i in sorted(range(len(source)), key=lambda i: source.index[i].record):
        if source.index[i].log_time < begin:
            continue
        conn, log_time, raw = source.raw_image(i)
        items.append(ReplayItem(image_out, conn.msgtype, raw, log_time, i))
    if label_out is not None and source.label_topic is not None:
        items += _label_items(source, label_out, begin)
    if not items:
        raise InputError(f"nothing to replay: the bag's images end before --start-offset "
                         f"{start_offset} s")
    return sorted(items, key=lambda item: item.log_time)   # stable: record order on ties


def _label_items(source: BagSource, label_out: str, begin: int) -> list[ReplayItem]:
    frame_of = {entry.stamp: i for i, entry in enumerate(source.index)}
    out = []
    for stamp, log_time in source.label_log_times.items():
        if log_time >= begin and stamp in frame_of:
            raw = source.raw_label(stamp)
            if raw is not None:
                out.append(ReplayItem(label_out, IMAGE_TYPE, raw, log_time, frame_of[stamp]))
    return out


def schedule(items: Sequence[ReplayItem], rate: float) -> Iterator[tuple[float, ReplayItem]]:
    """(seconds after the start, item): the recorded gaps divided by ``rate``."""
    if rate <= 0:
        raise ConfigError(f"--rate must be > 0, got {rate}")
    first = items[0].log_time
    for item in items:
        yield (item.log_time - first) / 1e9 / rate, item


def play(items: Sequence[ReplayItem], publish: PublishFn, rate: float = 1.0, loops: int = 1,
         stop: threading.Event | None = None) -> ReplayStats:
    """Publish ``items`` with their recorded timing; ``loops`` 0 repeats until ``stop``.

    Waiting uses ``stop.wait(timeout)``, so a set ``stop`` ends the replay at once.
    """
    stop = stop or threading.Event()
    published, loop = 0, 0
    times: dict[int, float] = {}
    started = time.monotonic()
    while (loops == 0 or loop < loops) and not stop.is_set():
        loop_start = time.monotonic()
        for offset, item in schedule(items, rate):
            delay = loop_start + offset - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            publish(item.topic, item.raw, item.frame)
            if item.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE) and item.topic == items[0].topic:
                times[item.frame] = time.monotonic()
            published += 1
        loop += 1
    return ReplayStats(published, loop, time.monotonic() - started, times)


def localhost_only() -> None:
    """Keep DDS discovery on this machine (set before rclpy creates its context)."""
    from ditta_ros.ros.dds import keep_dds_local

    keep_dds_local()


class RosPublisher:
    """rclpy publishers for the replayed topics, in a private context (own domain id)."""

    def __init__(self, topics: dict[str, str], reliable: bool = True, depth: int = 10,
                 domain_id: int | None = None, node_name: str = "ditta_replay") -> None:
        localhost_only()
        import rclpy
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self._rclpy = rclpy
        self.reliable = reliable
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(node_name, context=self.context)
        # Reliable: keep all, so a replay faster than its subscriber queues messages instead
        # of overwriting unacknowledged ones (depth then only sizes the first allocation).
        qos = (QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=depth,
                          reliability=ReliabilityPolicy.RELIABLE) if reliable
               else QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT))
        types = {IMAGE_TYPE: Image, COMPRESSED_TYPE: CompressedImage}
        self.publishers: dict[str, Any] = {
            topic: self.node.create_publisher(types[msgtype], topic, qos)
            for topic, msgtype in topics.items()}

    def publish(self, topic: str, raw: bytes, frame: int) -> None:
        # The recorded CDR bytes go out unchanged: stamps, encodings and data are the bag's.
        self.publishers[topic].publish(raw)

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every publisher has ``count`` subscribers."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self.publishers.values()):
                return True
            pause.wait(0.02)       # discovery has no event to wait on in rclpy
        return False

    def subscribers(self) -> int:
        """The fewest subscribers of any replayed topic."""
        return min((p.get_subscription_count() for p in self.publishers.values()), default=0)

    def wait_for_acks(self, timeout: float) -> bool | None:
        """Until every subscriber acknowledged every message (reliable; None: best effort),
        at most ``timeout`` s in all."""
        if not self.reliable:
            return None
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        return all(p.wait_for_all_acked(Duration(seconds=max(deadline - time.monotonic(), 0.0)))
                   for p in self.publishers.values())

    def close(self) -> None:
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


def replay(bag: Path, topic: str, image_topic: str | None = None,
           label_topic: str | None = None, label_out: str | None = None, rate: float = 1.0,
           start_offset: float = 0.0, loops: int = 1, reliable: bool = True,
           domain_id: int | None = None, wait_subscribers: int = 1,
           wait_timeout: float = 10.0, stop: threading.Event | None = None,
           ack_timeout: float = 10.0) -> ReplayStats:
    """Replay ``bag``'s image topic on ``topic`` (and its labels on ``label_out``).

    Waits for ``wait_subscribers`` subscribers per topic first (0: start at once), and,
    reliable, up to ``ack_timeout`` s for every message to be acknowledged before closing.
    """
    with BagSource(bag, image_topic, label_topic) as source:
        items = bag_items(source, topic, label_out, start_offset)
        topics = {topic: source.image_type}
        if label_out is not None and label_topic is not None:
            topics[label_out] = IMAGE_TYPE
    publisher = RosPublisher(topics, reliable, domain_id=domain_id)
    try:
        if wait_subscribers and not publisher.wait_for_subscribers(wait_subscribers,
                                                                   wait_timeout):
            raise InputError(f"fewer than {wait_subscribers} subscriber(s) on "
                             f"{', '.join(topics)} after {wait_timeout} s; start the consumer "
                             "first (same ROS_DOMAIN_ID), raise --wait-timeout, or pass "
                             "--wait-subscribers 0 to publish to whoever listens")
        stats = play(items, publisher.publish, rate, loops, stop)
        acked = publisher.wait_for_acks(ack_timeout)
        return dataclasses.replace(stats, acknowledged=acked,
                                   subscribers=publisher.subscribers())
    finally:
        publisher.close()


class _Parser(argparse.ArgumentParser):
    """One-line errors: a short usage line, then ``ditta-replay: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"usage: {self.format_usage().split(':', 1)[-1].strip()} (--help for "
                     f"all options)\n{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ditta-replay",
        usage="%(prog)s BAG [--topic TOPIC] [options]",
        description="Publish a bag's image topic (and optionally its label topic) as live ROS 2 "
                    "topics with the recorded timing and header stamps. DDS stays on this "
                    "machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).")
    p.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or mcap) or its data file")
    p.add_argument("--image-topic", help="image topic in the bag (default: the only one)")
    p.add_argument("--topic", default="/image",
                   help="live topic to publish the images on (default /image, ditta_node's "
                        "raw input; /image/compressed for its compressed transport)")
    p.add_argument("--label-topic", help="label topic in the bag to publish along")
    p.add_argument("--label-out", help="live topic for the labels (needs --label-topic)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
    p.add_argument("--start-offset", type=float, default=0.0,
                   help="skip the first seconds of the bag")
    p.add_argument("--loop", action="store_true", help="repeat until interrupted")
    p.add_argument("--best-effort", action="store_true",
                   help="publish best effort (default: reliable, which also reaches best "
                        "effort subscribers)")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: the environment's)")
    p.add_argument("--wait-subscribers", type=int, default=1,
                   help="wait for this many subscribers per topic before the first message "
                        "(default 1; 0 starts at once and frames sent during discovery are "
                        "lost)")
    p.add_argument("--wait-timeout", type=float, default=30.0,
                   help="seconds to wait for subscribers")
    p.add_argument("--ack-timeout", type=float, default=10.0,
                   help="reliable: seconds to wait, after the last message, until every "
                        "subscriber acknowledged every message (default 10)")
    return p


def _flag_mistake(args: argparse.Namespace) -> str:
    """What is wrong with the flags (one line naming the flag), or ""."""
    if args.label_out and not args.label_topic:
        return "--label-out needs --label-topic (the labels' topic in the bag)"
    for flag in ("rate", "wait_timeout", "ack_timeout"):
        if getattr(args, flag) <= 0:
            return f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}"
    if args.wait_subscribers < 0:
        return f"--wait-subscribers must be >= 0, got {args.wait_subscribers}"
    if args.start_offset < 0:
        return f"--start-offset must be >= 0 seconds, got {args.start_offset}"
    return ""


def main(argv: list[str] | None = None) -> int:
    """``ditta-replay``; errors become one line on stderr and exit code 2."""
    p = parser()
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        mistake = _flag_mistake(args)
        if mistake:
            p.error(mistake)
    except SystemExit as exc:          # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    stop = threading.Event()
    try:
        stats = replay(args.bag, args.topic, args.image_topic, args.label_topic, args.label_out,
                       args.rate, args.start_offset, 0 if args.loop else 1,
                       not args.best_effort, args.domain_id, args.wait_subscribers,
                       args.wait_timeout, stop, args.ack_timeout)
    except KeyboardInterrupt:
        stop.set()
        return 0
    except DittaError as exc:
        print(f"ditta-replay: error: {exc}", file=sys.stderr)
        return 2
    print(f"ditta-replay: {stats.describe()}")
    return 0 if stats.acknowledged is not False else 1


if __name__ == "__main__":
    sys.exit(main())
