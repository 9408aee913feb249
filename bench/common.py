"""Shared helpers of the bench suite: timing, memory, machine description, result files.

Memory is read from ``/proc`` (no psutil): the resident set (VmRSS) of any process, and the
peak resident set (VmHWM) of this process, which ``PeakMemory`` resets through
``/proc/self/clear_refs`` before a measured call. On CUDA the allocator's own peak
(``torch.cuda.max_memory_allocated``) is used instead.

Every bench script writes ``bench/results/<name>.json`` and ``<name>.md`` through
:func:`write_results` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Run as a script from anywhere: the source tree's ditta_ros first (it extends its path to
# the installed copy, which holds the generated messages).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return float(statistics.median(values)) if len(values) else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, NaN for no values."""
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when the baseline is zero or missing."""
    return value / baseline if baseline and baseline == baseline else float("nan")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat_times(fn: Callable[[], Any], repeats: int, device: torch.device,
                 warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` unmeasured ones."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- memory


def _status_kib(key: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process (``/proc/<pid>/status`` VmRSS), None if unreadable."""
    kib = _status_kib("VmRSS", pid)
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set size of a process (VmHWM), None if unreadable."""
    kib = _status_kib("VmHWM", pid)
    return None if kib is None else kib * 1024


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


class PeakMemory:
    """Peak memory of a measured block above what was resident when it started.

    CUDA: ``max_memory_allocated`` above ``memory_allocated`` at :meth:`reset`. CPU: this
    process's VmHWM above VmRSS at :meth:`reset` (VmHWM is reset to VmRSS by writing 5 to
    ``/proc/self/clear_refs``; freed heap pages are handed back first with malloc_trim, so
    a block that reuses them is counted too). None where neither is available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = device.type == "cpu" and Path("/proc/self/clear_refs").exists()
        self._base = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_ok:
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.cpu_ok = False
                return
            self._base = rss_bytes() or 0

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self._base)
        if self.cpu_ok:
            peak = peak_rss_bytes()
            return None if peak is None else max(0, peak - self._base)
        return None


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int | None]:
    """Run ``fn`` once: (its result, wall seconds, peak bytes above the start)."""
    memory = PeakMemory(device)
    memory.reset()
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, memory.peak_bytes()


def mib(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was at the start."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()], "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f" ({info['gpu']})" if info.get("gpu") else ""
    return (f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
            f"({info['torch_threads']} threads), Python {info['python']}, device "
            f"{info['device']}{gpu}; load average at start {info['load_average'][0]:.1f} "
            f"(1 min), {info['load_average'][1]:.1f} (5 min).")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *args])


# ----------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def write_results(name: str, result: dict[str, Any], markdown: str,
                  out: Path | None = None) -> Path:
    """Write ``<out>/<name>.json`` and ``<name>.md``; returns the JSON path."""
    folder = out if out is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(markdown + "\n")
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


# ----------------------------------------------------------------------------- arguments


def parse_size(text: str) -> tuple[int, int]:
    """'480x854' (height x width) -> (480, 854)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 480x640, got "
                                         f"{text!r}") from exc
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="torch device: cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="the short variant for a loaded CPU (fewer sizes and repeats)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads in this process (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the JSON and Markdown results (default {RESULTS})")


def setup_device(args: argparse.Namespace) -> torch.device:
    """The torch device of ``--device``; exits with a clear message when it is unusable."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"--device {args.device!r} is not a torch device ({exc}); use cpu, "
                         "cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; "
                         "use --device cpu")
    return device


def ros_environment() -> None:
    """DDS stays on this machine, on a domain of this run's own (call before rclpy loads)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if (Path(sys.prefix) / "share" / "ament_index").is_dir() and sys.prefix not in prefixes:
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([*prefixes, sys.prefix])
