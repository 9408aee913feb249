"""Adaptation cost: wall time and peak memory of stages A, B, C vs warm-up length and size.

For each frame size (e.g. 240 x 427 and 480 x 854) and warm-up length (10, 30, 60 frames;
quick: 10 and 30) the three stages run once on a synthetic clip, one after the other, as
the live session runs them:

- A: ISS labels and reliabilities of the warm-up frames (``reliability.iss_labels``);
- B: the SAM2 teacher's targets (prompt search, forward and backward propagation, voting,
  rendering; ``teacher.build_sam2_teacher`` with random hiera-t weights);
- C: test-time adaptation (``adapt.adapt``: distillation + contrastive, momentum model).

Models: a tiny SegFormer (random init) with 124 classes and D = 256 whose classifier is
scaled x1000: a random classifier is nowhere confident, so without the scaling no pixel
reaches the paper's reliability threshold 0.8 and stages B and C would do no work; scaled,
they do a trained model's amount of work. SAM2: hiera-t (random init) at a small square
image size. The ISS input is the frame size itself (fit sizes = frame size), so stage A and
C grow with the frame; SAM2 always sees image_size x image_size, so stage B grows with the
frame only through rendering and voting at frame size.

Peak memory: CPU, this process's peak resident set above the resident set at the stage's
start (``/proc``); CUDA, ``max_memory_allocated`` above the allocation at the start.
Ratios: each stage against the shortest warm-up at the same size, and against the smallest
frame at the same warm-up length, all in the same run.

Usage: ``python bench/bench_adaptation.py [--quick] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments,
    command_line,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    measure,
    mib,
    now_utc,
    parse_size,
    ratio,
    setup_device,
    write_results,
)

from ditta_ros.config import AdaptationConfig, DittaConfig, ModelConfig, TeacherConfig  # noqa: E402
from ditta_ros.engine.adapt import adapt  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.reliability import iss_labels  # noqa: E402
from ditta_ros.engine.sam2_teacher import build_sam2_teacher  # noqa: E402
from ditta_ros.synthetic import SyntheticVideo  # noqa: E402

STAGES = ("A", "B", "C")
CLASSIFIER_SCALE = 1000.0


def make_config(height: int, width: int, args: argparse.Namespace) -> DittaConfig:
    return DittaConfig(
        model=ModelConfig(variant=args.variant, num_classes=args.num_classes,
                          embed_dim=args.embed_dim, fit_long=max(height, width),
                          fit_short=min(height, width), device=str(args.device),
                          precision=getattr(args, "precision", "fp32")),
        teacher=TeacherConfig(sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
                              image_size=args.sam2_image_size,
                              max_objects=args.max_objects),
        adaptation=AdaptationConfig(iterations=args.iterations))


def run_case(height: int, width: int, frames_n: int, teacher: Any, config: DittaConfig,
             device: torch.device) -> dict[str, Any]:
    """Stages A, B, C once on ``frames_n`` synthetic frames of height x width."""
    model = build_model(config.model, device)
    with torch.no_grad():       # see the module doc: a trained model's confidence
        model.iss.model.decode_head.classifier.weight.mul_(CLASSIFIER_SCALE)
    video = SyntheticVideo(height, width, num_classes=8, num_shapes=4, seed=1)
    frames = [video.frame(t).image for t in range(frames_n)]
    (labels, rel), a_s, a_peak = measure(
        lambda: iss_labels(model, frames, config.model, device), device)
    targets, b_s, b_peak = measure(lambda: teacher.targets(frames, labels, rel), device)
    out: dict[str, Any] = {"frame": [height, width], "warmup_frames": frames_n,
                           "num_objects": targets.num_objects,
                           "seconds": {"A": a_s, "B": b_s, "C": None},
                           "peak_bytes": {"A": a_peak, "B": b_peak, "C": None},
                           "steps": 0}
    if targets.num_objects == 0:
        out["note"] = "stage B found no object: stage C does not run"
        return out
    steps: list[int] = []
    adapted, c_s, c_peak = measure(
        lambda: adapt(model, frames, labels, targets, config.model, config.adaptation,
                      device, on_step=lambda losses: steps.append(losses.step)), device)
    del adapted
    out["seconds"]["C"] = c_s
    out["peak_bytes"]["C"] = c_peak
    out["steps"] = len(steps)
    out["seconds_per_step_C"] = c_s / len(steps) if steps else None
    return out


def add_ratios(cases: list[dict[str, Any]]) -> None:
    """x (shortest warm-up, same size) and x (smallest frame, same warm-up), per stage."""
    for case in cases:
        same_size = [c for c in cases if c["frame"] == case["frame"]]
        base_len = min(same_size, key=lambda c: c["warmup_frames"])
        same_len = [c for c in cases if c["warmup_frames"] == case["warmup_frames"]]
        base_size = min(same_len, key=lambda c: c["frame"][0] * c["frame"][1])
        for key, base in (("x_length", base_len), ("x_size", base_size)):
            case[key] = {s: (None if case["seconds"][s] is None or base["seconds"][s] is None
                             else ratio(case["seconds"][s], base["seconds"][s]))
                         for s in STAGES}


def case_list(sizes: Sequence[tuple[int, int]], lengths: Sequence[int],
              full_grid: bool) -> list[tuple[int, int, int]]:
    """(h, w, frames) cases: every size x every length, or (full_grid False) every length
    at the first size plus every other size at the first length (the costly corner left
    out)."""
    if full_grid:
        return [(h, w, n) for h, w in sizes for n in lengths]
    h0, w0 = sizes[0]
    return [(h0, w0, n) for n in lengths] + [(h, w, lengths[0]) for h, w in sizes[1:]]


def run_adaptation_bench(sizes: Sequence[tuple[int, int]], lengths: Sequence[int],
                         args: argparse.Namespace, device: torch.device,
                         progress: bool = True, full_grid: bool = True) -> dict[str, Any]:
    """Every (size, length) case, the SAM2 teacher built once; the importable core."""
    start = time.perf_counter()
    teacher = build_sam2_teacher(make_config(*sizes[0], args).teacher, device,
                                 num_classes=args.num_classes,
                                 precision=getattr(args, "precision", "fp32"))
    build_s = time.perf_counter() - start
    cases = []
    for h, w, n in case_list(sizes, lengths, full_grid):
        t0 = time.perf_counter()
        cases.append(run_case(h, w, n, teacher, make_config(h, w, args), device))
        if progress:
            stages = ", ".join(f"{k} {fmt(cases[-1]['seconds'][k], 1)} s" for k in STAGES)
            print(f"[bench_adaptation] {h}x{w}, {n} frames: {time.perf_counter() - t0:.0f} s "
                  f"({stages})", file=sys.stderr, flush=True)
    add_ratios(cases)
    return {"cases": cases, "sam2_build_s": build_s, "full_grid": full_grid,
            "iss": f"{args.variant} SegFormer (random init, classifier x{CLASSIFIER_SCALE:g}), "
                   f"{args.num_classes} classes, D = {args.embed_dim}, input = frame size",
            "sam2": f"hiera-t (sam2.1_hiera_t config, random init), image size "
                    f"{args.sam2_image_size}, at most {args.max_objects} objects",
            "iterations": args.iterations, "precision": getattr(args, "precision", "fp32")}


def to_markdown(result: dict[str, Any]) -> str:
    b = result["bench"]
    lines = [machine_line(result["machine"]),
             f"Command: `{result['command']}` ({result['date']})", "",
             f"ISS: {b['iss']}. SAM2: {b['sam2']} (built once, {b['sam2_build_s']:.1f} s). "
             f"Stage C: {b['iterations']} pass(es) over the warm-up (one step per frame). "
             f"Precision {b.get('precision', 'fp32')} (model.precision: stages A, B, C). "
             "Cases: " + ("every size x every length" if b.get("full_grid", True) else
                          "every length at the first size, every size at the first length")
             + ". One run per case; x len = against the shortest warm-up at the same size, "
             "x size = against the smallest frame at the same warm-up length.", ""]
    rows = []
    for c in b["cases"]:
        s, p = c["seconds"], c["peak_bytes"]
        xl, xs = c["x_length"], c["x_size"]
        rows.append([f"{c['frame'][0]} x {c['frame'][1]}", c["warmup_frames"],
                     c["num_objects"], c["steps"],
                     *[fmt(s[k], 2) for k in STAGES],
                     *[f"{fmt(xl[k], 2)} / {fmt(xs[k], 2)}" for k in STAGES],
                     *[mib(p[k]) for k in STAGES]])
    lines.append(markdown_table(
        ["frame (H x W)", "warm-up frames", "objects", "C steps", "A s", "B s", "C s",
         "A x len / x size", "B x len / x size", "C x len / x size",
         "A peak", "B peak", "C peak"], rows))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None,
                        help="frame sizes HxW (default 240x427 480x854; quick 120x214 "
                             "240x427)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="warm-up lengths (default 10 30 60; quick 10 30)")
    parser.add_argument("--variant", default="tiny", help="MiT size of the random ISS model")
    parser.add_argument("--num-classes", type=int, default=124, help="classes (VSPW: 124)")
    parser.add_argument("--embed-dim", type=int, default=256, help="decoder width D")
    parser.add_argument("--sam2-image-size", type=int, default=256, help="SAM2 image size")
    parser.add_argument("--max-objects", type=int, default=100,
                        help="SAM2 object cap (paper: 100)")
    parser.add_argument("--grid", choices=("full", "cross"), default=None,
                        help="cases: every size x every length (full), or every length at the "
                             "first size plus every size at the first length (cross; default "
                             "with --quick)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="model.precision (autocast of the ISS, SAM2 and stage C)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="stage C passes over the warm-up (default 5 = paper; quick 1)")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [(120, 214), (240, 427)] if args.quick else [(240, 427), (480, 854)]
    if args.lengths is None:
        args.lengths = [10, 30] if args.quick else [10, 30, 60]
    if args.iterations is None:
        args.iterations = 1 if args.quick else 5
    if args.grid is None:
        args.grid = "cross" if args.quick else "full"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    result: dict[str, Any] = {"machine": machine_info(device),
                              "command": command_line("bench/bench_adaptation.py", argv),
                              "date": now_utc()}
    result["bench"] = run_adaptation_bench(args.sizes, args.lengths, args, device,
                                           full_grid=args.grid == "full")
    markdown = to_markdown(result)
    write_results("bench_adaptation", result, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
