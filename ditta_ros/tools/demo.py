"""ditta-demo: the real ditta_node over real DDS on a synthetic camera, outputs to a folder.

    ditta-demo                                  # seeded random tiny models (says so loudly)
    ditta-demo --segformer /models/segformer.pt --sam2-checkpoint /models/sam2_hiera_l.pt \\
        --sam2-config configs/sam2/sam2_hiera_l.yaml --device cuda

A camera node publishes ``ditta_ros.synthetic.SyntheticVideo`` frames at ``--rate``; the
node (in this process, its own DDS domain, kept on this machine) warms up, adapts and serves.
The demo shows the phases on a progress bar and writes into ``--out``: ``labels/*.png``
(colour labels), ``overlay/*.png``, ``labels.mp4`` and ``overlay.mp4`` (when OpenCV can write
MP4), ``status.jsonl`` (every ~/status message), ``summary.json`` and ``summary.md`` (measured
latency and throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BANNER = """
############################################################################
#  DEMO WITH RANDOM WEIGHTS: no --segformer / --sam2-checkpoint given.     #
#  The SegFormer and SAM2 are seeded random-init models: the labels mean   #
#  nothing. This run shows the node's data path, phases and timing only.   #
#  Pass real checkpoints (see --help) for real segmentation.               #
############################################################################
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ditta-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("ditta_demo"), help="output folder")
    p.add_argument("--frames", type=int, default=60, help="frames to stream at least")
    p.add_argument("--after", type=int, default=15,
                   help="frames to stream after adaptation ended (the stream goes on until "
                        "then, bounded by --max-seconds)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop streaming after this")
    p.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    p.add_argument("--height", type=int, default=96, help="synthetic frame height")
    p.add_argument("--width", type=int, default=128, help="synthetic frame width")
    p.add_argument("--classes", type=int, default=4, help="synthetic classes (random models)")
    p.add_argument("--seed", type=int, default=0, help="synthetic video and random weights")
    p.add_argument("--warmup", type=int, default=10, help="warm-up frames")
    p.add_argument("--iterations", type=int, default=2, help="adaptation passes")
    p.add_argument("--segformer", default="", help="SegFormer checkpoint (.pt or HF directory)")
    p.add_argument("--sam2-checkpoint", default="", help="SAM2 .pt checkpoint")
    p.add_argument("--sam2-config", default="", help="SAM2 config name in the sam2 package "
                   "(default: hiera-t for random weights, the node default otherwise)")
    p.add_argument("--image-size", type=int, default=0,
                   help="SAM2 image size (default: 256 random, 1024 with a checkpoint)")
    p.add_argument("--class-set", default="", help="classes parameter (default: vspw)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--no-video", action="store_true", help="write PNGs only, no MP4")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID (default: from the environment, else 42)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.frames < 1 or args.warmup < 2:
        p.error("--rate must be > 0, --frames >= 1, --warmup >= 2")
    return args


def node_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The node's parameters for this run (random tiny models unless weights are given)."""
    params: dict[str, Any] = {
        "adaptation.warmup_frames": args.warmup, "adaptation.iterations": args.iterations,
        "model.device": args.device, "input_reliability": "reliable", "input_depth": 10,
        "output_depth": 10, "status_rate": 5.0,
    }
    if args.class_set:
        params["classes"] = args.class_set
    if args.segformer:
        params["model.checkpoint"] = args.segformer
    else:
        long, short = max(args.height, args.width), min(args.height, args.width)
        params.update({"model.variant": "tiny", "model.num_classes": args.classes,
                       "model.embed_dim": 64, "model.seed": args.seed,
                       "model.fit_long": max(long, 32), "model.fit_short": max(short, 32)})
    random_sam2 = not args.sam2_checkpoint
    if not random_sam2:
        params["teacher.sam2_checkpoint"] = args.sam2_checkpoint
    if args.sam2_config or random_sam2:
        params["teacher.sam2_config"] = args.sam2_config or "configs/sam2.1/sam2.1_hiera_t.yaml"
    if args.image_size or random_sam2:
        params["teacher.image_size"] = args.image_size or 256
    if not args.segformer:
        # A random SegFormer is nowhere confident: prompt SAM2 at each class's peak anyway.
        params["teacher.reliability_threshold"] = 0.0
    return params


@dataclass
class Recorder:
    """Receives the node's outputs and writes them; thread-safe."""

    out: Path
    write_video: bool
    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)
    index_of: dict[tuple[int, int], int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)
    last_status: Any = None
    labels_received: int = 0
    _writers: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _status_file: Any = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        for sub in ("labels", "overlay"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self._status_file = (self.out / "status.jsonl").open("w", encoding="utf-8")

    def sent(self, header: Any, index: int) -> None:
        key = (header.stamp.sec, header.stamp.nanosec)
        with self._lock:
            self.sent_at[key] = time.perf_counter()
            self.index_of[key] = index

    def on_image(self, kind: str, msg: Any) -> None:
        import cv2

        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        bgr = pixels[:, :, ::-1] if msg.encoding == "rgb8" else pixels
        with self._lock:
            index = self.index_of.get(key, -1)
        cv2.imwrite(str(self.out / kind / f"{index:06d}.png"), np.ascontiguousarray(bgr))
        with self._lock:
            if kind == "labels":
                self.labels_received += 1
                sent = self.sent_at.pop(key, None)
                if sent is not None:
                    self.latencies.append(time.perf_counter() - sent)
            if self.write_video:
                self._video(kind, bgr)
        with self.changed:
            self.changed.notify_all()

    def _video(self, kind: str, bgr: np.ndarray) -> None:
        import cv2

        writer = self._writers.get(kind)
        if writer is None:
            path = self.out / f"{kind}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0,
                                     (bgr.shape[1], bgr.shape[0]))
            if not writer.isOpened():
                self.write_video = False
                print(f"note: OpenCV cannot write {path}; PNGs only", file=sys.stderr)
                return
            self._writers[kind] = writer
        writer.write(np.ascontiguousarray(bgr))

    def on_status(self, msg: Any) -> None:
        record = {name: _plain(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
        with self._lock:
            self._status_file.write(json.dumps(record) + "\n")
            self.last_status = msg
            if not self.phases or self.phases[-1][1] != msg.phase_label:
                self.phases.append((time.perf_counter(), msg.phase_label))
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.release()
            self._status_file.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "get_fields_and_field_types"):
        return {k: _plain(getattr(value, k)) for k in value.get_fields_and_field_types()}
    if isinstance(value, float) and value != value:
        return None  # NaN -> null in JSON
    return value


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Stream, record, summarise; returns the summary (also written to the output folder)."""
    from ditta_ros.ros.dds import keep_dds_local

    keep_dds_local()   # DDS stays on this machine
    if args.domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    os.environ.setdefault("ROS_DOMAIN_ID", "42")
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ditta_ros.msg import AdaptationStatus
    from ditta_ros.ros.image import array_to_image
    from ditta_ros.ros.node import DittaNode
    from ditta_ros.synthetic import SyntheticVideo

    params = node_parameters(args)
    args.out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out, write_video=not args.no_video)
    context = Context()
    rclpy.init(context=context, args=["--ros-args", *_param_args(params)])
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node = DittaNode(context=context, cli_args=["--ros-args", "-r", "image:=/camera/image_raw"])
    camera = rclpy.create_node("ditta_demo_camera", context=context)
    publisher = camera.create_publisher(Image, "/camera/image_raw", reliable)
    camera.create_subscription(AdaptationStatus, "/ditta_node/status", recorder.on_status, 50)
    for kind in ("labels", "overlay"):
        topic = "labels_color" if kind == "labels" else kind
        camera.create_subscription(Image, f"/ditta_node/{topic}",
                                   lambda m, k=kind: recorder.on_image(k, m), reliable)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    executor.add_node(camera)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        start = time.perf_counter()
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS or \
                node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"the node did not start: {node.status_message().message}")
        load_s = time.perf_counter() - start
        video = SyntheticVideo(args.height, args.width, max(args.classes, 2), seed=args.seed)
        sent, stream_s = _stream(args, video, publisher, camera.get_clock(), recorder,
                                 array_to_image)
        _wait_for_last(node, recorder, sent, timeout=15.0)
        counts = node.status_message()
    finally:
        # Stop spinning before the shutdown transition destroys the node's timers and
        # publishers: destroying them under a spinning executor raises in its thread.
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.trigger_shutdown()
        node.destroy_node()
        camera.destroy_node()
        rclpy.try_shutdown(context=context)
        recorder.close()
    return _summarise(args, params, recorder, counts, sent, stream_s, load_s)


def _param_args(params: dict[str, Any]) -> list[str]:
    out = []
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out += ["-p", f"{name}:={text}"]
    return out


def _stream(args: argparse.Namespace, video: Any, publisher: Any, clock: Any,
            recorder: Recorder, to_image: Any) -> tuple[int, float]:
    """Publish frames at args.rate until enough were sent and adaptation ended (+after)."""
    from std_msgs.msg import Header
    from tqdm import tqdm

    period = 1.0 / args.rate
    pace = threading.Event()            # never set: waits on it pace the camera at args.rate
    start = time.perf_counter()
    finished_at: int | None = None
    t = 0
    bar = tqdm(desc="ditta-demo", unit="frame", dynamic_ncols=True)
    while True:
        header = Header(frame_id="demo_camera", stamp=clock.now().to_msg())
        recorder.sent(header, t)
        publisher.publish(to_image(video.frame(t).image, "bgr8", header))
        t += 1
        status = recorder.last_status
        phase = status.phase_label if status is not None else "?"
        bar.set_postfix_str(_status_line(status), refresh=False)
        bar.update(1)
        if finished_at is None and phase in ("adapted", "failed"):
            finished_at = t
        elapsed = time.perf_counter() - start
        done = t >= args.frames and finished_at is not None and t - finished_at >= args.after
        if done or elapsed > args.max_seconds:
            break
        pace.wait(max(0.0, start + t * period - time.perf_counter()))
    bar.close()
    return t, time.perf_counter() - start


def _status_line(status: Any) -> str:
    if status is None:
        return "waiting for the node"
    text = f"{status.phase_label}"
    if status.phase_label == "warmup":
        text += f" {status.warmup_frames_collected}/{status.warmup_frames_target}"
    elif status.phase_label == "adapting":
        text += f" {100 * status.adaptation_progress:.0f}%"
    return text + f" | dropped {status.frames_dropped} | serving {status.serving}"


def _wait_for_last(node: Any, recorder: Recorder, sent: int, timeout: float) -> None:
    """Wait until the node accounted for every sent frame and its labels arrived here (each
    received label image notifies; the 0.2 s wake-ups re-read the node's counters)."""
    deadline = time.perf_counter() + timeout
    with recorder.changed:
        while time.perf_counter() < deadline:
            s = node.status_message()
            if s.frames_received >= sent and s.frames_received == (
                    s.frames_processed + s.frames_dropped + s.frames_rejected) \
                    and recorder.labels_received >= s.frames_processed:
                return
            recorder.changed.wait(timeout=0.2)


def _summarise(args: argparse.Namespace, params: dict[str, Any], recorder: Recorder,
               counts: Any, sent: int, stream_s: float, load_s: float) -> dict[str, Any]:
    lat = np.array(recorder.latencies) * 1000.0
    start = recorder.phases[0][0] if recorder.phases else 0.0
    summary = {
        "random_weights": not (args.segformer and args.sam2_checkpoint),
        "parameters": params,
        "frames_sent": sent, "frames_received": int(counts.frames_received),
        "frames_processed": int(counts.frames_processed),
        "frames_dropped": int(counts.frames_dropped),
        "frames_rejected": int(counts.frames_rejected),
        "labels_received": recorder.labels_received,
        "stream_seconds": round(stream_s, 3), "configure_seconds": round(load_s, 3),
        "throughput_fps": round(recorder.labels_received / stream_s, 3) if stream_s else 0.0,
        "latency_ms": ({"mean": float(lat.mean()), "median": float(np.median(lat)),
                        "p95": float(np.percentile(lat, 95)), "count": int(lat.size)}
                       if lat.size else None),
        "phases": [{"phase": p, "at_s": round(t - start, 3)} for t, p in recorder.phases],
        "final_phase": counts.phase_label, "final_message": counts.message,
        "sam2_objects": int(counts.sam2_objects),
        "stage_seconds": {k: _plain(float(getattr(counts, f"stage_{k.lower()}_seconds")))
                          for k in "ABC"},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(s: dict[str, Any]) -> str:
    lat = s["latency_ms"] or {"mean": float("nan"), "median": float("nan"),
                              "p95": float("nan"), "count": 0}
    lines = [
        "# ditta-demo summary", "",
        "**Random weights: labels are meaningless.**" if s["random_weights"] else
        "Real weights.", "",
        "| measure | value |", "|---|---|",
        f"| frames sent / processed / dropped / rejected | {s['frames_sent']} / "
        f"{s['frames_processed']} / {s['frames_dropped']} / {s['frames_rejected']} |",
        f"| throughput (label images per second) | {s['throughput_fps']:.2f} |",
        f"| end-to-end latency mean / median / p95 (ms) | {lat['mean']:.1f} / "
        f"{lat['median']:.1f} / {lat['p95']:.1f} |",
        f"| configure (model loading) | {s['configure_seconds']:.1f} s |",
        f"| final phase | {s['final_phase']} ({s['sam2_objects']} SAM2 objects) |",
        "", "Phases: " + " -> ".join(f"{p['phase']} ({p['at_s']:.1f} s)" for p in s["phases"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.segformer and args.sam2_checkpoint):
        print(BANNER, file=sys.stderr)
    try:
        summary = run_demo(args)
    except Exception as err:  # noqa: BLE001 - console boundary: one line, exit code 2
        print(f"ditta-demo: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(_markdown(summary))
    print(f"outputs in {args.out.resolve()}")
    return 0 if summary["frames_processed"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
