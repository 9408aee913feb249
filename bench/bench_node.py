"""Node overhead: end-to-end latency minus model time, over real DDS (issue 7).

A camera node in this process publishes ``sensor_msgs/Image`` frames (bgr8) one at a time,
stamped with the wall clock just before ``publish``; ditta_node runs in its own process
(``bench/node_harness.py``: the real node and engine, steady state ADAPTED: adapted model,
add-on and fusion, every output on: labels, colour, overlay, confidence); a subscriber in
this process notes when each ``~/labels`` image arrives. For each frame:

- end-to-end = label arrival - input stamp;
- model time = ``Result.inference_s`` of that frame (what the node reports as
  ``AdaptationStatus.inference_ms``);
- overhead = end-to-end - model time: DDS in and out, hand-over to the worker, decoding,
  building and publishing the label image, scheduling.

The overhead is split into "before" (stamp -> session push starts: the camera's own
``publish()`` call (serialisation), DDS in, hand-over to the worker, decode; the camera's
``publish()`` time is also shown on its own) and "after" (push ends -> label arrival: the
label image built and published, DDS out; the colour, overlay and confidence images go out
after the labels).

Baseline, in the same run: a minimal relay node (``node_harness.relay``) on the same topics
and QoS that decodes each Image in its subscription callback and publishes a mono8 label
image of the frame's size with the input header: the floor of any Python ROS 2 node doing
this job. Its end-to-end time is the reference for the overhead (ratio overhead / relay).
Frames go one at a time: the next once the previous frame's labels and its last output
(``~/confidence``, published after labels, colour and overlay) have arrived, so no frame
waits behind another. The time to that last output is shown too.

Usage: ``python bench/bench_node.py [--quick] [--device cpu|cuda] [--sizes 480x640 1080x1920]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments,
    command_line,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    now_utc,
    parse_size,
    percentile,
    setup_device,
    write_results,
)
from node_harness import (  # noqa: E402
    Camera,
    NodeProcess,
    node_parameters,
    pair_records,
    use_large_shm,
    wait_active,
    write_adaptation_file,
)

GOAL_MS_640 = 10.0          # issue 7: overhead under 10 ms at 640 x 480 on this machine
GOAL_SHARE_GPU = 0.05       # issue 7: overhead under 5 % of model time on GPU-size models


def synthetic_frames(height: int, width: int, count: int, seed: int = 0) -> list[Any]:
    from ditta_ros.synthetic import SyntheticVideo

    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=seed)
    return [video.frame(t).image for t in range(count)]


def send_sequential(camera: Camera, messages: Sequence[Any], count: int,
                    timeout: float, wait_all: bool = False) -> list[tuple[int, float | None]]:
    """Send ``count`` frames one at a time, each once the previous labels came back; with
    ``wait_all`` once the previous frame's last output (~/confidence) came back too, so no
    frame waits while the node still builds the previous frame's other images."""
    sent: list[tuple[int, float | None]] = []
    for i in range(count):
        stamp = camera.send(messages[i % len(messages)])
        arrival = camera.labels.wait(stamp, timeout)
        sent.append((stamp, arrival))
        if wait_all and arrival is not None:
            camera.last_output.wait(stamp, timeout)
    return sent


def summarise(pairs: Sequence[dict[str, float]], sent: int,
              publish_s: Sequence[float] = ()) -> dict[str, Any]:
    def ms(key: str, q: float | None = None) -> float:
        values = [p[key] * 1000.0 for p in pairs]
        return median(values) if q is None else percentile(values, q)
    out: dict[str, Any] = {"frames_sent": sent, "frames_measured": len(pairs)}
    for key in ("e2e", "model", "overhead", "before", "after"):
        out[f"{key}_ms"] = ms(key)
    out["overhead_p90_ms"] = ms("overhead", 90)
    out["camera_publish_ms"] = median([1000.0 * v for v in publish_s])
    out["overhead_share_of_model"] = (out["overhead_ms"] / out["model_ms"]
                                      if out["model_ms"] else float("nan"))
    out["all_ms"] = {k: [round(p[k] * 1000.0, 3) for p in pairs]
                     for k in ("e2e", "model", "overhead")}
    return out


def measure_sizes(camera: Camera, sizes: Sequence[tuple[int, int]], frames: int, warmup: int,
                  timeout: float, node: NodeProcess, wait_all: bool = False
                  ) -> dict[tuple[int, int], list[tuple[int, float | None]]]:
    """(stamp, arrival) of ``frames`` measured frames per size, after ``warmup`` others."""
    sent: dict[tuple[int, int], list[tuple[int, float | None]]] = {}
    for h, w in sizes:
        messages = [camera.image(f) for f in synthetic_frames(h, w, 4)]
        send_sequential(camera, messages, warmup, timeout, wait_all)     # cache, allocator
        sent[(h, w)] = send_sequential(camera, messages, frames, timeout, wait_all)
        node.check_alive()
    return sent


def run_relay(sizes: Sequence[tuple[int, int]], frames: int, warmup: int, folder: Path,
              input_reliability: str, timeout: float) -> dict[tuple[int, int], float]:
    """Baseline: median end-to-end ms per size through the minimal relay node."""
    folder.mkdir(parents=True, exist_ok=True)
    camera = Camera(reliability=input_reliability, name="bench_camera_relay")
    relay = NodeProcess({}, folder, relay=input_reliability)
    try:
        if not camera.subscribers_ready(120.0):
            relay.check_alive()
            raise RuntimeError(f"the relay node did not subscribe:\n{relay.log_tail()}")
        sent = measure_sizes(camera, sizes, frames, max(1, warmup), timeout, relay)
    finally:
        relay.stop()
        camera.close()
    return {size: median([1000.0 * (r - s / 1e9) for s, r in rows if r is not None])
            for size, rows in sent.items()}


def run_node_bench(sizes: Sequence[tuple[int, int]], frames: int, warmup: int, *,
                   device: str = "cpu", variant: str = "tiny", num_classes: int = 124,
                   embed_dim: int = 256, sam2_image_size: int = 256,
                   input_reliability: str = "reliable", timeout: float = 120.0,
                   startup_timeout: float = 300.0, workdir: Path | None = None,
                   fit: tuple[int, int] | None = None, relay: bool = True) -> dict[str, Any]:
    """Measure the node's overhead at each frame size (HxW), then the relay baseline; the
    importable core."""
    with tempfile.TemporaryDirectory(prefix="bench_node_") as tmp:
        folder = workdir or Path(tmp)
        params = node_parameters(variant=variant, num_classes=num_classes,
                                 embed_dim=embed_dim, device=device,
                                 adaptation_file=str(folder / "adaptation.pt"),
                                 input_reliability=input_reliability,
                                 sam2_image_size=sam2_image_size,
                                 extra=({"model.fit_long": max(fit), "model.fit_short": min(fit)}
                                        if fit else None))
        write_adaptation_file(folder / "adaptation.pt", params)
        camera = Camera(reliability=input_reliability)
        camera.track_publish = True
        node = NodeProcess(params, folder)
        try:
            start = time.perf_counter()
            wait_active(camera, node, "adapted", startup_timeout)
            startup_s = time.perf_counter() - start
            sent = measure_sizes(camera, sizes, frames, warmup, timeout, node, wait_all=True)
            status = camera.latest_status()
            all_out = {size: [camera.last_output.arrivals.get(stamp) for stamp, _ in rows]
                       for size, rows in sent.items()}
        finally:
            records = node.stop()
            camera.close()
        floor = (run_relay(sizes, frames, warmup, folder / "relay", input_reliability, timeout)
                 if relay else {})
    rows = []
    for (h, w), s in sent.items():
        row = summarise(pair_records(s, records), len(s),
                        [camera.publish_s[stamp] for stamp, _ in s if stamp in camera.publish_s])
        row["frame"] = [h, w]
        row["lost"] = sum(1 for _, r in s if r is None)
        done = [1000.0 * (a - stamp / 1e9) for (stamp, _), a in zip(s, all_out[(h, w)])
                if a is not None]
        row["all_outputs_ms"] = median(done)
        row["relay_e2e_ms"] = floor.get((h, w))
        row["overhead_over_relay"] = (row["overhead_ms"] / floor[(h, w)]
                                      if floor.get((h, w)) else None)
        rows.append(row)
    return {"sizes": rows, "node_startup_s": startup_s, "params": params,
            "status_inference_ms": None if status is None else status.inference_ms,
            "status_latency_ms": None if status is None else status.latency_ms}


def to_markdown(result: dict[str, Any]) -> str:
    b = result["bench"]
    p = b["params"]
    shm = ", Fast DDS shared memory only, 32 MiB segment" if result.get("large_shm") else ""
    lines = [machine_line(result["machine"]), f"Command: `{result['command']}` "
             f"({result['date']})", "",
             f"Node overhead over real DDS (ditta_node in its own process, ROS_AUTOMATIC_"
             f"DISCOVERY_RANGE=LOCALHOST), model {p['model.variant']} SegFormer (random "
             f"init), {p['model.num_classes']} classes, D = {p['model.embed_dim']}, phase "
             f"ADAPTED (add-on + fusion), all four image outputs on, input QoS "
             f"{p['input_reliability']}{shm}; frames sent one at a time; medians over "
             f"{b['sizes'][0]['frames_measured'] if b['sizes'] else 0} frames per size. "
             "Baseline: a minimal relay node (decode the Image in the subscription callback, "
             "publish a same-size mono8 label image; no model, no worker thread), same "
             "frames and QoS, end-to-end.", ""]
    rows = []
    for r in b["sizes"]:
        goal = ""
        if r["frame"] == [480, 640]:
            goal = "yes" if r["overhead_ms"] < GOAL_MS_640 else "no"
        rows.append([f"{r['frame'][1]} x {r['frame'][0]}", fmt(r["e2e_ms"], 1),
                     fmt(r.get("all_outputs_ms"), 1),
                     fmt(r["model_ms"], 1), fmt(r["overhead_ms"], 1),
                     fmt(r["overhead_p90_ms"], 1), fmt(r["camera_publish_ms"], 1),
                     fmt(r["before_ms"], 1),
                     fmt(r["after_ms"], 1), f"{100 * r['overhead_share_of_model']:.1f} %",
                     fmt(r.get("relay_e2e_ms"), 1), fmt(r.get("overhead_over_relay"), 2),
                     goal or "-"])
    lines.append(markdown_table(
        ["frame (W x H)", "end-to-end ms", "all 4 outputs ms", "model ms", "overhead ms",
         "overhead p90 ms",
         "camera publish() ms", "of which before push", "of which after push",
         "overhead / model", "relay baseline ms", "overhead / relay",
         "< 10 ms at 640 x 480"], rows))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--sizes", type=parse_size, nargs="+",
                        default=[(480, 640), (1080, 1920)], help="frame sizes HxW")
    parser.add_argument("--frames", type=int, default=None,
                        help="measured frames per size (default 30, quick 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured frames per size")
    parser.add_argument("--variant", default="tiny", help="MiT size of the random ISS model")
    parser.add_argument("--num-classes", type=int, default=124, help="classes (VSPW: 124)")
    parser.add_argument("--embed-dim", type=int, default=256, help="decoder width D")
    parser.add_argument("--input-reliability", choices=("reliable", "best_effort"),
                        default="reliable", help="input QoS of the node and the camera")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for one frame's labels")
    parser.add_argument("--large-shm", action="store_true",
                        help="Fast DDS over shared memory only with a 32 MiB segment "
                             "(config/fastdds_large_shm.xml); needed for best-effort raw images "
                             "of 640 x 480 and up with Fast DDS's defaults")
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 10 if args.quick else 30
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    if args.large_shm:
        use_large_shm()
    result: dict[str, Any] = {"machine": machine_info(device),
                              "command": command_line("bench/bench_node.py", argv),
                              "date": now_utc()}
    result["large_shm"] = args.large_shm
    result["bench"] = run_node_bench(
        args.sizes, args.frames, args.warmup, device=args.device, variant=args.variant,
        num_classes=args.num_classes, embed_dim=args.embed_dim,
        input_reliability=args.input_reliability, timeout=args.timeout)
    markdown = to_markdown(result)
    write_results("bench_node", result, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
