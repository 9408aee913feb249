"""Throughput under load: frames offered faster than ditta_node processes them (issue 7).

First the node's processing rate is measured: frames sent one at a time (each after the
previous frame's last output, ``~/confidence``, arrived), rate = 1 / median time from the
input stamp to that last output. Then frames are offered at
2 x and 10 x that rate for a fixed time (60 s; quick 15 s) with a steady clock (a frame is
skipped, not queued, when the camera itself falls behind; counted as not offered). Reported
per load:

- processed rate (label images received per second) and its ratio to the measured rate;
- drop share = 1 - processed / offered (the node's latest-frame-wins slot drops frames it
  cannot take; best-effort DDS may drop some before the node: both count) and the node's own
  accounting from ``~/status`` (received, processed, dropped);
- resident memory (VmRSS of the node process, from ``/proc``) sampled each second; after
  the warm-up (the first quarter of the run): peak of the second half minus peak of the
  first half, and the slope of the 5 s window peaks (goal: no growth);
- end-to-end latency of the processed frames (median, p90).

The node runs in its own process in its steady state (ADAPTED), over real DDS; see
``bench/node_harness.py``.

Usage: ``python bench/bench_load.py [--quick] [--device cpu|cuda] [--size 480x640]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_node import send_sequential, synthetic_frames  # noqa: E402
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
    use_large_shm,
    wait_active,
    write_adaptation_file,
)


def offer(camera: Camera, messages: Sequence[Any], rate_hz: float, duration_s: float,
          on_tick: Callable[[float], None] | None = None,
          tick_s: float = 1.0) -> dict[str, Any]:
    """Publish at ``rate_hz`` for ``duration_s`` on a fixed schedule; ``on_tick(elapsed)``
    about every ``tick_s``. Returns the stamps sent and the slots the camera missed."""
    period = 1.0 / rate_hz
    wake = threading.Event()        # never set: a timed wait that the schedule drives
    start = time.monotonic()
    next_tick = 0.0
    stamps: list[int] = []
    missed = 0
    slot = 0
    while True:
        now = time.monotonic() - start
        if now >= duration_s:
            break
        if on_tick is not None and now >= next_tick:
            on_tick(now)
            next_tick += tick_s
            continue
        due = slot * period
        if now < due:
            wake.wait(min(due, next_tick if on_tick is not None else due) - now)
            continue
        late = int((now - due) / period)          # slots the camera itself fell behind on
        missed += late
        slot += late
        stamps.append(camera.send(messages[slot % len(messages)]))
        slot += 1
    return {"stamps": stamps, "missed_slots": missed, "seconds": time.monotonic() - start}


def memory_growth(samples: Sequence[tuple[float, int]], warmup_share: float,
                  window_s: float = 5.0) -> dict[str, float | None]:
    """RSS growth after the warm-up (``warmup_share`` of the run).

    The resident set swings by the transient tensors of each frame (hundreds of MiB with 124
    classes at frame size), so single samples are noisy. Reported: the peak of the second
    half of the post-warm-up samples minus the peak of the first half (a leak raises every
    peak), the slope (MiB per minute) of a least-squares line through the per-window peaks,
    and first/last/max samples.
    """
    empty: dict[str, float | None] = {
        "rss_after_warmup_mib": None, "rss_end_mib": None, "rss_max_mib": None,
        "growth_mib": None, "peak_growth_mib": None, "slope_mib_per_min": None}
    if len(samples) < 4:
        return empty
    end = samples[-1][0]
    post = [(t, r / 2**20) for t, r in samples if t >= warmup_share * end]
    if len(post) < 4:
        return empty
    half = len(post) // 2
    first, second = post[:half], post[half:]
    peaks: dict[int, tuple[float, float]] = {}     # window -> (time of its peak, peak)
    for t, r in post:
        key = int(t // window_s)
        if key not in peaks or r > peaks[key][1]:
            peaks[key] = (t, r)
    slope = 0.0
    if len(peaks) >= 2:
        x = np.array([v[0] for v in peaks.values()])
        y = np.array([v[1] for v in peaks.values()])
        slope = float(np.polyfit(x, y, 1)[0] * 60.0)
    return {"rss_after_warmup_mib": post[0][1], "rss_end_mib": post[-1][1],
            "rss_max_mib": max(r for _, r in post), "growth_mib": post[-1][1] - post[0][1],
            "peak_growth_mib": max(r for _, r in second) - max(r for _, r in first),
            "slope_mib_per_min": slope}


def run_load(camera: Camera, node: NodeProcess, messages: Sequence[Any], rate_hz: float,
             duration_s: float, warmup_share: float = 0.25) -> dict[str, Any]:
    """One load level: offer, sample RSS, then account for every frame."""
    before = camera.latest_status()
    received_before = camera.labels.count()
    samples: list[tuple[float, int]] = []

    def tick(elapsed: float) -> None:
        rss = node.rss()
        if rss is not None:
            samples.append((elapsed, rss))

    wall0 = time.time()
    sent = offer(camera, messages, rate_hz, duration_s, tick)
    last = sent["stamps"][-1] if sent["stamps"] else None
    if last is not None:        # the last frame in flight: give it time to come back
        camera.labels.wait(last, 30.0)
    camera.wait_status(lambda m: m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                       > time.time() - 0.5, 5.0)
    after = camera.latest_status()
    arrivals = dict(camera.labels.since(wall0))
    latencies = [arrivals[s] - s / 1e9 for s in sent["stamps"] if s in arrivals]
    offered = len(sent["stamps"])
    processed = len(latencies)
    out: dict[str, Any] = {
        "offered_hz_target": rate_hz, "seconds": sent["seconds"], "offered": offered,
        "offered_hz": offered / sent["seconds"], "camera_missed_slots": sent["missed_slots"],
        "processed": processed, "processed_hz": processed / sent["seconds"],
        "drop_share": 1.0 - processed / offered if offered else float("nan"),
        "latency_ms": median(latencies) * 1000.0 if latencies else float("nan"),
        "latency_p90_ms": percentile(latencies, 90) * 1000.0 if latencies else float("nan"),
        "labels_other": camera.labels.count() - received_before - processed,
        "rss_samples": [(round(t, 2), r) for t, r in samples],
    }
    if before is not None and after is not None:
        out["node_counts"] = {k: int(getattr(after, f"frames_{k}") - getattr(before,
                                                                           f"frames_{k}"))
                              for k in ("received", "processed", "dropped", "rejected")}
    out.update(memory_growth(samples, warmup_share))
    return out


def run_load_bench(size: tuple[int, int], factors: Sequence[float], duration_s: float, *,
                   device: str = "cpu", variant: str = "tiny", num_classes: int = 124,
                   embed_dim: int = 256, calibration_frames: int = 5,
                   input_reliability: str = "reliable", startup_timeout: float = 300.0,
                   fit: tuple[int, int] | None = None) -> dict[str, Any]:
    """Measure the processing rate, then run each load factor; the importable core."""
    h, w = size
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        folder = Path(tmp)
        params = node_parameters(variant=variant, num_classes=num_classes, embed_dim=embed_dim,
                                 device=device, adaptation_file=str(folder / "adaptation.pt"),
                                 input_reliability=input_reliability,
                                 extra=({"model.fit_long": max(fit), "model.fit_short": min(fit)}
                                        if fit else None))
        write_adaptation_file(folder / "adaptation.pt", params)
        camera = Camera(reliability=input_reliability)
        node = NodeProcess(params, folder)
        try:
            wait_active(camera, node, "adapted", startup_timeout)
            messages = [camera.image(f) for f in synthetic_frames(h, w, 4)]
            send_sequential(camera, messages, 2, 120.0, wait_all=True)      # warm the node
            calib = send_sequential(camera, messages, calibration_frames, 120.0, wait_all=True)
            # One frame's whole cycle: until its last output (~/confidence) is out.
            e2e = [camera.last_output.arrivals[s] - s / 1e9 for s, _ in calib
                   if s in camera.last_output.arrivals]
            rate = 1.0 / median(e2e)
            levels = []
            for factor in factors:
                level = run_load(camera, node, messages, factor * rate, duration_s)
                level["factor"] = factor
                level["processed_over_rate"] = level["processed_hz"] / rate
                levels.append(level)
                node.check_alive()
        finally:
            node.stop()
            camera.close()
    return {"frame": [h, w], "processing_rate_hz": rate, "calibration_e2e_s": e2e,
            "duration_s": duration_s, "levels": levels, "params": params}


def to_markdown(result: dict[str, Any]) -> str:
    b = result["bench"]
    p = b["params"]
    shm = ", Fast DDS shared memory only, 32 MiB segment" if result.get("large_shm") else ""
    lines = [machine_line(result["machine"]),
             f"Command: `{result['command']}` ({result['date']})", "",
             f"Load on ditta_node (own process, real DDS, input QoS {p['input_reliability']} "
             f"depth 1{shm}), {b['frame'][1]} x {b['frame'][0]} frames, model {p['model.variant']} "
             f"(random init), {p['model.num_classes']} classes, phase ADAPTED. Processing rate "
             f"measured first (frames one at a time): {b['processing_rate_hz']:.2f} Hz. Each "
             f"load runs {b['duration_s']:.0f} s; memory growth is measured after the first "
             "quarter (warm-up): peak of the second half minus peak of the first half, and "
             "the slope of the 5 s window peaks.", ""]
    rows = []
    for lv in b["levels"]:
        counts = lv.get("node_counts", {})
        rows.append([f"{lv['factor']:g} x", fmt(lv["offered_hz"], 2), fmt(lv["processed_hz"], 2),
                     fmt(lv["processed_over_rate"], 2), f"{100 * lv['drop_share']:.1f} %",
                     f"{counts.get('received', 'n/a')} / {counts.get('processed', 'n/a')} / "
                     f"{counts.get('dropped', 'n/a')}",
                     fmt(lv["latency_ms"], 0), fmt(lv["latency_p90_ms"], 0),
                     fmt(lv["rss_max_mib"], 0), fmt(lv["peak_growth_mib"], 1),
                     fmt(lv["slope_mib_per_min"], 1)])
    lines.append(markdown_table(
        ["offered", "offered Hz", "processed Hz", "x processing rate", "drop share",
         "node received / processed / dropped", "latency ms", "latency p90 ms",
         "RSS max MiB", "RSS peak growth MiB", "slope of window peaks MiB/min"], rows))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--size", type=parse_size, default=(480, 640), help="frame size HxW")
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 10.0],
                        help="offered rate as multiples of the processing rate")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per load (default 60, quick 15)")
    parser.add_argument("--variant", default="tiny", help="MiT size of the random ISS model")
    parser.add_argument("--num-classes", type=int, default=124, help="classes (VSPW: 124)")
    parser.add_argument("--embed-dim", type=int, default=256, help="decoder width D")
    parser.add_argument("--input-reliability", choices=("reliable", "best_effort"),
                        default="reliable",
                        help="input QoS of the node and the camera (best_effort needs "
                             "--large-shm for raw images of 640 x 480 and up)")
    parser.add_argument("--large-shm", action="store_true",
                        help="Fast DDS over shared memory only with a 32 MiB segment "
                             "(config/fastdds_large_shm.xml); needed for best-effort raw images "
                             "of 640 x 480 and up with Fast DDS's defaults")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    if args.large_shm:
        use_large_shm()
    result: dict[str, Any] = {"machine": machine_info(device),
                              "command": command_line("bench/bench_load.py", argv),
                              "date": now_utc()}
    result["large_shm"] = args.large_shm
    result["bench"] = run_load_bench(args.size, args.factors, args.duration, device=args.device,
                                     variant=args.variant, num_classes=args.num_classes,
                                     embed_dim=args.embed_dim,
                                     input_reliability=args.input_reliability)
    markdown = to_markdown(result)
    write_results("bench_load", result, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
