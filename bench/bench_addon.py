"""Micro-benchmark of the temporal add-on's local-window attention (engine/model.py).

Compares, in one run and interleaved (so a busy machine slows every candidate alike):

- ``old``: the previous implementation, kept here as the baseline: the (2r+1)^2 window
  offsets walked one by one over zero-padded views of k and v;
- ``new``: ``ditta_ros.engine.model.local_attention`` (tiled dense attention);
- ``addon``: the whole ``TemporalAddon`` (MLP_q, MLP_k and the new attention), what streaming
  inference adds per frame;
- ``iss``: the ISS model alone, a random-init SegFormer-B0 (D 256, C classes) at 4 x the map
  size, ``forward_features`` (encoder + decoder, logits at 1/4).

Forward passes run under ``torch.inference_mode``; forward+backward (stage C trains the
attention) backpropagates a fixed random output gradient into q, k and v. Times are medians
of repeats (wall clock, or with ``--clock cpu`` the process's CPU time); ratios divide
medians of the same run. Peak memory is the largest live total of tensor bytes during one
call (CPU: the profiler's allocation events; CUDA: ``max_memory_allocated``), inputs
excluded.

Usage: ``python bench/bench_addon.py [--quick] [--threads 1 2] [--size 120 216]
[--dim 256] [--classes 124] [--radius 5] [--repeats 5] [--clock wall|cpu]
[--layout addon|contiguous] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

# Run as a script from anywhere: the source tree's ditta_ros, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import SegformerForSemanticSegmentation  # noqa: E402

from ditta_ros.engine.model import (  # noqa: E402
    SegformerISS,
    TemporalAddon,
    local_attention,
    segformer_config,
)


def old_local_attention(q: Tensor, k: Tensor, v: Tensor, radius: int) -> Tensor:
    """The baseline: one pass over the map per window offset (previous engine code)."""
    _, _, h, w = q.shape
    side = 2 * radius + 1
    offsets = [(dy, dx) for dy in range(side) for dx in range(side)]
    pad = (radius, radius, radius, radius)
    k_pad = F.pad(k, pad)  # (B, D, h+2r, w+2r)
    scores = torch.stack(
        [(q * k_pad[:, :, dy:dy + h, dx:dx + w]).sum(dim=1, dtype=torch.float32)
         for dy, dx in offsets], dim=1)  # (B, K, h, w) float32
    inside = F.pad(q.new_ones((1, 1, h, w), dtype=torch.bool), pad)  # (1, 1, h+2r, w+2r)
    valid = torch.cat([inside[:, :, dy:dy + h, dx:dx + w] for dy, dx in offsets], dim=1)
    weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=1).to(v.dtype)
    v_pad = F.pad(v, pad)  # (B, C, h+2r, w+2r)
    out = v.new_zeros(v.shape)
    for index, (dy, dx) in enumerate(offsets):
        out = out + weights[:, index:index + 1] * v_pad[:, :, dy:dy + h, dx:dx + w]
    return out  # (B, C, h, w)


Attention = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(calls: dict[str, Callable[[], object]], repeats: int,
                      device: torch.device, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call; one warm-up each, then repeats round-robin."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Largest live tensor bytes allocated during ``fn`` (what existed before excluded)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # An op's own allocations (net of its own frees) at its start; frees outside ops are
    # "[memory]" events. Running sum in time order -> peak (intra-op peaks are not seen).
    changes = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]"
                      else e.self_cpu_memory_usage) for e in prof.events())
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def attention_calls(fns: dict[str, Attention], q: Tensor, k: Tensor, v: Tensor, radius: int,
                    backward: bool) -> dict[str, Callable[[], object]]:
    """One zero-argument call per implementation: forward (inference) or forward+backward."""
    grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(v)
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]

    def forward(fn: Attention) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return fn(q, k, v, radius)
        return call

    def forward_backward(fn: Attention) -> Callable[[], object]:
        def call() -> object:
            out = fn(leaves[0], leaves[1], leaves[2], radius)
            return torch.autograd.grad(out, leaves, grad)
        return call

    make = forward_backward if backward else forward
    return {name: make(fn) for name, fn in fns.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats, one thread count, no memory probe")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch.set_num_threads values to measure (default 1 2)")
    parser.add_argument("--size", type=int, nargs=2, default=[120, 216], metavar=("H", "W"),
                        help="map size h w (1/4 of the network input; default 120 216)")
    parser.add_argument("--dim", type=int, default=256, help="feature width D")
    parser.add_argument("--classes", type=int, default=124, help="classes C")
    parser.add_argument("--radius", type=int, default=5, help="window radius r")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock time (default) or the process's CPU time, steadier "
                        "on a shared machine (CPU only; sums all threads)")
    parser.add_argument("--layout", choices=("addon", "contiguous"), default="addon",
                        help="q, k memory: 'addon' = channels-last views, as TemporalAddon "
                        "makes them (default); 'contiguous' = plain (B, D, h, w) tensors")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    repeats = 2 if args.quick else args.repeats
    thread_counts = args.threads[:1] if args.quick else args.threads
    h, w = args.size
    d, c, r = args.dim, args.classes, args.radius

    g = torch.Generator().manual_seed(0)
    # q, k as TemporalAddon makes them: channels-last memory seen as (B, D, h, w).
    q = torch.randn(1, h, w, d, generator=g).to(device).permute(0, 3, 1, 2)
    k = torch.randn(1, h, w, d, generator=g).to(device).permute(0, 3, 1, 2)
    if args.layout == "contiguous":
        q, k = q.contiguous(), k.contiguous()
    v = torch.randn(1, c, h, w, generator=g).to(device)
    f_cur, f_prev = q.contiguous(), k.contiguous()
    torch.manual_seed(0)
    addon = TemporalAddon(d, radius=r).to(device).eval()
    iss = SegformerISS(SegformerForSemanticSegmentation(
        segformer_config("b0", c, d))).to(device).eval()
    x = torch.randn(1, 3, 4 * h, 4 * w, generator=g).to(device)

    with torch.inference_mode():
        diff = (local_attention(q, k, v, r) - old_local_attention(q, k, v, r)).abs().max()
    print(f"map {h} x {w}, D {d}, C {c}, r {r}, q/k layout {args.layout}, device {device}; "
          f"ISS = SegFormer-B0 at {4 * h} x {4 * w}; medians of {repeats} repeats ({args.clock} s)")
    print(f"max |new - old| = {diff.item():.2e}\n")

    fns: dict[str, Attention] = {"old": old_local_attention, "new": local_attention}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        forward = attention_calls(fns, q, k, v, r, backward=False)

        def run_addon() -> object:
            with torch.inference_mode():
                return addon(f_cur, f_prev, v)

        def run_iss() -> object:
            with torch.inference_mode():
                return iss.forward_features(x)

        forward.update({"addon": run_addon, "iss": run_iss})
        fwd = interleaved_times(forward, repeats, device, clock)
        both = interleaved_times(attention_calls(fns, q, k, v, r, backward=True),
                                 max(1, repeats // 2) if args.quick else repeats, device,
                                 clock)
        iss_s = fwd["iss"]
        print(f"threads {threads}")
        print(f"  {'':24} {'seconds':>9} {'/ old':>8} {'/ iss':>8}")
        for label, value, old in (
                ("forward old", fwd["old"], fwd["old"]),
                ("forward new", fwd["new"], fwd["old"]),
                ("addon (MLPs + new)", fwd["addon"], fwd["old"]),
                ("iss B0 forward", iss_s, fwd["old"]),
                ("forward+backward old", both["old"], both["old"]),
                ("forward+backward new", both["new"], both["old"])):
            print(f"  {label:24} {value:9.4f} {value / old:8.3f} {value / iss_s:8.3f}")
        print(f"  speed-up forward {fwd['old'] / fwd['new']:.1f}x, "
              f"forward+backward {both['old'] / both['new']:.1f}x\n")

    if not args.quick:
        print("peak memory (MiB, tensors allocated during one call)")
        for backward in (False, True):
            calls = attention_calls(fns, q, k, v, r, backward=backward)
            what = "forward+backward" if backward else "forward"
            for name, call in calls.items():
                print(f"  {what + ' ' + name:24} {peak_bytes(call, device) / 2**20:9.1f}")


if __name__ == "__main__":
    main()
