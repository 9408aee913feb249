"""Stage C: time per step and peak memory at a real frame size (default 480 x 854, B5).

Runs ``adapt`` (live + momentum model, AdamW, both losses) on a few synthetic warm-up
frames with hand-made stage A/B targets (two objects per frame, so the contrastive term
runs), ``--iterations`` passes, at the given precision. Reports the seconds of each step
and the peak memory of the process above its resident set before the adaptation (CPU:
VmHWM, reset through /proc/self/clear_refs; CUDA: max_memory_allocated). The batch-2 steps
(frame t > 0: the clip (t-1, t)) are the largest.

Usage: ``python bench/bench_stage_c.py [--variant b5] [--frames 2] [--iterations 1]
[--precision fp32] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditta_ros.config import AdaptationConfig, ModelConfig  # noqa: E402
from ditta_ros.engine.adapt import adapt  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.types import StepLosses, Targets  # noqa: E402
from ditta_ros.synthetic import SyntheticVideo  # noqa: E402


def _kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="b5")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--frame-size", default="480x854")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.frame_size.split("x"))
    device = torch.device(args.device)
    config = ModelConfig(variant=args.variant, num_classes=124, embed_dim=768
                         if args.variant == "b5" else 256, precision=args.precision)
    model = build_model(config, device)
    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=1)
    shots = [video.frame(t) for t in range(args.frames)]
    frames = [s.image for s in shots]
    labels = np.stack([s.labels.astype(np.int64) % 124 for s in shots])      # stage A
    ids = np.zeros((args.frames, height, width), np.int32)                   # stage B
    ids[:, : height // 2, : width // 2] = 1
    ids[:, height // 2:, width // 2:] = 2
    targets = Targets(ids, np.array([1, 2], np.int32), np.array([3, 5], np.int64),
                      np.zeros((2, 124), np.float32))
    steps: list[tuple[float, StepLosses]] = []
    last = [time.perf_counter()]

    def on_step(s: StepLosses) -> None:
        now = time.perf_counter()
        steps.append((now - last[0], s))
        last[0] = now

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _kib("VmRSS") * 1024
    start = time.perf_counter()
    last[0] = start
    adapt(model, frames, labels, targets, config,
          AdaptationConfig(iterations=args.iterations), device, on_step=on_step)
    total = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _kib("VmHWM") * 1024 - base
    print(f"stage C, {args.variant} (D = {config.embed_dim}), {height} x {width}, "
          f"{args.frames} frames x {args.iterations} passes, {args.precision}, "
          f"{torch.get_num_threads()} threads, device {device}; load average "
          f"{os.getloadavg()[0]:.1f}")
    for seconds, s in steps:
        print(f"  step {s.step} (frame {s.frame}, batch {2 if s.frame else 1}): "
              f"{seconds:.1f} s, loss {s.total:.4f}")
    print(f"total {total:.1f} s; peak memory above the resident set before: "
          f"{peak / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
