"""One video's frames in an evaluation: its segments and what is scored, the per-frame
scoring of a method, and the optional per-frame outputs (colour dumps, output bag).

A video is evaluated segment by segment (:mod:`ditta_ros.tools.bagscan`): every segment is a
fresh stream with its own warm-up, and no mVC window spans a segment boundary or a rejected
frame. :class:`Scorer` is shared with the live mode.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.errors import ConfigError, InputError
from ditta_ros.labels import ClassSet, colorize
from ditta_ros.tools import datasets
from ditta_ros.tools.bags import BagWriter, label_encoding, make_image
from ditta_ros.tools.bagscan import Segment
from ditta_ros.tools.lazy import LazySequence
from ditta_ros.tools.report import METHODS, MethodResult, SegmentResult, VideoResult

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


def video_segments(video: datasets.Video) -> list[Segment]:
    """The segments to evaluate: the scan's (bags), else one segment of every frame."""
    if video.segments is not None:
        return video.segments
    first = video.frames[0]
    return [Segment(0, int(first.shape[0]), int(first.shape[1]), tuple(range(len(video))))]


def warmup_rule(config: DittaConfig, options: EvalOptions) -> Callable[[int], int]:
    """Frames of a segment -> its warm-up (``--warmup-frames`` or the warm-up ratio)."""
    from ditta_ros.engine.runner import warmup_length

    if options.warmup_frames is not None:
        fixed = options.warmup_frames
        return lambda frames: fixed
    ratio = config.adaptation.warmup_ratio
    return lambda frames: warmup_length(frames, ratio)


@dataclass
class VideoPlan:
    """The segments of one video, their warm-ups, and what is scored."""

    segments: list[tuple[Segment, int]]          # every segment with its warm-up
    evaluable: list[tuple[Segment, int]]         # those with frames after the warm-up
    positions: list[int]                         # reading positions of the scored frames


def plan_video(video: datasets.Video, config: DittaConfig, options: EvalOptions) -> VideoPlan:
    warmup_of = warmup_rule(config, options)
    segments = [(s, warmup_of(len(s))) for s in video_segments(video)]
    evaluable = [(s, w) for s, w in segments if w < len(s)]
    if not evaluable:
        longest = max((len(s) for s, _ in segments), default=0)
        warmup = f", warm-up {warmup_of(longest)}" if longest else ""
        raise InputError(f"video {video.name} has no segment longer than its warm-up "
                         f"({len(video)} frames, {len(segments)} segments of good frames, "
                         f"the longest {longest} frames{warmup}); nothing to evaluate "
                         "(lower --warmup-frames; `ditta-eval --check-only` shows the scan)")
    positions = [s.frames[j] for s, w in evaluable for j in range(w, len(s))]
    return VideoPlan(segments, evaluable, positions)


def segment_frames(video: datasets.Video, segment: Segment) -> LazySequence[np.ndarray]:
    return LazySequence(len(segment), lambda j: video.frames[segment.frames[j]])


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

    def break_windows(self) -> None:
        """No mVC window spans this point (a segment boundary, a rejected frame)."""
        for vc in self.result.consistency.values():
            vc.start_video()

    def finish(self) -> MethodResult:
        last = max(self._window, default=-1)
        self.result.window_scores = [self._window.get(i) for i in range(last + 1)]
        return self.result


def strip_indices(first: int, total: int, count: int) -> list[int]:
    if count <= 0 or total <= first:
        return []
    picks = np.linspace(first, total - 1, num=min(count, total - first))
    return sorted({int(round(p)) for p in picks})


class FrameOutputs:
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


class VideoScoring:
    """The scoring side of one video's evaluation: scorers, strips, counts."""

    def __init__(self, video: datasets.Video, plan: VideoPlan, options: EvalOptions,
                 num_classes: int, bar: Any) -> None:
        self.video, self.plan, self.bar = video, plan, bar
        self.plots_folder = options.output / "plots"
        self.results = {m: MethodResult.empty(num_classes) for m in options.methods}
        self.scorers = {m: Scorer(r) for m, r in self.results.items()}
        self.label_free = video.ground_truth is None
        if self.label_free:
            for r in self.results.values():
                r.notes.append("no ground truth: mVC measures prediction stability only")
        self.strip_ids = [plan.positions[k] for k in strip_indices(
            0, len(plan.positions), options.strip_frames if options.plots else 0)]
        self.strip: dict[str, list[np.ndarray]] = {m: [] for m in options.methods}
        self.strip_frames: list[np.ndarray] = []
        self.strip_gt: list[np.ndarray | None] = []
        self.labelled = self.mismatched = 0
        self.previous = -2

    def start_segment(self) -> None:
        """No mVC window spans a segment boundary."""
        self.previous = -2

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.video.name}: {text}")

    def score(self, t: int, preds: Mapping[str, np.ndarray], seconds: Mapping[str, float]
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Score every method's labels of frame ``t``; (frame, usable ground truth)."""
        if t != self.previous + 1:        # a new segment, or rejected frames in between
            for scorer in self.scorers.values():
                scorer.break_windows()
        self.previous = t
        video = self.video
        gt = video.ground_truth[t] if video.ground_truth is not None else None
        frame = video.frames[t]
        if gt is not None and gt.shape != frame.shape[:2]:
            gt, self.mismatched = None, self.mismatched + 1     # a label of another size
        self.labelled += gt is not None
        for m, labels in preds.items():
            self.scorers[m].add(labels, gt, self.label_free, seconds[m])
        if t in self.strip_ids:
            self.strip_frames.append(frame)
            self.strip_gt.append(gt)
            for m, labels in preds.items():
                self.strip[m].append(labels)
        self.status(f"frame {t + 1}/{len(video)}")
        return frame, gt

    def result(self, settings_key: str) -> VideoResult:
        plan, scan = self.plan, self.video.scan
        if self.mismatched:
            for r in self.results.values():
                r.notes.append(f"{self.mismatched} labels differ in size from their frame: "
                               "not scored")
        first = plan.evaluable[0][0]
        return VideoResult(
            self.video.name, len(self.video), sum(w for _, w in plan.evaluable),
            self.labelled, first.height, first.width,
            {m: s.finish() for m, s in self.scorers.items()}, settings_key,
            evaluated=len(plan.positions),
            rejected=scan.rejected_by_reason() if scan is not None else dict(
                self.video.rejected),
            segments=[SegmentResult(s.width, s.height, len(s), w if w < len(s) else 0,
                                    max(len(s) - w, 0)) for s, w in plan.segments],
            out_of_order=scan.out_of_order if scan is not None else 0,
            order=scan.order if scan is not None else "")

    def plot(self, result: VideoResult, classes: ClassSet) -> None:
        from ditta_ros.tools import plots

        name, plan = self.video.name, self.plan
        out = self.plots_folder
        warmup0 = plan.evaluable[0][1]
        simple = plan.positions == list(range(warmup0, warmup0 + len(plan.positions)))
        plots.plot_over_time(name, warmup0, result.methods, out / f"{name}_over_time.png",
                             None if simple else plan.positions)
        if self.strip_frames:
            plots.plot_strip(name, self.strip_ids, self.strip_frames, self.strip_gt,
                             self.strip, classes.palette, out / f"{name}_strip.png")
