"""``ditta-eval``: DiTTA against its baselines, on the same frames, with the paper's metrics.

Methods (``--methods``), all evaluated on the post-warm-up frames W_n..T-1 of every video:

- ``iss``: the frozen ISS model frame by frame;
- ``ditta``: the W2F protocol (adapt on frames 0..W_n-1, then stage D);
- ``sam2-refine``: the paper's SAM2 zero-shot refinement (:mod:`ditta_ros.engine.baselines`).

Sources: rosbag2 bags (sqlite3/mcap), VSPW-layout folders, image folders, video files
(:mod:`ditta_ros.tools.datasets`). Results: one JSON per finished video (a re-run skips
them), ``report.json`` + ``report.md`` (the paper's table), PNG plots, optional colour
dumps and an output bag with the predicted label topics. ``--shard K/N`` evaluates a
deterministic slice; ``ditta-eval merge OUT SHARD...`` pools shards into the same report a
single run gives. ``--live`` replays a bag through a running ``ditta_node``
(:mod:`ditta_ros.tools.live`).

The work itself is :func:`ditta_ros.tools.evaluation.evaluate` / ``merge`` (re-exported
here); this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ditta_ros.config import DittaConfig
from ditta_ros.errors import ConfigError, DittaError, InputError
from ditta_ros.labels import load_classes
from ditta_ros.tools import datasets
from ditta_ros.tools.evaluation import (  # noqa: F401
    RANDOM_SAM2_IMAGE_SIZE,
    SAM2_TINY_CONFIG,
    EvalOptions,
    Models,
    Scorer,
    build_models,
    evaluate,
    evaluate_video,
    finish_report,
    merge,
    run_settings,
    select_videos,
    strip_indices,
)
from ditta_ros.tools.report import METHODS


# -- command line ----------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage on errors: ``usage`` then ``prog: error: ...``, each
    error naming the flag (the full option list stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"usage: {self.format_usage().split(':', 1)[-1].strip()} (--help for "
                     f"all options)\n{self.prog}: error: {message}\n")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"takes K/N, e.g. 0/4; got {text!r}") from exc
    if n < 1 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text} is not a shard: need 0 <= K < N (K counts "
                                         "from 0), e.g. 0/2 and 1/2")
    return k, n


def _parse_set(text: str) -> tuple[str, str, str]:
    try:
        key, value = text.split("=", 1)
        section, name = key.split(".", 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"takes section.field=value, e.g. "
                                         f"teacher.reliability_threshold=0.5; got {text!r}") \
            from exc
    return section, name, value


def run_parser() -> Parser:
    p = Parser(
        prog="ditta-eval",
        usage="%(prog)s SOURCE [SOURCE ...] -o OUTPUT [options]",
        description="Evaluate DiTTA against the ISS model and SAM2 refinement on the same "
                    "post-warm-up frames (mIoU, wIoU, mVC8, mVC16, FPS). "
                    "`ditta-eval merge OUT SHARD_DIR...` pools shard results.")
    p.add_argument("sources", nargs="+", type=Path,
                   help="bag folders/files, one VSPW root, image folders or video files")
    p.add_argument("-o", "--output", type=Path,
                   help="result folder (per-video JSON, report.json/.md, plots); re-running "
                        "into it skips finished videos")
    p.add_argument("--source-type", choices=("auto", "bag", "vspw", "images", "video"),
                   default="auto", help="what the sources are (default: detect)")
    p.add_argument("--split", default="val",
                   help="VSPW: split name (<root>/<split>.txt), a split file, or 'all'")
    p.add_argument("--image-topic", help="bags: the image topic (default: the only one)")
    p.add_argument("--label-topic", help="bags: ground-truth label topic (mono8/mono16 class "
                                         "ids, matched by header stamp)")
    p.add_argument("--label-map", type=Path,
                   help="bags: raw label -> class table (JSON or 'raw class' lines)")
    p.add_argument("--label-ignore", type=int, action="append", default=[],
                   help="bags: raw label value to ignore (repeatable)")
    p.add_argument("--record-order", action="store_true",
                   help="bags: read frames in the order they were recorded (default: in "
                        "header-stamp order, the order the camera produced them; records "
                        "out of stamp order are counted and reported)")
    p.add_argument("--check-only", action="store_true",
                   help="scan the sources and print what they hold (topics, counts, sizes, "
                        "encodings, out-of-order stamps, bad frames, resolution segments); "
                        "load no model; exit 2 only when nothing is evaluable")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    warm = p.add_mutually_exclusive_group()
    warm.add_argument("--warmup-ratio", type=int,
                      help="warm-up in percent of each video (paper: 10, 25, 50; default 10)")
    warm.add_argument("--warmup-frames", type=int, help="warm-up as a fixed frame count")
    p.add_argument("--segformer", default="",
                   help="ISS model: ditta_ros checkpoint (.pt, see ditta-convert-checkpoint) "
                        "or Hugging Face SegFormer folder; default: seeded random tiny model")
    p.add_argument("--variant", default="tiny", help="random SegFormer size (no --segformer)")
    p.add_argument("--num-classes", type=int,
                   help="classes of the random SegFormer (default: those of --classes)")
    p.add_argument("--classes", default="vspw",
                   help="class names and palette: vspw, cityscapes, ade20k or a YAML file")
    p.add_argument("--sam2-checkpoint", default="", help="SAM2 .pt file (paper: SAM2 Hiera-L); "
                                                         "default: seeded random hiera-t")
    p.add_argument("--sam2-config", help="SAM2 config inside the sam2 package (default: "
                                         "configs/sam2/sam2_hiera_l.yaml with a checkpoint, "
                                         f"{SAM2_TINY_CONFIG} without)")
    p.add_argument("--sam2-image-size", type=int,
                   help=f"SAM2 input size (default 1024; {RANDOM_SAM2_IMAGE_SIZE} for random "
                        "SAM2)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--iterations", type=int, help="adaptation passes over the warm-up (5)")
    p.add_argument("--set", dest="overrides", type=_parse_set, action="append", default=[],
                   metavar="SECTION.FIELD=VALUE",
                   help="any setting of ditta_ros.config, e.g. teacher.reliability_threshold"
                        "=0.5 or adaptation.seed=1 (repeatable)")
    p.add_argument("--videos", type=int, help="only the first N videos (smoke runs)")
    p.add_argument("--shard", type=_parse_shard, metavar="K/N",
                   help="only videos K, K+N, K+2N, ... of the sorted list (0 <= K < N)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--strip-frames", type=int, default=6,
                   help="frames per colour label strip (default 6)")
    p.add_argument("--dump-colors", action="store_true",
                   help="write colour label and overlay images of every evaluated frame")
    p.add_argument("--output-bag", action="store_true",
                   help="write <output>/bags/<video>: input images and predicted label topics")
    p.add_argument("--bag-storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="storage of the output bags")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # streams (issue 13): ditta_ros.tools.streams
    p.add_argument("--as-stream", action="store_true",
                   help="join the videos into one stream and compare iss, ditta with policy "
                        "once and ditta with on_scene_change (methods: --methods from "
                        "iss,once,on_scene_change); warm-up: --warmup-frames or "
                        "adaptation.warmup_frames")
    p.add_argument("--stream-fps", type=float, default=30.0,
                   help="--as-stream: frames per second the stream's stamps assume (the "
                        "policy's cooldown and period are in seconds)")
    live = p.add_argument_group("live replay through a running ditta_node (--live)")
    live.add_argument("--live", action="store_true",
                      help="replay the bag into a running ditta_node and score what it "
                           "publishes (see docs/evaluation.md)")
    live.add_argument("--node-input", default="/image",
                      help="the node's image input topic")
    live.add_argument("--node-labels", default="/ditta_node/labels",
                      help="the node's label output topic")
    live.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    live.add_argument("--live-timeout", type=float, default=10.0,
                      help="seconds to wait for the last outputs after the replay")
    live.add_argument("--live-player", choices=("ditta", "external"), default="ditta",
                      help="ditta: this tool replays the bag; external: another player "
                           "(ros2 bag play, ditta-replay) does, this tool only listens")
    live.add_argument("--live-start-timeout", type=float, default=60.0,
                      help="seconds to wait for the node (and, external, the first frame)")
    live.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID to use (default: inherit)")
    return p


def build_config(args: argparse.Namespace, num_classes: int) -> DittaConfig:
    """DittaConfig from the command line (model, teacher, warm-up, overrides)."""
    random_sam2 = args.sam2_checkpoint == ""
    teacher: dict[str, Any] = {"sam2_checkpoint": args.sam2_checkpoint}
    if args.sam2_config:
        teacher["sam2_config"] = args.sam2_config
    elif random_sam2:
        teacher["sam2_config"] = SAM2_TINY_CONFIG
    if args.sam2_image_size:
        teacher["image_size"] = args.sam2_image_size
    elif random_sam2:
        teacher["image_size"] = RANDOM_SAM2_IMAGE_SIZE
    sections: dict[str, dict[str, Any]] = {
        "model": {"checkpoint": args.segformer, "variant": args.variant,
                  "num_classes": num_classes, "device": args.device},
        "teacher": teacher, "adaptation": {}, "fusion": {}, "stream": {}}
    if args.warmup_ratio is not None:
        sections["adaptation"]["warmup_ratio"] = args.warmup_ratio
    if args.iterations is not None:
        sections["adaptation"]["iterations"] = args.iterations
    config = DittaConfig()
    for section, name, value in args.overrides:
        if section not in sections:
            raise ConfigError(f"--set {section}.{name}: no config section {section!r} (use "
                              f"{', '.join(sections)})")
        current = getattr(getattr(config, section), name, None)
        if current is None and name not in {f.name for f in
                                            dataclasses.fields(getattr(config, section))}:
            raise ConfigError(f"--set {section}.{name}: {section} has no setting {name!r}")
        sections[section][name] = _coerce(value, current)
    return config.replace(**{k: v for k, v in sections.items() if v})


def _coerce(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"expected a {type(like).__name__}, got {text!r}") from exc
    return text


def sources_from_args(args: argparse.Namespace, num_classes: int) -> list[datasets.VideoRef]:
    kinds = {datasets.detect_kind(s) if args.source_type == "auto" else args.source_type
             for s in args.sources}
    if len(kinds) > 1:
        raise InputError(f"sources of different kinds ({', '.join(sorted(kinds))}) cannot be "
                         "mixed in one run")
    kind = kinds.pop()
    if kind == "bag":
        id_map = None
        if args.label_map is not None:
            from ditta_ros.tools.bags import read_id_map
            id_map = read_id_map(args.label_map)
        return datasets.bag_videos(args.sources, args.image_topic, args.label_topic, id_map,
                                   tuple(args.label_ignore),
                                   "record" if args.record_order else "stamp",
                                   progress=not args.no_progress)
    refs: list[datasets.VideoRef] = []
    for source in args.sources:
        if kind == "vspw":
            refs += datasets.vspw_videos(source, args.split, num_classes)
        elif kind == "images":
            refs += datasets.image_folder_videos(source)
        else:
            refs += datasets.video_file_videos(source)
    return refs


def check_flags(parser: Parser, args: argparse.Namespace) -> None:
    """Flag mistakes found before anything is read: one line naming the flag (exit 2)."""
    if args.output is None and not args.check_only:
        parser.error("the following arguments are required: -o/--output")
    for flag, value in (("--segformer", args.segformer),
                        ("--sam2-checkpoint", args.sam2_checkpoint),
                        ("--label-map", args.label_map)):
        if value and not Path(value).exists():
            parser.error(f"{flag} {value}: no such file or folder (give a local path; "
                         "nothing is downloaded)")
    if args.warmup_frames is not None and args.warmup_frames < 1:
        parser.error(f"--warmup-frames must be >= 1, got {args.warmup_frames}")
    if args.warmup_ratio is not None and not 1 <= args.warmup_ratio <= 100:
        parser.error(f"--warmup-ratio is a percentage in [1, 100], got {args.warmup_ratio}")
    if args.videos is not None and args.videos < 1:
        parser.error(f"--videos must be >= 1, got {args.videos}")
    unknown = [m for m in args.methods.split(",") if m.strip() and m.strip() not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(METHODS)}")
    if args.live and args.record_order:
        parser.error("--record-order does not apply to --live (the bag is replayed as "
                     "recorded)")


def check_only(refs: Sequence[datasets.VideoRef], config: DittaConfig,
               options: EvalOptions) -> int:
    """Print the scan of every source; 0 when something is evaluable, else 2."""
    from ditta_ros.tools.evaluation import warmup_rule

    warmup_of = warmup_rule(config, options)
    evaluable = 0
    for ref in refs:
        if ref.scan is not None:
            print("\n".join(ref.scan.lines(warmup_of)))
            evaluable += ref.scan.evaluated_frames(warmup_of) > 0
        else:
            line, ok = _describe_unscanned(ref, warmup_of)
            print(line)
            evaluable += ok
    print(f"\ncheck: {evaluable} of {len(refs)} videos evaluable")
    if not evaluable:
        print("ditta-eval: error: nothing is evaluable (see the scan above)", file=sys.stderr)
        return 2
    return 0


def _describe_unscanned(ref: datasets.VideoRef, warmup_of: Any) -> tuple[str, bool]:
    """One line on a video of a folder or file source, and whether it is evaluable."""
    video = ref.open()
    try:
        frames, segments, rejected = len(video), video.segments, dict(video.rejected)
    finally:
        video.close()
    if segments is None:             # video files: not checked frame by frame
        warmup = warmup_of(frames)
        return (f"video {ref.name}: {frames} frames, warm-up {warmup}, "
                f"{max(frames - warmup, 0)} evaluated (a video file is not checked frame "
                "by frame)", warmup < frames)
    evaluated = sum(len(s) - warmup_of(len(s)) for s in segments
                    if warmup_of(len(s)) < len(s))
    sizes = ", ".join(f"{s.width}x{s.height} ({len(s)})" for s in segments)
    bad = "; ".join(f"{n} x {kind}" for kind, n in rejected.items()) or "none rejected"
    return (f"video {ref.name}: {frames} frames; {bad}; {len(segments)} segment(s): "
            f"{sizes or 'none'}; {evaluated} evaluated", evaluated > 0)


def run_main(argv: Sequence[str]) -> int:
    parser = run_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    classes = load_classes(args.classes)
    num_classes = args.num_classes or classes.num_classes
    config = build_config(args, num_classes)
    if args.as_stream and not args.check_only:   # streams (issue 13); --check-only scans
        from ditta_ros.tools.streams import stream_main

        return stream_main(args, config, sources_from_args(args, num_classes))
    options = EvalOptions(output=args.output or Path("."), methods=methods,
                          warmup_frames=args.warmup_frames, classes=args.classes,
                          plots=not args.no_plots, strip_frames=args.strip_frames,
                          dump_colors=args.dump_colors, output_bag=args.output_bag,
                          bag_storage=args.bag_storage, progress=not args.no_progress)
    if args.live and not args.check_only:   # --check-only scans the bag, node or not
        from ditta_ros.tools.live import live_main

        return live_main(args, config, options)
    refs = select_videos(sources_from_args(args, num_classes), args.videos, args.shard)
    if not refs:
        raise InputError("no video selected (check the sources, --videos and --shard)")
    if args.check_only:
        return check_only(refs, config, options)
    report = evaluate(refs, config, options)
    print((args.output / "report.md").read_text().split("## Per video")[0].rstrip())
    print(f"\nreport: {args.output / 'report.md'} and report.json "
          f"({report['videos_evaluated']} videos)")
    return 0


def merge_main(argv: Sequence[str]) -> int:
    p = Parser(prog="ditta-eval merge", usage="%(prog)s OUTPUT SHARD_DIR [SHARD_DIR ...]",
               description="Pool the results of several ditta-eval shard folders into one "
                           "report (same numbers as a single run).")
    p.add_argument("output", type=Path, help="folder for the merged report")
    p.add_argument("shards", type=Path, nargs="+", help="shard output folders")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    args = p.parse_args(argv)
    report = merge(args.output, args.shards, not args.no_plots)
    print((args.output / "report.md").read_text().split("## Per video")[0].rstrip())
    print(f"\nmerged {len(args.shards)} shards, {report['videos_evaluated']} videos")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``ditta-eval``; errors of ditta_ros become one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "merge":
            return merge_main(args[1:])
        return run_main(args)
    except SystemExit as exc:          # --help, or a usage error already printed (one line)
        return exc.code if isinstance(exc.code, int) else 2
    except DittaError as exc:
        print(f"ditta-eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
