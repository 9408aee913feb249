"""Arithmetic of one streaming frame: what the ISS network and the temporal add-on cost in
floating-point operations, counted, not timed.

The ratio goals of DiTTA streaming over ISS alone (BENCHMARKS.md, issue 11) have a floor that
no scheduling can beat while the numbers stay those of ALGORITHM.md: the add-on's work
itself. This script counts it with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products and convolutions, 2 flops per multiply-add) on the ``meta`` device, so nothing is
computed there (the add-on runs on real tensors: it opens an autocast region, which the
meta device lacks):

- the ISS network (``forward_features``: encoder and decoder, logits at 1/4 of the input),
  split into encoder and decode head;
- the add-on per streaming frame: MLP_q(F_t) and MLP_k(F_{t-1}) (4 linear layers D x D over
  the h x w map; with F_{t-1} cached nothing else is re-run) and the windowed attention as
  ``local_attention`` computes it (tiled: each 8 x 8 tile of queries scores its 18 x 18 key
  neighbourhood, 2.7 x the (2r+1)^2 = 121 products per pixel that the window needs), with
  the window's own count beside it.

The floor is 1 + add-on / network: DiTTA streaming over ISS alone if the add-on ran at the
network's arithmetic rate and the frame-size output stage cost nothing. The output stage
(bilinear steps, softmax, entropy, blend: no matrix products) is not counted here; its
times are bench_fusion.py's.

Usage: ``python bench/bench_flops.py [--variants b0 b5] [--input 480x864]
[--num-classes 124]``; B0 and B5 take the decoder width of their SegFormer (256, 768).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, markdown_table, parse_size, write_results  # noqa: E402

from ditta_ros.config import ModelConfig  # noqa: E402
from ditta_ros.engine.attention import local_attention  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.model import DEFAULT_WINDOW_RADIUS  # noqa: E402

# SegFormer's decoder width per MiT size (the released checkpoints').
EMBED_DIM = {"tiny": 256, "b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}


def count(fn: Any) -> int:
    """Flops (2 per multiply-add) of the matrix products and convolutions ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_variant(variant: str, input_hw: tuple[int, int], classes: int) -> dict[str, Any]:
    embed = EMBED_DIM[variant]
    model = build_model(ModelConfig(variant=variant, num_classes=classes, embed_dim=embed),
                        "cpu").eval()
    h, w = input_hw[0] // 4, input_hw[1] // 4
    # The add-on on real (random) tensors: local_attention opens an autocast region, which
    # the meta device does not have; it costs about a second.
    f = torch.randn((1, embed, h, w))
    logits = torch.randn((1, classes, h, w))
    hf: Any = model.iss.model
    r = DEFAULT_WINDOW_RADIUS
    with torch.inference_mode():
        addon = count(lambda: model.addon(f, f, logits))
        mlps = count(lambda: (model.addon.mlp_q(f.permute(0, 2, 3, 1)),
                              model.addon.mlp_k(f.permute(0, 2, 3, 1))))
        attention = count(lambda: local_attention(f, f, logits, r))
        model.to("meta")
        x = torch.empty((1, 3) + input_hw, device="meta")
        network = count(lambda: model.iss.forward_features(x))
        encoder = count(lambda: hf.segformer(x))
    window = 2 * h * w * (2 * r + 1) ** 2 * (embed + classes)   # the 121 products a pixel needs
    return {
        "variant": variant, "embed_dim": embed, "classes": classes,
        "input": list(input_hw), "map": [h, w],
        "network": network, "encoder": encoder, "decode_head": network - encoder,
        "addon": addon, "addon_mlps": mlps, "addon_attention": attention,
        "addon_attention_window": window,
        "floor": 1.0 + addon / network,
    }


def gflop(value: int) -> str:
    return f"{value / 1e9:.1f}"


def to_markdown(result: dict[str, Any]) -> str:
    rows = []
    for r in result["variants"]:
        rows.append([
            f"{r['variant']} (D {r['embed_dim']})", gflop(r["network"]), gflop(r["encoder"]),
            gflop(r["decode_head"]), gflop(r["addon_mlps"]),
            f"{gflop(r['addon_attention'])} ({gflop(r['addon_attention_window'])})",
            gflop(r["addon"]), f"{r['addon'] / r['network']:.1%}", f"{r['floor']:.2f} x"])
    h, w = result["variants"][0]["input"]
    return "\n".join([
        f"Flops per streaming frame, network input {h} x {w}, "
        f"{result['variants'][0]['classes']} classes (GFLOP, 2 per multiply-add; "
        f"`{result['command']}`):", "",
        markdown_table(["model", "ISS network", "encoder", "decode head", "add-on MLPs",
                        "add-on attention, tiled (window only)", "add-on", "add-on / network",
                        "floor of DiTTA x ISS"], rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["b0", "b5"], choices=sorted(EMBED_DIM))
    p.add_argument("--input", type=parse_size, default=(480, 864),
                   help="network input HxW (VSPW 480 x 854 frames fit to 480 x 864)")
    p.add_argument("--num-classes", type=int, default=124)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    result = {"command": command_line("bench/bench_flops.py", argv),
              "variants": [count_variant(v, args.input, args.num_classes)
                           for v in args.variants]}
    markdown = to_markdown(result)
    write_results("bench_flops", result, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
