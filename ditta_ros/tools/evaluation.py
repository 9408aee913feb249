"""The work behind ``ditta-eval``: every method on every video, scores, files, merge.

:func:`evaluate` runs the selected methods (``iss``, ``ditta``, ``sam2-refine``) in lockstep
on the same frames of each video, scores the post-warm-up frames, writes one JSON per finished
video (a re-run skips them) and pools them into the report; :func:`merge` pools shard folders
into the same report. The command line lives in :mod:`ditta_ros.tools.eval`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.errors import ConfigError, InputError
from ditta_ros.labels import ClassSet, load_classes
from ditta_ros.tools import datasets
from ditta_ros.tools.evalframes import (  # noqa: F401 - Scorer, strip_indices: public here too
    EvalOptions,
    FrameOutputs,
    Scorer,
    VideoScoring,
    plan_video,
    segment_frames,
    strip_indices,
    warmup_rule,
)
from ditta_ros.tools.report import (
    MethodResult,
    VideoResult,
    build_report,
    load_results,
    pool,
    result_path,
    save_video_result,
    write_json,
    write_report,
)

SAM2_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
RANDOM_SAM2_IMAGE_SIZE = 256


def _warmup_text(config: DittaConfig, options: EvalOptions) -> str:
    if options.warmup_frames is not None:
        return f"{options.warmup_frames} frames"
    return f"{config.adaptation.warmup_ratio} %"


def run_settings(config: DittaConfig, options: EvalOptions, num_classes: int) -> dict[str, Any]:
    """Everything that changes the numbers; its hash guards resume and merge.

    The devices are recorded but not hashed: shards of one run may use different GPUs.
    """
    settings = {"config": dataclasses.asdict(config), "methods": list(options.methods),
                "warmup": _warmup_text(config, options), "num_classes": num_classes,
                "classes": options.classes}
    hashed = json.loads(json.dumps(settings))
    for section in ("model", "teacher"):
        hashed["config"][section].pop("device", None)
    key = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]
    return {**settings, "key": key}


def _check_run_dir(out_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume into a folder whose finished videos used other settings."""
    run_file = out_dir / "run.json"
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{run_file} is unreadable ({exc}); delete it") from exc
        if previous.get("key") != settings["key"]:
            raise ConfigError(
                f"{out_dir} holds results of a run with other settings (key "
                f"{previous.get('key')} != {settings['key']}); choose another --output, or "
                "delete that folder to start over")
    write_json(run_file, dict(settings))


# -- models ----------------------------------------------------------------------------------
@dataclass
class Models:
    """The ISS model and, when a method needs SAM2, the teacher (built once per run)."""

    model: Any
    teacher: Any | None


def build_models(config: DittaConfig, methods: Sequence[str], warn: Callable[[str], None]
                 ) -> Models:
    from ditta_ros.engine.checkpoints import build_model

    if config.model.checkpoint == "":
        warn(f"no --segformer given: using a seeded RANDOM '{config.model.variant}' SegFormer "
             f"(seed {config.model.seed}); its numbers mean nothing (tests and smoke runs "
             "only)")
    model = build_model(config.model, config.model.device,
                        window_radius=config.fusion.window_radius)
    teacher = None
    if "ditta" in methods or "sam2-refine" in methods:
        from ditta_ros.engine.sam2_teacher import build_sam2_teacher

        if config.teacher.sam2_checkpoint == "":
            warn(f"no --sam2-checkpoint given: using a seeded RANDOM SAM2 "
                 f"({config.teacher.sam2_config}, image size {config.teacher.image_size}, "
                 f"seed {config.teacher.seed}); its masks mean nothing (tests and smoke runs "
                 "only)")
        teacher = build_sam2_teacher(config.teacher, config.model.device,
                                     num_classes=model.num_classes,
                                     precision=config.model.precision)
    return Models(model, teacher)


# -- one video -------------------------------------------------------------------------------
def _method_iterators(name: str, models: Models, frames: Sequence[np.ndarray],
                      config: DittaConfig, warmup: int, result: MethodResult,
                      note_prefix: str = "") -> Iterator[tuple[int, np.ndarray, float]]:
    """Start one method on a video or segment (its warm-up work runs now; nothing carries
    over from an earlier segment) and yield its frames."""
    start = time.perf_counter()
    if name == "sam2-refine":
        from ditta_ros.engine.baselines import sam2_refine

        if models.teacher is None:
            raise ConfigError("sam2-refine needs SAM2: build the models with this method")
        refine = sam2_refine(models.model, models.teacher.propagator, frames, config, warmup)
        if refine.summary.reason:
            result.notes.append(note_prefix + refine.summary.reason)
        return ((f.index, f.labels, f.inference_s) for f in refine)
    from ditta_ros.engine.runner import run_w2f

    run = run_w2f(models.model, models.teacher if name == "ditta" else None, frames, config,
                  warmup=warmup, iss_only=name == "iss")
    if name == "ditta":
        result.adaptation_s += time.perf_counter() - start
        result.notes.append(note_prefix + run.summary.reason)
    return ((f.index, f.labels, f.inference_s) for f in run)


def evaluate_video(ref: datasets.VideoRef, models: Models, config: DittaConfig,
                   options: EvalOptions, classes: ClassSet, settings_key: str = "",
                   bar: Any = None) -> VideoResult:
    """Every method on one video, frame by frame in lockstep; plots of the video."""
    num_classes = int(models.model.num_classes)
    video = ref.open()
    try:
        return _evaluate_open_video(video, models, config, options, classes, num_classes,
                                    settings_key, bar)
    finally:
        video.close()


def _evaluate_open_video(video: datasets.Video, models: Models, config: DittaConfig,
                         options: EvalOptions, classes: ClassSet, num_classes: int,
                         settings_key: str, bar: Any) -> VideoResult:
    run = VideoScoring(video, plan_video(video, config, options), options, num_classes, bar)
    outputs = FrameOutputs(options.output, video, options, classes, num_classes)
    several = len(run.plan.segments) > 1
    try:
        for segment, warmup in run.plan.evaluable:
            prefix = f"segment {segment.index}: " if several else ""
            run.start_segment()
            frames = segment_frames(video, segment)
            streams = {}
            for m in options.methods:
                run.status(f"{prefix}warm-up of {m}")
                streams[m] = _method_iterators(m, models, frames, config, warmup,
                                               run.results[m], prefix)
            for j in range(warmup, len(segment)):
                preds: dict[str, np.ndarray] = {}
                seconds: dict[str, float] = {}
                for m, stream in streams.items():
                    index, labels, seconds[m] = next(stream)
                    if index != j:
                        raise InputError(f"method {m} returned frame {index}, expected {j} "
                                         "(internal error)")
                    preds[m] = labels
                t = segment.frames[j]
                frame, gt = run.score(t, preds, seconds)
                outputs.frame(t, frame, gt, preds)
    finally:
        outputs.close()
    result = run.result(settings_key)
    if options.plots:
        run.plot(result, classes)
    return result


# -- the run ---------------------------------------------------------------------------------
def select_videos(refs: Sequence[datasets.VideoRef], videos: int | None,
                  shard: tuple[int, int] | None) -> list[datasets.VideoRef]:
    """``--videos N`` (the first N) first, then ``--shard K/N`` (deterministic round robin)."""
    chosen = list(refs[:videos] if videos is not None else refs)
    if shard is not None:
        chosen = datasets.shard(chosen, shard[0], shard[1])
    return chosen


def evaluate(refs: Sequence[datasets.VideoRef], config: DittaConfig, options: EvalOptions,
             models: Models | None = None, warn: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """Run every method on every video not finished yet; write and return the report."""
    say = warn or (lambda text: print(f"ditta-eval: {text}", file=sys.stderr))
    classes = load_classes(options.classes)
    refs = evaluable_refs(refs, config, options, say)      # before any model loads
    models = models or build_models(config, options.methods, say)
    num_classes = int(models.model.num_classes)
    settings = run_settings(config, options, num_classes)
    out = options.output
    out.mkdir(parents=True, exist_ok=True)
    _check_run_dir(out, settings)
    todo = [r for r in refs if not result_path(out, r.name).is_file()]
    if len(todo) < len(refs):
        say(f"resuming: {len(refs) - len(todo)} of {len(refs)} videos already done in {out}")
    from tqdm import tqdm

    with tqdm(todo, desc="videos", unit="video", disable=not options.progress) as bar:
        for ref in bar:
            result = evaluate_video(ref, models, config, options, classes, settings["key"],
                                    bar)
            save_video_result(out, result)
    names = {r.name for r in refs}
    results = [r for r in load_results(out) if r.name in names]
    return finish_report(out, results, settings, classes, options.plots)


def evaluable_refs(refs: Sequence[datasets.VideoRef], config: DittaConfig,
                   options: EvalOptions, say: Callable[[str], None]
                   ) -> list[datasets.VideoRef]:
    """Warn about what the scans found; leave out bags with nothing to evaluate (InputError
    when that leaves nothing at all)."""
    warmup_of = warmup_rule(config, options)
    kept = []
    for ref in refs:
        if ref.scan is None:
            kept.append(ref)
            continue
        for line in ref.scan.warnings():
            say(f"{ref.name}: {line}")
        if ref.scan.evaluated_frames(warmup_of) > 0:
            kept.append(ref)
        else:
            say(f"{ref.name}: nothing to evaluate (no segment of good frames is longer than "
                "its warm-up): skipped; `ditta-eval --check-only` shows the scan")
    if not kept:
        raise InputError(f"nothing to evaluate in {len(refs)} source(s): every bag lacks a "
                         "segment of good frames longer than its warm-up; run "
                         "`ditta-eval --check-only` for the scan")
    return kept


def finish_report(out: Path, results: Sequence[VideoResult], settings: Mapping[str, Any],
                  classes: ClassSet, plots_wanted: bool) -> dict[str, Any]:
    """Pool the finished videos into report.json/report.md and the overall plot."""
    num_classes = int(settings["num_classes"])
    names = _class_names(classes, num_classes)
    public = {k: v for k, v in settings.items() if k != "config"}
    public["config"] = settings.get("config", {})
    report = build_report(results, num_classes, names, public)
    write_report(out, report)
    if plots_wanted and results:
        from ditta_ros.tools import plots

        plots.plot_class_iou(pool(results, num_classes), names, out / "plots" / "class_iou.png")
    return report


def _class_names(classes: ClassSet, num_classes: int) -> list[str]:
    names = list(classes.names[:num_classes])
    return names + [f"class {c}" for c in range(len(names), num_classes)]


def merge(out: Path, shard_dirs: Sequence[Path], plots_wanted: bool = True) -> dict[str, Any]:
    """Pool the finished videos of several shard folders into ``out``'s report.

    Every shard must have run with the same settings; a video found in two shards must have
    the same result in both. Per-video plots are copied along.
    """
    if not shard_dirs:
        raise InputError("merge needs at least one shard folder")
    settings = _read_run_file(shard_dirs[0])
    by_name: dict[str, VideoResult] = {}
    for shard_dir in shard_dirs:
        shard_settings = _read_run_file(shard_dir)
        if shard_settings.get("key") != settings.get("key"):
            raise ConfigError(f"{shard_dir} ran with other settings than {shard_dirs[0]} "
                              f"(key {shard_settings.get('key')} != {settings.get('key')}); "
                              "only shards of one run can be merged")
        for result in load_results(shard_dir):
            seen = by_name.get(result.name)
            if seen is not None and seen.to_dict() != result.to_dict():
                raise InputError(f"video {result.name} has different results in two shards; "
                                 "merge shards of one run only")
            by_name[result.name] = result
        if (shard_dir / "plots").is_dir() and shard_dir.resolve() != out.resolve():
            shutil.copytree(shard_dir / "plots", out / "plots", dirs_exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", settings)
    results = [by_name[n] for n in sorted(by_name)]
    for result in results:
        if out.resolve() not in {d.resolve() for d in shard_dirs}:
            save_video_result(out, result)
    classes = load_classes(str(settings.get("classes", "vspw")))
    return finish_report(out, results, settings, classes, plots_wanted)


def _read_run_file(folder: Path) -> dict[str, Any]:
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise InputError(f"{folder} is not a ditta-eval output folder (no run.json)")
    try:
        data = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{run_file} is unreadable ({exc})") from exc
    if not isinstance(data, dict) or "key" not in data:
        raise InputError(f"{run_file} is not a ditta-eval run file")
    return data
