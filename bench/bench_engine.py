"""Engine benchmark: stage D per-frame cost and the adaptation time split.

Per frame (B0-sized random SegFormer, 124 classes, 480 x 854 frames -> 480 x 864 network
input), measured in one run, interleaved, as medians over repeats and ratios to ISS:

- ``iss``: the ISS model alone (plain branch, softmax, labels at frame size);
- ``stream``: DiTTA streaming inference (previous frame's F and L cached, add-on + fusion);
- ``clip``: the research code's way, the (t-1, t) pair through the whole network per frame.

Peak memory per mode: CUDA ``max_memory_allocated``; CPU the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs before each call, after malloc_trim so that
freed heap pages are returned first) above the resident set at the reset. The add-on
alone is also measured at several map sizes to show its memory is O(hw).

Adaptation split (stages A / B / C) for 10 warm-up frames with the tiny models: tiny
SegFormer and a random SAM2 hiera-t at a small image size.

Usage: ``python bench/bench_engine.py [--quick] [--device cpu|cuda] [--out DIR]``. Writes
Markdown and JSON (default ``bench/results/``) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# Run as a script from anywhere: the source tree's ditta_ros, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditta_ros.config import AdaptationConfig, DittaConfig, FusionConfig, ModelConfig, TeacherConfig
from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.fusion import StreamPredictor, clip_output, frame_output
from ditta_ros.engine.model import DittaModel
from ditta_ros.engine.output_stage import OutputBuffers
from ditta_ros.engine.precision import autocast
from ditta_ros.engine.preprocess import prepare
from ditta_ros.engine.runner import run_w2f
from ditta_ros.synthetic import SyntheticVideo

MODES = ("iss", "stream", "clip")


# ----------------------------------------------------------------------------- measuring


def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


class PeakMemory:
    """Peak memory of one call: CUDA allocator peak, or the CPU resident-set high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = device.type == "cpu" and Path("/proc/self/clear_refs").exists()
        self._base = 0

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.cpu_ok:
            if _LIBC is not None:
                _LIBC.malloc_trim(0)              # hand freed heap pages back: count reuse too
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                      # reset VmHWM to the current VmRSS
            self._base = self._status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self._base)
        if self.cpu_ok:
            return self._status_kib("VmHWM") * 1024 - self._base
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, memory: PeakMemory
          ) -> tuple[float, int | None]:
    memory.reset()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start, memory.peak_bytes()


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ----------------------------------------------------------------------------- per frame


def bench_per_frame(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    height, width = args.frame_size
    model_config = ModelConfig(variant=args.variant, num_classes=args.num_classes,
                               embed_dim=args.embed_dim, device=str(device),
                               precision=args.precision)
    fusion = FusionConfig()
    model = build_model(model_config, device)
    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=0)
    total = args.warmup + args.repeats + 1
    frames = [video.frame(t).image for t in range(total)]
    iss = StreamPredictor(model, model_config, fusion, device, use_addon=False)
    stream = StreamPredictor(model, model_config, fusion, device, use_addon=True)
    stream.prime(frames[0])
    memory = PeakMemory(device)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    peaks: dict[str, list[int]] = {m: [] for m in MODES}
    for i in range(1, total):
        prev, frame = frames[i - 1], frames[i]
        calls: dict[str, Callable[[], Any]] = {
            "iss": partial(iss.predict, frame),
            "stream": partial(stream.predict, frame),    # the cache holds frame i - 1
            "clip": partial(_clip_labels, model, prev, frame, model_config, fusion, device),
        }
        order = MODES[i % 3:] + MODES[:i % 3]             # rotate: no mode always first
        for mode in order:
            seconds, peak = timed(calls[mode], device, memory)
            if i > args.warmup:
                times[mode].append(seconds)
                if peak is not None:
                    peaks[mode].append(peak)
    med = {m: _median(times[m]) for m in MODES}
    out: dict[str, Any] = {
        "model": f"{args.variant} (random init), {args.num_classes} classes, D = "
                 f"{args.embed_dim}",
        "frame": [height, width], "input": list(prepare(frames[0]).shape[1:]),
        "repeats": args.repeats, "warmup_repeats": args.warmup,
        "median_s": med, "ratio_to_iss": {m: med[m] / med["iss"] for m in MODES},
        "all_s": times,
        "peak_bytes": {m: max(peaks[m]) if peaks[m] else None for m in MODES},
        "precision": args.precision, "output_stage": stream.output_stage((height, width)),
    }
    out["components"] = bench_components(model, model_config, fusion, frames, device,
                                         max(3, args.repeats // 2))
    return out


def _clip_labels(model: DittaModel, prev: np.ndarray, frame: np.ndarray,
                 model_config: ModelConfig, fusion: FusionConfig,
                 device: torch.device) -> np.ndarray:
    return clip_output(model, prev, frame, model_config, fusion, device).labels.cpu().numpy()


def _output_labels(logits: torch.Tensor, addon: torch.Tensor | None, input_hw: tuple[int, int],
                   frame_hw: tuple[int, int], tau: float, buffers: OutputBuffers) -> np.ndarray:
    return frame_output(logits, addon, input_hw, frame_hw, tau,
                        buffers=buffers).labels.cpu().numpy()


def _at_precision(precision: str, device: torch.device, fn: Callable[..., Any],
                  *args: Any) -> Any:
    with autocast(device, precision):
        return fn(*args)


def bench_components(model: DittaModel, model_config: ModelConfig, fusion: FusionConfig,
                     frames: list[np.ndarray], device: torch.device,
                     repeats: int) -> dict[str, float]:
    """Median seconds of the parts of one streaming frame."""
    frame_hw = (int(frames[0].shape[0]), int(frames[0].shape[1]))
    parts: dict[str, list[float]] = {"prepare": [], "network": [], "addon": [],
                                     "output_plain": [], "output_fused": []}
    memory = PeakMemory(torch.device("meta"))        # timing only: measures no memory
    # Kept from frame to frame as a stream keeps them (StreamPredictor): a fresh set per
    # call would time the first-frame allocation of ~0.4 GB instead of the output stage.
    plain_buffers, fused_buffers = OutputBuffers(), OutputBuffers()
    with torch.inference_mode():
        x = torch.from_numpy(prepare(frames[0])).unsqueeze(0).to(device)
        f_prev, l_prev = model.iss.forward_features(x)
        input_hw = (int(x.shape[2]), int(x.shape[3]))
        for r in range(repeats + 1):
            frame = frames[1 + r % (len(frames) - 1)]
            t: dict[str, float] = {}
            start = time.perf_counter()
            x = torch.from_numpy(prepare(frame)).unsqueeze(0).to(device)
            t["prepare"] = time.perf_counter() - start
            # The network and the add-on at model.precision, as StreamPredictor runs them.
            t["network"], _ = timed(partial(_at_precision, model_config.precision, device,
                                            model.iss.forward_features, x), device, memory)
            feats, logits = _at_precision(model_config.precision, device,
                                          model.iss.forward_features, x)
            t["addon"], _ = timed(partial(_at_precision, model_config.precision, device,
                                          model.addon, feats, f_prev, l_prev), device, memory)
            addon = _at_precision(model_config.precision, device, model.addon, feats, f_prev,
                                  l_prev)
            t["output_plain"], _ = timed(
                partial(_output_labels, logits, None, input_hw, frame_hw, fusion.tau,
                        plain_buffers), device, memory)
            t["output_fused"], _ = timed(
                partial(_output_labels, logits, addon, input_hw, frame_hw, fusion.tau,
                        fused_buffers), device, memory)
            if r > 0:                                     # the first round warms up
                for k, v in t.items():
                    parts[k].append(v)
    return {k: _median(v) for k, v in parts.items()}


def bench_addon_memory(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Peak memory and time of the add-on alone at several 1/4-resolution map sizes."""
    model = build_model(ModelConfig(variant="tiny", num_classes=args.num_classes,
                                    embed_dim=args.embed_dim), device)
    memory = PeakMemory(device)
    rows = []
    for h, w in args.addon_sizes:
        gen = torch.Generator().manual_seed(0)
        f_cur = torch.randn(1, args.embed_dim, h, w, generator=gen).to(device)
        f_prev = torch.randn(1, args.embed_dim, h, w, generator=gen).to(device)
        l_prev = torch.randn(1, args.num_classes, h, w, generator=gen).to(device)
        with torch.inference_mode():
            model.addon(f_cur, f_prev, l_prev)            # warm-up
            seconds, peak = timed(partial(model.addon, f_cur, f_prev, l_prev), device, memory)
        hw = h * w
        rows.append({"map": [h, w], "input": [4 * h, 4 * w], "seconds": seconds,
                     "peak_bytes": peak, "bytes_per_pixel": (peak / hw) if peak else None,
                     "dense_attention_bytes": 4 * hw * hw})
    return rows


# ----------------------------------------------------------------------------- adaptation


def bench_adaptation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from ditta_ros.engine.sam2_teacher import build_sam2_teacher

    height, width = args.adapt_frame_size
    config = DittaConfig(
        model=ModelConfig(variant="tiny", num_classes=args.num_classes,
                          embed_dim=args.embed_dim, fit_long=max(height, width),
                          fit_short=min(height, width), device=str(device),
                          precision=args.precision),
        teacher=TeacherConfig(sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
                              image_size=args.sam2_image_size),
        adaptation=AdaptationConfig(iterations=5))
    model = build_model(config.model, device)
    # A random-init classifier gives near-uniform outputs: no pixel reaches the paper's
    # reliability threshold 0.8 and stage B would find nothing. Scaling the classifier
    # mimics a trained model's confidence, so stages B and C do their real amount of work.
    with torch.no_grad():
        model.iss.model.decode_head.classifier.weight.mul_(1000.0)
    start = time.perf_counter()
    teacher = build_sam2_teacher(config.teacher, device, num_classes=args.num_classes,
                                 precision=args.precision)
    build_s = time.perf_counter() - start
    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=1)
    frames = [video.frame(t).image for t in range(args.warmup_frames + 1)]
    run = run_w2f(model, teacher, frames, config, warmup=args.warmup_frames)
    list(run)
    s = run.summary
    return {"warmup_frames": args.warmup_frames, "frame": [height, width],
            "precision": args.precision,
            "sam2": f"hiera-t (random init), image size {args.sam2_image_size}",
            "iss": f"tiny (random init, classifier x1000), {args.num_classes} classes",
            "iterations": config.adaptation.iterations, "num_objects": s.num_objects,
            "adapted": s.adapted, "reason": s.reason, "sam2_build_s": build_s,
            "stage_s": {k: s.stage_seconds.get(k) for k in ("A", "B", "C")}}


# ----------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average": list(os.getloadavg()), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), device {m['device']}"
             + (f" ({m['gpu']})" if "gpu" in m else "")
             + f"; load average at start {m['load_average'][0]:.1f}.",
             f"Command: `{result['command']}` ({result['date']})", ""]
    pf = result.get("per_frame")
    if pf:
        lines += [f"Per frame: {pf['model']}; frame {pf['frame'][0]} x {pf['frame'][1]}, "
                  f"network input {pf['input'][0]} x {pf['input'][1]}; precision "
                  f"{pf['precision']}; output stage {pf['output_stage']}; median of "
                  f"{pf['repeats']} interleaved repeats.", "",
                  "| mode | median s/frame | x ISS | peak memory above resident |",
                  "|---|---|---|---|"]
        names = {"iss": "ISS alone", "stream": "DiTTA streaming (cached)",
                 "clip": "DiTTA uncached (t-1, t) clip"}
        for mode in MODES:
            lines.append(f"| {names[mode]} | {pf['median_s'][mode]:.3f} | "
                         f"{pf['ratio_to_iss'][mode]:.2f} | "
                         f"{_mib(pf['peak_bytes'][mode])} |")
        c = pf["components"]
        lines += ["", "Parts of one streaming frame (median s): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in c.items()), ""]
    rows = result.get("addon_memory")
    if rows:
        lines += ["Add-on alone (windowed attention, r = 5):", "",
                  "| map (1/4) | network input | s | peak memory | bytes / pixel | dense "
                  "hw x hw scores would need |", "|---|---|---|---|---|---|"]
        for r in rows:
            bpp = "n/a" if r["bytes_per_pixel"] is None else f"{r['bytes_per_pixel']:.0f}"
            lines.append(f"| {r['map'][0]} x {r['map'][1]} | {r['input'][0]} x "
                         f"{r['input'][1]} | {r['seconds']:.3f} | {_mib(r['peak_bytes'])} | "
                         f"{bpp} | {_mib(r['dense_attention_bytes'])} |")
        lines.append("")
    ad = result.get("adaptation")
    if ad:
        st = ad["stage_s"]
        fmt = {k: ("n/a" if v is None else f"{v:.2f}") for k, v in st.items()}
        lines += [f"Adaptation on {ad['warmup_frames']} warm-up frames of {ad['frame'][0]} x "
                  f"{ad['frame'][1]}: ISS {ad['iss']}; SAM2 {ad['sam2']}; "
                  f"{ad['iterations']} passes; {ad['num_objects']} objects; {ad['reason']}; "
                  f"precision {ad['precision']}.",
                  "", "| stage A (ISS labels) | stage B (SAM2 teacher) | stage C (adaptation) |",
                  "|---|---|---|", f"| {fmt['A']} s | {fmt['B']} s | {fmt['C']} s |", ""]
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from exc
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, smaller SAM2 and add-on sizes (about 5 min on 2 cores)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--variant", default="b0", help="MiT size of the per-frame model")
    p.add_argument("--num-classes", type=int, default=124, help="classes (VSPW: 124)")
    p.add_argument("--embed-dim", type=int, default=256, help="decoder width D")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="model.precision of the per-frame and adaptation models")
    p.add_argument("--frame-size", type=_size, default=(480, 854),
                   help="per-frame benchmark frame size HxW")
    p.add_argument("--repeats", type=int, default=None,
                   help="measured frames per mode (default 15, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured first frames per mode")
    p.add_argument("--warmup-frames", type=int, default=10, help="adaptation warm-up length")
    p.add_argument("--adapt-frame-size", type=_size, default=(120, 214),
                   help="adaptation benchmark frame size HxW")
    p.add_argument("--sam2-image-size", type=int, default=None,
                   help="SAM2 image size (default 512, quick 256)")
    p.add_argument("--skip", action="append", default=[],
                   choices=("per_frame", "addon_memory", "adaptation"),
                   help="skip a part (repeatable)")
    p.add_argument("--out", type=Path, default=Path("bench/results"),
                   help="folder for bench_engine.md and bench_engine.json")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.sam2_image_size is None:
        args.sam2_image_size = 256 if args.quick else 512
    args.addon_sizes = [(60, 108), (120, 216)] + ([] if args.quick else [(240, 432)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "command": " ".join(["python", "bench/bench_engine.py"]
                            + (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    parts: dict[str, Callable[[argparse.Namespace, torch.device], Any]] = {
        "per_frame": bench_per_frame, "addon_memory": bench_addon_memory,
        "adaptation": bench_adaptation}
    for name, fn in parts.items():
        if name in args.skip:
            continue
        start = time.perf_counter()
        result[name] = fn(args, device)
        print(f"[bench] {name} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    markdown = to_markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_engine.md").write_text(markdown + "\n")
    (args.out / "bench_engine.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
