"""ditta-convert-checkpoint: the paper's ISS checkpoint -> a ditta_ros model file.

The source is a torch file holding an NVlabs-SegFormer / CFFM / mmsegmentation state dict
(``backbone.*``, ``decode_head.linear_c{1..4}``, ``decode_head.linear_fuse``,
``decode_head.linear_pred``, and the DiTTA add-on ``decode_head.query_layer``,
``key_layer``, ``proj_feat`` when present), bare or under ``state_dict``. The MiT size,
decoder width and class count are read from the tensor shapes. The result loads with
``ModelConfig(checkpoint=DST)`` (ROS parameter ``model.checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ditta_ros.engine.checkpoints import convert_mmseg_checkpoint
from ditta_ros.errors import DittaError


def _heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--num-heads wants 4 comma-separated integers, e.g. 1,2,5,8; got {text!r}") from exc
    if len(heads) != 4:
        raise argparse.ArgumentTypeError(f"--num-heads wants 4 numbers, got {len(heads)}")
    return heads


def _read_class_names(path: Path) -> list[str]:
    """One class name per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DittaError(f"cannot read class names from {str(path)!r}: {exc.strerror}; give a "
                         "text file with one class name per line") from exc
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ditta-convert-checkpoint",
        description="Convert the paper's SegFormer ISS checkpoint (NVlabs/CFFM/mmseg keys, "
                    "with or without the DiTTA add-on) into a ditta_ros model file.")
    parser.add_argument("src", type=Path, help="source checkpoint (.pth / .pt)")
    parser.add_argument("dst", type=Path, help="ditta_ros model file to write (.pt)")
    parser.add_argument("--num-heads", type=_heads, default=None,
                        help="attention heads per stage, e.g. 1,2,5,8; needed only when the "
                             "widths are no published MiT size (B0-B5)")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="text file with one class name per line (default: the "
                             "checkpoint's meta.CLASSES, if any)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the DiTTA head when the checkpoint lacks it "
                             "(default 0)")
    parser.add_argument("--trusted", action="store_true",
                        help="load the source with full pickle; only for files you trust "
                             "(some mmseg checkpoints hold objects the safe loader refuses)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dst.exists() and not args.force:
            raise DittaError(f"{str(args.dst)!r} exists; pass --force to overwrite it")
        names = _read_class_names(args.class_names) if args.class_names else None
        report = convert_mmseg_checkpoint(args.src, args.dst, num_heads=args.num_heads,
                                          class_names=names, seed=args.seed,
                                          trusted=args.trusted)
    except DittaError as exc:
        print(f"ditta-convert-checkpoint: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
