"""Stage D frame-size output: the row-tiled implementation against the straightforward one.

Times ``output_stage.frame_output`` (bands of rows, argmax by a matrix product) and the
whole-map pipeline (``to_frame_size``, softmax, ``-sum p log p`` reliabilities, lerp,
argmax, every step into a new tensor), for the plain branch alone (ISS serving) and for
the fused two-branch output (DiTTA streaming), interleaved, medians over repeats, on the
same logits. First checks that both give the same labels, probabilities and reliability
bit for bit (exit status 1 otherwise). Also times the row-tiled output at several band
heights (``--tile-rows``) and splits the whole-map pipeline into its passes.

The logits are random at 1/4 of the network input, ~1e-3 apart like a random-init
SegFormer's (the worst case for rounding: every label is a near tie).

Usage: ``python bench/bench_fusion.py [--threads N] [--repeats N] [--frame-size HxW]
[--tile-rows 16,32,64] [--compile]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditta_ros.engine.output_stage import (  # noqa: E402
    OUTPUT_STAGE,
    TIE_WEIGHT,
    FrameOutput,
    OutputBuffers,
    band_rows,
    frame_output,
)
from ditta_ros.engine.preprocess import input_size, to_frame_size  # noqa: E402


def _reliability(probs: torch.Tensor) -> torch.Tensor:
    p = probs.float()
    e = -(p * torch.log(p)).masked_fill(p == 0, 0.0).sum(dim=1)      # (B, H, W)
    e_max = e.amax(dim=(1, 2), keepdim=True)
    return 1.0 - e / torch.where(e_max > 0, e_max, torch.ones_like(e_max))


def straightforward(plain: torch.Tensor, addon: torch.Tensor | None,
                    input_hw: tuple[int, int], frame_hw: tuple[int, int],
                    tau: float) -> FrameOutput:
    """The whole-map pipeline (each step allocates its C x H x W result)."""
    if addon is None:
        probs = torch.softmax(to_frame_size(plain.float(), input_hw, frame_hw), dim=1)
    else:
        both = torch.softmax(to_frame_size(torch.cat([plain, addon]).float(), input_hw,
                                           frame_hw), dim=1)          # (2, C, H, W)
        r0, r1 = _reliability(both[0:1]), _reliability(both[1:2])
        total = r0 + r1
        w = torch.where(total > 0, r0 / torch.where(total > 0, total, 1.0),
                        torch.full_like(total, TIE_WEIGHT))
        w = torch.where(r0 < tau, w, torch.ones_like(w)).unsqueeze(1)
        probs = both[1:2].lerp_(both[0:1], w)
    return FrameOutput(probs.argmax(dim=1)[0], probs[0], _reliability(probs)[0],
                       addon is not None)


def _compiled_modes(plain: torch.Tensor, addon: torch.Tensor, input_hw: tuple[int, int],
                    frame_hw: tuple[int, int], buffers: OutputBuffers
                    ) -> dict[str, tuple[Callable[[], FrameOutput], str]]:
    """torch.compile (default inductor backend; C++ code on a CPU) of the straightforward
    pipeline, one compiled function per output kind: the first call's seconds (the
    compilation) and how many labels differ from the bands' (which are bit-exact)."""
    out: dict[str, tuple[Callable[[], FrameOutput], str]] = {}
    for kind, other in (("plain", None), ("fused", addon)):
        fn = torch.compile(partial(straightforward, plain, other, input_hw, frame_hw, 0.8))
        start = time.perf_counter()
        with torch.inference_mode():
            labels = fn().labels
            exact = frame_output(plain, other, input_hw, frame_hw, 0.8, buffers=buffers).labels
        seconds = time.perf_counter() - start
        differ = int((labels != exact).sum())
        out[f"{kind}, compiled"] = (fn, f"first call (compilation) {seconds:.1f} s; labels "
                                        f"differing from the exact bands: {differ} of "
                                        f"{labels.numel()}")
    return out


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parts(plain: torch.Tensor, addon: torch.Tensor, input_hw: tuple[int, int],
          frame_hw: tuple[int, int]) -> dict[str, float]:
    """Seconds of the passes of the whole-map fused output (one measurement)."""
    state: dict[str, torch.Tensor] = {}

    def upsample() -> None:
        state["x"] = to_frame_size(torch.cat([plain, addon]), input_hw, frame_hw)

    def softmax() -> None:
        state["p"] = torch.softmax(state["x"], dim=1)

    def entropy() -> None:
        state["r"] = _reliability(state["p"])

    def blend() -> None:
        r = state["r"]
        total = r[0] + r[1]
        w = torch.where(total > 0, r[0] / torch.where(total > 0, total, 1.0),
                        torch.full_like(total, TIE_WEIGHT))
        state["f"] = state["p"][1:].lerp_(state["p"][:1], w[None, None])

    return {"upsample (2 steps, 2 branches)": _time(upsample),
            "softmax (both)": _time(softmax),
            "entropy (both)": _time(entropy),
            "weights + blend": _time(blend),
            "argmax": _time(lambda: state["f"].argmax(dim=1))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=5, help="measured repeats per mode")
    p.add_argument("--frame-size", default="480x854", help="frame HxW")
    p.add_argument("--num-classes", type=int, default=124)
    p.add_argument("--tile-rows", default="16,32,64", help="band heights to time")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (inductor) of the straightforward pipeline: "
                   "compile time, seconds per frame, labels differing from the bands")
    p.add_argument("--previous", type=Path, default=None,
                   help="fusion.py of an older checkout whose frame_output(..., workspace=) "
                   "is timed too (e.g. the workspace version: git show "
                   "61e95ce:ditta_ros/engine/fusion.py > /tmp/fusion_61e95ce.py)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.frame_size.lower().split("x"))
    fhw = (height, width)
    input_hw = input_size(*fhw)
    low_hw = (input_hw[0] // 4, input_hw[1] // 4)
    gen = torch.Generator().manual_seed(0)
    plain = torch.randn(1, args.num_classes, *low_hw, generator=gen) * 1e-3
    addon = torch.randn(1, args.num_classes, *low_hw, generator=gen) * 1e-3
    buffers = OutputBuffers()
    tiles = sorted({band_rows(fhw[1], int(t)) for t in args.tile_rows.split(",")})
    modes: dict[str, Callable[[], FrameOutput]] = {
        "plain, straightforward": lambda: straightforward(plain, None, input_hw, fhw, 0.8),
        "fused, straightforward": lambda: straightforward(plain, addon, input_hw, fhw, 0.8),
    }
    if args.previous is not None:
        spec = importlib.util.spec_from_file_location("previous_fusion", args.previous)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old             # dataclasses look their module up
        spec.loader.exec_module(old)
        workspace = old.FrameWorkspace(branches=2)
        modes["plain, previous"] = partial(old.frame_output, plain, None, input_hw, fhw, 0.8,
                                           workspace=workspace)
        modes["fused, previous"] = partial(old.frame_output, plain, addon, input_hw, fhw, 0.8,
                                           workspace=workspace)
    compiled = _compiled_modes(plain, addon, input_hw, fhw, buffers) if args.compile else {}
    modes.update({name: fn for name, (fn, _) in compiled.items()})
    for t in tiles:
        modes[f"plain, rows {t}"] = partial(frame_output, plain, None, input_hw, fhw, 0.8,
                                            buffers=buffers, tile_rows=t)
        modes[f"fused, rows {t}"] = partial(frame_output, plain, addon, input_hw, fhw, 0.8,
                                            buffers=buffers, tile_rows=t)
    names = list(modes)
    times: dict[str, list[float]] = {m: [] for m in names}
    load = os.getloadavg()
    with torch.inference_mode():
        for branch_addon in (None, addon):                         # identical numbers
            ref = straightforward(plain, branch_addon, input_hw, fhw, 0.8)
            out = frame_output(plain, branch_addon, input_hw, fhw, 0.8, with_probs=True,
                               with_reliability=True, buffers=buffers)
            assert ref.probs is not None and ref.reliability is not None
            same = (torch.equal(ref.labels, out.labels) and out.probs is not None
                    and torch.equal(ref.probs, out.probs) and out.reliability is not None
                    and torch.equal(ref.reliability, out.reliability))
            if not same:
                print("MISMATCH between the row-tiled and the straightforward output")
                return 1
            del ref, out
        for r in range(args.repeats + 1):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in order:
                seconds = _time(modes[m])
                if r > 0:
                    times[m].append(seconds)
        split = [parts(plain, addon, input_hw, fhw) for _ in range(3)]
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"frame {fhw[0]} x {fhw[1]}, input {input_hw[0]} x {input_hw[1]}, "
          f"{args.num_classes} classes, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats; load average at start {load[0]:.1f} {load[1]:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}; labels, probabilities, reliability identical")
    print(f"output stage: {OUTPUT_STAGE}")
    prev = args.previous is not None
    print("| output | straightforward s | " + ("previous s | " if prev else "")
          + " | ".join(f"rows {t} s" for t in tiles)
          + " | best speed-up vs straightforward |" + (" vs previous |" if prev else "")
          + "\n|---|---|" + ("---|" if prev else "") + "---|" * len(tiles) + "---|"
          + ("---|" if prev else ""))
    for kind in ("plain", "fused"):
        a = med[f"{kind}, straightforward"]
        bs = [med[f"{kind}, rows {t}"] for t in tiles]
        row = f"| {kind} | {a:.3f} | "
        if prev:
            row += f"{med[f'{kind}, previous']:.3f} | "
        row += " | ".join(f"{b:.3f}" for b in bs) + f" | {a / min(bs):.2f} x |"
        if prev:
            row += f" {med[f'{kind}, previous'] / min(bs):.2f} x |"
        print(row)
    for name, (_, note) in compiled.items():
        print(f"{name}: {med[name]:.3f} s per frame; {note}")
    print("whole-map fused output, passes (median s): " + ", ".join(
        f"{k} {statistics.median(s[k] for s in split):.3f}" for k in split[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
