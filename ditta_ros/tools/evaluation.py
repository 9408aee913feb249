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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.engine.errors import ConfigError, InputError
from ditta_ros.labels import ClassSet, colorize, load_classes
from ditta_ros.tools import datasets
from ditta_ros.tools.bags import BagWriter, label_encoding, make_image
from ditta_ros.tools.report import (
    METHODS,
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
DEFAULT_FPS = 30.0   # stamps given to frames of sources without time (folders, VSPW)


@dataclass(frozen=True)
class EvalOptions:
    """What to run and what to write (everything but the engine's own configuration)."""

    output: Path
    methods: tuple[str, ...] = METHODS
    warmup_frames: int | None = None     # None: config.adaptation.warmup_ratio percent
    classes: str = "vspw"                # class names and palette of the report and plots
    plots: bool = True
    strip_frames: int = 6
    dump_colors: bool = False
    output_bag: bool = False
    bag_storage: str = "mcap"
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown methods {unknown or '(none given)'}; choose from "
                              f"{', '.join(METHODS)}")
        if self.warmup_frames is not None and self.warmup_frames < 1:
            raise ConfigError(f"--warmup-frames must be >= 1, got {self.warmup_frames}")


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
        from ditta_ros.engine.teacher import build_sam2_teacher

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
@dataclass
class Scorer:
    """One method's metrics on one video, fed frame by frame (live mode uses it too)."""

    result: MethodResult
    _window: dict[int, float] = field(default_factory=dict)   # mVC8 window start -> score
    _k: int = 0                                                # evaluated frames so far

    def add(self, pred: np.ndarray, gt: np.ndarray | None, label_free: bool,
            seconds: float) -> None:
        res = self.result
        res.frames += 1
        res.inference_s += seconds
        if gt is None and not label_free:
            # No ground truth for this frame: windows cannot span it.
            for vc in res.consistency.values():
                vc.start_video()
            res.accuracy.append(None)
        else:
            if gt is not None:
                res.confusion.update(pred, gt)
                valid = (gt >= 0) & (gt < res.confusion.num_classes) & (gt != 255)
                res.accuracy.append(float((pred[valid] == gt[valid]).mean())
                                    if valid.any() else None)
            else:
                res.accuracy.append(None)
            # Without any ground truth every pixel counts as GT-constant: mVC then measures
            # how stable the predictions are.
            target = gt if gt is not None else np.zeros(pred.shape, np.int64)
            vc8 = res.consistency[8]
            before_sum, before_count = vc8.total, vc8.count
            for vc in res.consistency.values():
                vc.update(pred, target)
            if vc8.count > before_count:
                self._window[self._k - 8] = vc8.total - before_sum
        self._k += 1

    def finish(self) -> MethodResult:
        last = max(self._window, default=-1)
        self.result.window_scores = [self._window.get(i) for i in range(last + 1)]
        return self.result


def _method_iterators(name: str, models: Models, frames: Sequence[np.ndarray],
                      config: DittaConfig, warmup: int, result: MethodResult
                      ) -> Iterator[tuple[int, np.ndarray, float]]:
    """Start one method on a video (its warm-up work runs now) and yield its frames."""
    start = time.perf_counter()
    if name == "sam2-refine":
        from ditta_ros.engine.baselines import sam2_refine

        if models.teacher is None:
            raise ConfigError("sam2-refine needs SAM2: build the models with this method")
        refine = sam2_refine(models.model, models.teacher.propagator, frames, config, warmup)
        if refine.summary.reason:
            result.notes.append(refine.summary.reason)
        return ((f.index, f.labels, f.inference_s) for f in refine)
    from ditta_ros.engine.runner import run_w2f

    run = run_w2f(models.model, models.teacher if name == "ditta" else None, frames, config,
                  warmup=warmup, iss_only=name == "iss")
    if name == "ditta":
        result.adaptation_s = time.perf_counter() - start
        result.notes.append(run.summary.reason)
    return ((f.index, f.labels, f.inference_s) for f in run)


def strip_indices(first: int, total: int, count: int) -> list[int]:
    if count <= 0 or total <= first:
        return []
    picks = np.linspace(first, total - 1, num=min(count, total - first))
    return sorted({int(round(p)) for p in picks})


class _Outputs:
    """Optional per-frame outputs of one video: colour dumps and the output bag."""

    def __init__(self, out_dir: Path, video: datasets.Video, options: EvalOptions,
                 classes: ClassSet, num_classes: int) -> None:
        self.options, self.classes, self.video = options, classes, video
        self.encoding = label_encoding(num_classes)
        self.colors = out_dir / "colors" / video.name if options.dump_colors else None
        self.writer: BagWriter | None = None
        if options.output_bag:
            bag_dir = out_dir / "bags" / video.name
            if bag_dir.exists():          # a partial bag of an interrupted run
                shutil.rmtree(bag_dir)
            bag_dir.parent.mkdir(parents=True, exist_ok=True)
            self.writer = BagWriter(bag_dir, options.bag_storage)

    def frame(self, t: int, frame: np.ndarray, gt: np.ndarray | None,
              preds: Mapping[str, np.ndarray]) -> None:
        if self.colors is not None:
            for method, labels in preds.items():
                color = colorize(labels, self.classes.palette)              # RGB
                overlay = cv2.addWeighted(frame, 0.5, color[..., ::-1], 0.5, 0.0)
                folder = self.colors / method
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{t:06d}_labels.png"), color[..., ::-1])
                cv2.imwrite(str(folder / f"{t:06d}_overlay.jpg"), overlay)
        if self.writer is not None:
            self._bag_frame(self.writer, t, frame, gt, preds)

    def _bag_frame(self, writer: BagWriter, t: int, frame: np.ndarray, gt: np.ndarray | None,
                   preds: Mapping[str, np.ndarray]) -> None:
        bag = self.video.bag
        dtype = np.uint8 if self.encoding == "mono8" else np.uint16
        if bag is not None:
            conn, log_time, raw = bag.raw_image(t)
            stamp = bag.index[t].stamp
            writer.write_raw(bag.image_topic, conn.msgtype, raw, log_time)
        else:
            stamp = log_time = int(round(t * 1e9 / DEFAULT_FPS))
            writer.write("/camera/image_raw", make_image(frame, "bgr8", stamp), log_time)
        if gt is not None:
            writer.write("/ditta_eval/ground_truth",
                              make_image(gt.astype(dtype), self.encoding, stamp), log_time)
        for method, labels in preds.items():
            topic = f"/ditta_eval/{method.replace('-', '_')}"
            writer.write(f"{topic}/labels",
                              make_image(labels.astype(dtype), self.encoding, stamp), log_time)
            writer.write(f"{topic}/labels_color",
                              make_image(colorize(labels, self.classes.palette), "rgb8", stamp),
                              log_time)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    from ditta_ros.engine.runner import warmup_length

    total = len(video)
    warmup = (warmup_length(total, config.adaptation.warmup_ratio)
              if options.warmup_frames is None else options.warmup_frames)
    if warmup >= total:
        raise InputError(f"video {video.name} has {total} frames; a warm-up of {warmup} "
                         "leaves none to evaluate (lower --warmup-frames)")
    first = video.frames[0]
    results = {m: MethodResult.empty(num_classes) for m in options.methods}
    scorers = {m: Scorer(results[m]) for m in options.methods}
    label_free = video.ground_truth is None
    if label_free:
        for r in results.values():
            r.notes.append("no ground truth: mVC measures prediction stability only")
    streams = {}
    for m in options.methods:
        if bar is not None:
            bar.set_postfix_str(f"{video.name}: warm-up of {m}")
        streams[m] = _method_iterators(m, models, video.frames, config, warmup, results[m])
    strip_ids = strip_indices(warmup, total, options.strip_frames if options.plots else 0)
    strip: dict[str, list[np.ndarray]] = {m: [] for m in options.methods}
    strip_frames: list[np.ndarray] = []
    strip_gt: list[np.ndarray | None] = []
    outputs = _Outputs(options.output, video, options, classes, num_classes)
    labelled = 0
    try:
        for t in range(warmup, total):
            preds: dict[str, np.ndarray] = {}
            seconds: dict[str, float] = {}
            for m, stream in streams.items():
                index, labels, seconds[m] = next(stream)
                if index != t:
                    raise InputError(f"method {m} returned frame {index}, expected {t} "
                                     "(internal error)")
                preds[m] = labels
            gt = video.ground_truth[t] if video.ground_truth is not None else None
            labelled += gt is not None
            frame = video.frames[t]
            for m, labels in preds.items():
                scorers[m].add(labels, gt, label_free, seconds[m])
            if t in strip_ids:
                strip_frames.append(frame)
                strip_gt.append(gt)
                for m, labels in preds.items():
                    strip[m].append(labels)
            outputs.frame(t, frame, gt, preds)
            if bar is not None:
                bar.set_postfix_str(f"{video.name}: frame {t + 1}/{total}")
    finally:
        outputs.close()
    result = VideoResult(video.name, total, warmup, labelled, int(first.shape[0]),
                         int(first.shape[1]), {m: s.finish() for m, s in scorers.items()},
                         settings_key)
    if options.plots:
        from ditta_ros.tools import plots

        folder = options.output / "plots"
        plots.plot_over_time(video.name, warmup, result.methods,
                             folder / f"{video.name}_over_time.png")
        if strip_frames:
            plots.plot_strip(video.name, strip_ids, strip_frames, strip_gt, strip,
                             classes.palette, folder / f"{video.name}_strip.png")
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
