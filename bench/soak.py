"""Soak: ditta_node fed at a camera rate for a long time; memory and latency over time.

Not part of CI (10 minutes by default; quick: 1 minute). ditta_node runs in its own process
over real DDS (``bench/node_harness.py``; input QoS reliable by default, see
``--input-reliability`` and ``--large-shm``), in its steady state (ADAPTED, loaded adaptation)
or, with ``--adapt-live``, starting from the warm-up so that one real adaptation (random
SAM2 hiera-t teacher) happens during the soak. Frames (640 x 480 by default) are offered at
a fixed camera rate; every ``--window`` seconds a row is recorded:

elapsed s, min and max node RSS MiB in the window (``/proc``, sampled each second), frames
offered and label images received in the window,
median and max end-to-end latency (input stamp -> labels received) in the window, phase.

Writes ``bench/results/soak.csv``, ``soak.png`` (matplotlib: RSS and latency over time),
``soak.json`` and ``soak.md``.

Usage: ``python bench/soak.py [--quick] [--rate 10] [--duration 600] [--adapt-live]``
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import memory_growth, offer  # noqa: E402
from bench_node import send_sequential, synthetic_frames  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
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

COLUMNS = ("elapsed_s", "rss_min_mib", "rss_max_mib", "offered", "received",
           "latency_median_ms", "latency_max_ms", "phase")


class Recorder:
    """Samples the node's RSS each second and writes one row of the record per window."""

    def __init__(self, camera: Camera, node: NodeProcess, window_s: float) -> None:
        self.camera, self.node, self.window_s = camera, node, window_s
        self.rows: list[dict[str, Any]] = []
        self.samples: list[tuple[float, int]] = []     # (elapsed s, RSS bytes) every second
        self._window_rss: list[int] = []
        self._next_row = window_s
        self._last_wall = time.time()
        self._last_count = 0

    def tick(self, elapsed: float) -> None:
        rss = self.node.rss()
        if rss is not None:
            self.samples.append((elapsed, rss))
            self._window_rss.append(rss)
        if elapsed >= self._next_row:
            self._row(elapsed)
            self._next_row += self.window_s

    def _row(self, elapsed: float) -> None:
        wall = time.time()
        arrivals = [(s, r) for s, r in self.camera.labels.since(self._last_wall) if r < wall]
        lat = [1000.0 * (r - s / 1e9) for s, r in arrivals]
        status = self.camera.latest_status()
        sent = self.camera.sent_count
        rss = self._window_rss or [0]
        self.rows.append({
            "elapsed_s": round(elapsed, 2),
            "rss_min_mib": round(min(rss) / 2**20, 1), "rss_max_mib": round(max(rss) / 2**20, 1),
            "offered": sent - self._last_count, "received": len(lat),
            "latency_median_ms": round(median(lat), 1) if lat else None,
            "latency_max_ms": round(max(lat), 1) if lat else None,
            "phase": "" if status is None else status.phase_label})
        self._last_wall, self._last_count, self._window_rss = wall, sent, []


def run_soak(size: tuple[int, int], rate_hz: float, duration_s: float, window_s: float, *,
             device: str = "cpu", variant: str = "tiny", num_classes: int = 124,
             embed_dim: int = 256, adapt_live: bool = False, warmup_frames: int = 10,
             startup_timeout: float = 300.0, input_reliability: str = "reliable",
             fit: tuple[int, int] | None = None) -> dict[str, Any]:
    """The soak itself; returns the rows and a summary (the importable core)."""
    h, w = size
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        folder = Path(tmp)
        extra: dict[str, Any] = {"model.fit_long": max(fit), "model.fit_short": min(fit)} \
            if fit else {}
        if adapt_live:
            # A random-init ISS model is nowhere confident: prompt at each class's peak.
            extra.update({"adaptation.warmup_frames": warmup_frames,
                          "adaptation.iterations": 1, "teacher.reliability_threshold": 0.0})
        params = node_parameters(
            variant=variant, num_classes=num_classes, embed_dim=embed_dim, device=device,
            adaptation_file="" if adapt_live else str(folder / "adaptation.pt"),
            input_reliability=input_reliability, extra=extra)
        if not adapt_live:
            write_adaptation_file(folder / "adaptation.pt", params)
        camera = Camera(reliability=input_reliability)
        node = NodeProcess(params, folder)
        try:
            wait_active(camera, node, "warmup" if adapt_live else "adapted", startup_timeout)
            messages = [camera.image(f) for f in synthetic_frames(h, w, 4)]
            if not adapt_live:
                send_sequential(camera, messages, 2, 120.0)
            recorder = Recorder(camera, node, window_s)
            sent = offer(camera, messages, rate_hz, duration_s, recorder.tick, 1.0)
            node.check_alive()
            final = camera.latest_status()
        finally:
            node.stop()
            camera.close()
    rows = recorder.rows
    samples = recorder.samples
    latencies = [r["latency_median_ms"] for r in rows if r["latency_median_ms"] is not None]
    summary: dict[str, Any] = {
        "frame": [h, w], "rate_hz": rate_hz, "duration_s": sent["seconds"],
        "offered": len(sent["stamps"]), "received": sum(r["received"] for r in rows),
        "camera_missed_slots": sent["missed_slots"],
        "latency_window_median_ms": median(latencies) if latencies else None,
        "latency_window_p90_ms": percentile(latencies, 90) if latencies else None,
        "latency_max_ms": max((r["latency_max_ms"] for r in rows
                               if r["latency_max_ms"] is not None), default=None),
        "final_phase": None if final is None else final.phase_label,
        "adapt_live": adapt_live}
    summary.update(memory_growth(samples, 0.25, window_s=max(window_s, 30.0)))
    return {"summary": summary, "rows": rows, "params": params,
            "rss_samples": [(round(t, 2), r) for t, r in samples]}


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["elapsed_s"] for r in rows]
    fig, (ax_mem, ax_lat) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_mem.fill_between(t, [r["rss_min_mib"] for r in rows], [r["rss_max_mib"] for r in rows],
                        color="tab:blue", alpha=0.3, label="min-max in window")
    ax_mem.plot(t, [r["rss_max_mib"] for r in rows], color="tab:blue", label="max in window")
    ax_mem.legend()
    ax_mem.set_ylabel("node RSS (MiB)")
    ax_mem.set_title(title)
    ax_mem.grid(alpha=0.3)
    med = [r["latency_median_ms"] if r["latency_median_ms"] is not None else float("nan")
           for r in rows]
    top = [r["latency_max_ms"] if r["latency_max_ms"] is not None else float("nan")
           for r in rows]
    ax_lat.plot(t, med, label="median in window", color="tab:green")
    ax_lat.plot(t, top, label="max in window", color="tab:red", alpha=0.6)
    ax_lat.set_ylabel("end-to-end latency (ms)")
    ax_lat.set_xlabel("elapsed (s)")
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_markdown(result: dict[str, Any]) -> str:
    s = result["bench"]["summary"]
    p = result["bench"]["params"]
    lines = [machine_line(result["machine"]),
             f"Command: `{result['command']}` ({result['date']})", "",
             f"Soak: {s['frame'][1]} x {s['frame'][0]} frames offered at {s['rate_hz']:g} Hz "
             f"for {s['duration_s']:.0f} s to ditta_node (own process, real DDS, input QoS "
             f"{p['input_reliability']}), "
             f"model {p['model.variant']} (random init), {p['model.num_classes']} classes; "
             + ("live warm-up and adaptation during the soak" if s["adapt_live"]
                else "steady state ADAPTED") + f"; final phase {s['final_phase']}. "
             "Memory growth after the first quarter. Plot: soak.png, record: soak.csv.", ""]
    lines.append(markdown_table(
        ["offered", "labels received", "latency (median of window medians) ms",
         "p90 of window medians ms", "max ms", "RSS after warm-up MiB", "RSS max MiB",
         "RSS peak growth MiB", "slope of 30 s peaks MiB/min"],
        [[s["offered"], s["received"], fmt(s["latency_window_median_ms"], 0),
          fmt(s["latency_window_p90_ms"], 0), fmt(s["latency_max_ms"], 0),
          fmt(s["rss_after_warmup_mib"], 0), fmt(s["rss_max_mib"], 0),
          fmt(s["peak_growth_mib"], 1), fmt(s["slope_mib_per_min"], 2)]]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--size", type=parse_size, default=(480, 640), help="frame size HxW")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds (default 600, quick 60)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per recorded row")
    parser.add_argument("--adapt-live", action="store_true",
                        help="start from the warm-up: one real adaptation during the soak")
    parser.add_argument("--warmup-frames", type=int, default=10,
                        help="warm-up length with --adapt-live")
    parser.add_argument("--input-reliability", choices=("reliable", "best_effort"),
                        default="reliable",
                        help="input QoS of the node and the camera (best_effort needs "
                             "--large-shm for raw images of 640 x 480 and up)")
    parser.add_argument("--variant", default="tiny", help="MiT size of the random ISS model")
    parser.add_argument("--num-classes", type=int, default=124, help="classes (VSPW: 124)")
    parser.add_argument("--embed-dim", type=int, default=256, help="decoder width D")
    parser.add_argument("--large-shm", action="store_true",
                        help="Fast DDS over shared memory only with a 32 MiB segment "
                             "(config/fastdds_large_shm.xml); needed for best-effort raw images "
                             "of 640 x 480 and up with Fast DDS's defaults")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 600.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    if args.large_shm:
        use_large_shm()
    result: dict[str, Any] = {"machine": machine_info(device),
                              "command": command_line("bench/soak.py", argv),
                              "date": now_utc()}
    result["bench"] = run_soak(args.size, args.rate, args.duration, args.window,
                               device=args.device, variant=args.variant,
                               num_classes=args.num_classes, embed_dim=args.embed_dim,
                               adapt_live=args.adapt_live, warmup_frames=args.warmup_frames,
                               input_reliability=args.input_reliability)
    out = args.out if args.out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result["bench"]["rows"], out / "soak.csv")
    write_plot(result["bench"]["rows"], out / "soak.png",
               f"ditta_node soak, {args.rate:g} Hz, {args.size[1]} x {args.size[0]}")
    markdown = to_markdown(result)
    write_results("soak", result, markdown, out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
