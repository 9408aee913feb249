"""Stage D frame-size output: the workspace implementation against the straightforward one.

Times ``fusion.frame_output`` (buffers kept across frames, in-place softmax and blend, argmax
by a matrix product) and the pipeline it replaced (``to_frame_size``, softmax,
``torch.special.entr`` reliabilities, lerp, argmax, every step into a new tensor), for the
plain branch alone (ISS serving) and for the fused two-branch output (DiTTA streaming),
interleaved, medians over repeats, on the same logits. First checks that both give the
same labels, probabilities and reliability bit for bit (exit status 1 otherwise). Also
splits the fused output into its passes.

The logits are random at 1/4 of the network input, ~1e-3 apart like a random-init
SegFormer's (the worst case for rounding: every label is a near tie).

Usage: ``python bench/bench_fusion.py [--threads N] [--repeats N] [--frame-size HxW]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditta_ros.engine.fusion import (  # noqa: E402
    TIE_WEIGHT,
    FrameOutput,
    FrameWorkspace,
    frame_output,
)
from ditta_ros.engine.preprocess import input_size, to_frame_size  # noqa: E402


def _reliability(probs: torch.Tensor) -> torch.Tensor:
    e = torch.special.entr(probs.float()).sum(dim=1)                 # (B, H, W)
    e_max = e.amax(dim=(1, 2), keepdim=True)
    return 1.0 - e / torch.where(e_max > 0, e_max, torch.ones_like(e_max))


def straightforward(plain: torch.Tensor, addon: torch.Tensor | None,
                    input_hw: tuple[int, int], frame_hw: tuple[int, int],
                    tau: float) -> FrameOutput:
    """The pipeline before the workspace (each step allocates its C x H x W result)."""
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


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parts(plain: torch.Tensor, addon: torch.Tensor, input_hw: tuple[int, int],
          frame_hw: tuple[int, int], workspace: FrameWorkspace) -> dict[str, float]:
    """Seconds of the passes of one fused output, into kept buffers (one measurement)."""
    from ditta_ros.engine.fusion import (
        _blend_,
        _class_argmax,
        _entropy_into,
        _frame_logits_into,
        _reliability_from_entropy,
    )

    probs, scratch = workspace.buffers(2, int(plain.shape[1]), input_hw, frame_hw,
                                       plain.device)
    e = torch.empty((2,) + frame_hw)

    def upsample() -> None:
        for b, logits in enumerate((plain, addon)):
            _frame_logits_into(logits.float().contiguous(), input_hw, frame_hw,
                               probs[b:b + 1], scratch)

    def entropy() -> None:
        for b in range(2):
            _entropy_into(probs[b:b + 1], scratch, e[b:b + 1])

    def blend() -> None:
        r = _reliability_from_entropy(e)
        _blend_(probs[0:1], probs[1:2], r[0:1], r[1:2], 0.8)

    return {"upsample (2 steps, 2 branches)": _time(upsample),
            "softmax (both)": _time(lambda: torch.softmax(probs, dim=1, out=probs)),
            "entropy (both)": _time(entropy),
            "weights + blend": _time(blend),
            "argmax": _time(lambda: _class_argmax(probs[1:2], scratch))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=5, help="measured repeats per mode")
    p.add_argument("--frame-size", default="480x854", help="frame HxW")
    p.add_argument("--num-classes", type=int, default=124)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.frame_size.lower().split("x"))
    fhw = (height, width)
    input_hw = input_size(*fhw)
    low_hw = (input_hw[0] // 4, input_hw[1] // 4)
    gen = torch.Generator().manual_seed(0)
    plain = torch.randn(1, args.num_classes, *low_hw, generator=gen) * 1e-3
    addon = torch.randn(1, args.num_classes, *low_hw, generator=gen) * 1e-3
    workspace = FrameWorkspace(branches=2)
    modes: dict[str, Callable[[], FrameOutput]] = {
        "plain, straightforward": lambda: straightforward(plain, None, input_hw, fhw, 0.8),
        "plain, workspace": lambda: frame_output(plain, None, input_hw, fhw, 0.8,
                                                 workspace=workspace),
        "fused, straightforward": lambda: straightforward(plain, addon, input_hw, fhw, 0.8),
        "fused, workspace": lambda: frame_output(plain, addon, input_hw, fhw, 0.8,
                                                 workspace=workspace),
    }
    names = list(modes)
    times: dict[str, list[float]] = {m: [] for m in names}
    load = os.getloadavg()
    with torch.inference_mode():
        for branch_addon in (None, addon):                         # identical numbers
            ref = straightforward(plain, branch_addon, input_hw, fhw, 0.8)
            out = frame_output(plain, branch_addon, input_hw, fhw, 0.8, with_probs=True,
                               with_reliability=True, workspace=workspace)
            assert ref.probs is not None and ref.reliability is not None
            same = (torch.equal(ref.labels, out.labels) and out.probs is not None
                    and torch.equal(ref.probs, out.probs) and out.reliability is not None
                    and torch.equal(ref.reliability, out.reliability))
            if not same:
                print("MISMATCH between the workspace and the straightforward output")
                return 1
            del ref, out
        for r in range(args.repeats + 1):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in order:
                seconds = _time(modes[m])
                if r > 0:
                    times[m].append(seconds)
        split = [parts(plain, addon, input_hw, fhw, workspace) for _ in range(3)]
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"frame {fhw[0]} x {fhw[1]}, input {input_hw[0]} x {input_hw[1]}, "
          f"{args.num_classes} classes, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats; load average at start {load[0]:.1f} {load[1]:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}; labels, probabilities, reliability identical")
    print("| output | straightforward s | workspace s | speed-up |\n|---|---|---|---|")
    for kind in ("plain", "fused"):
        a, b = med[f"{kind}, straightforward"], med[f"{kind}, workspace"]
        print(f"| {kind} | {a:.3f} | {b:.3f} | {a / b:.2f} x |")
    print("fused output, passes (median s): " + ", ".join(
        f"{k} {statistics.median(s[k] for s in split):.3f}" for k in split[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
