"""model.precision: fp32 against bf16 (or fp16) per streaming frame, in one run.

For a random-init SegFormer of the given size (124 classes, 480 x 854 frames), times the
parts of one streaming frame (network, add-on, frame-size output) and the whole ISS-alone and
DiTTA streaming frames at each precision, interleaved, medians over repeats; and compares the
labels each precision serves (DiTTA streaming, same frames): the share of pixels equal to
fp32's. Two models: the random-init one (every label a near tie: logits ~1e-3 apart, so
rounding decides labels and agreement is low by construction) and the same model with its
classifier and add-on query/key scaled (confident outputs, as a trained model's).

Whether the CPU has bf16 matrix units (AMX, avx512_bf16) is printed: without them torch
runs bf16 matrix products through conversions and they are slower than fp32.

Usage: ``python bench/bench_precision.py [--variant b0] [--threads 1] [--repeats 3]
[--precision bf16]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditta_ros.config import FusionConfig, ModelConfig  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.fusion import StreamPredictor  # noqa: E402
from ditta_ros.engine.model import DittaModel  # noqa: E402
from ditta_ros.engine.output_stage import frame_output  # noqa: E402
from ditta_ros.engine.precision import autocast, cpu_flags  # noqa: E402
from ditta_ros.engine.preprocess import prepare  # noqa: E402
from ditta_ros.synthetic import SyntheticVideo  # noqa: E402


def sharpen(model: DittaModel) -> DittaModel:
    with torch.no_grad():
        model.iss.model.decode_head.classifier.weight.mul_(1000.0)
        for mlp in (model.addon.mlp_q, model.addon.mlp_k):
            mlp[2].weight.mul_(30.0)
    return model


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parts(model: DittaModel, frames: list[np.ndarray], precision: str) -> dict[str, float]:
    """Seconds of the parts of one streaming frame at ``precision`` (one measurement)."""
    frame_hw = (int(frames[1].shape[0]), int(frames[1].shape[1]))
    x0 = torch.from_numpy(prepare(frames[0])).unsqueeze(0)
    x = torch.from_numpy(prepare(frames[1])).unsqueeze(0)
    input_hw = (int(x.shape[2]), int(x.shape[3]))
    t: dict[str, float] = {}
    with torch.inference_mode(), autocast("cpu", precision):
        prev = model.iss.forward_features(x0)
        start = time.perf_counter()
        feats, logits = model.iss.forward_features(x)
        t["network"] = time.perf_counter() - start
        start = time.perf_counter()
        addon = model.addon(feats, prev.features, prev.logits)
        t["add-on"] = time.perf_counter() - start
    with torch.inference_mode():
        t["output (fused)"] = _time(partial(frame_output, logits, addon, input_hw, frame_hw,
                                            0.8))
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="b0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (0: agreement only)")
    p.add_argument("--frames", type=int, default=4, help="frames compared for agreement")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--frame-size", default="480x854")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.frame_size.split("x"))
    flags = cpu_flags() or frozenset()
    units = sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"})
    print(f"CPU bf16/AMX flags: {units or 'none'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, capability "
          f"{torch.backends.cpu.get_cpu_capability()}; load average {os.getloadavg()[0]:.1f}")
    precisions = ("fp32", args.precision)
    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=0)
    frames = [video.frame(t).image for t in range(max(args.frames, 2) + 1)]
    fusion = FusionConfig()
    for kind in ("random init", "confident (scaled classifier)"):
        base = build_model(ModelConfig(variant=args.variant, num_classes=124, embed_dim=256),
                           "cpu")
        model = sharpen(base) if kind.startswith("confident") else base
        served: dict[str, list[np.ndarray]] = {}
        for prec in precisions:
            config = ModelConfig(variant=args.variant, num_classes=124, embed_dim=256,
                                 precision=prec)
            stream = StreamPredictor(model, config, fusion, "cpu", use_addon=True)
            stream.prime(frames[0])
            served[prec] = [stream.predict(f)[0] for f in frames[1:args.frames + 1]]
        same = float(np.mean([np.mean(a == b) for a, b in zip(*served.values())]))
        print(f"{args.variant}, {kind}: DiTTA streaming labels at {args.precision} equal "
              f"fp32's on {100 * same:.3f} % of {len(served['fp32'])} frames' pixels")
    if args.repeats < 1:
        return 0
    # speed (the random-init model; speed does not depend on the weights' values)
    model = build_model(ModelConfig(variant=args.variant, num_classes=124, embed_dim=256),
                        "cpu")
    split: dict[str, list[dict[str, float]]] = {prec: [] for prec in precisions}
    whole: dict[str, list[float]] = {}
    streams = {}
    for prec in precisions:
        config = ModelConfig(variant=args.variant, num_classes=124, embed_dim=256,
                             precision=prec)
        streams[f"ISS {prec}"] = StreamPredictor(model, config, fusion, "cpu", use_addon=False)
        streams[f"DiTTA {prec}"] = StreamPredictor(model, config, fusion, "cpu",
                                                   use_addon=True)
        streams[f"DiTTA {prec}"].prime(frames[0])
        whole[f"ISS {prec}"], whole[f"DiTTA {prec}"] = [], []
    names = list(streams)
    for r in range(args.repeats + 1):
        for prec in (precisions if r % 2 == 0 else precisions[::-1]):
            t = parts(model, frames, prec)
            if r > 0:
                split[prec].append(t)
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds = _time(partial(streams[name].predict, frames[1 + r % args.frames]))
            if r > 0:
                whole[name].append(seconds)
    print(f"\n{args.variant}, 1 frame {height} x {width}, median of {args.repeats} "
          f"(load average at end {os.getloadavg()[0]:.1f})\n")
    print(f"| part | fp32 s | {args.precision} s | speed-up |\n|---|---|---|---|")
    for part in split["fp32"][0]:
        a = statistics.median(s[part] for s in split["fp32"])
        b = statistics.median(s[part] for s in split[args.precision])
        print(f"| {part} | {a:.3f} | {b:.3f} | {a / b:.2f} x |")
    for kind in ("ISS", "DiTTA"):
        a = statistics.median(whole[f"{kind} fp32"])
        b = statistics.median(whole[f"{kind} {args.precision}"])
        print(f"| whole frame, {kind} | {a:.3f} | {b:.3f} | {a / b:.2f} x |")
    for prec in precisions:
        ratio = statistics.median(whole[f"DiTTA {prec}"]) / statistics.median(
            whole[f"ISS {prec}"])
        print(f"DiTTA / ISS at {prec}: {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
