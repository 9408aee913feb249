"""``ditta-eval --as-stream``: several videos joined into one stream, as a robot sees them.

The videos (scenes) are played back to back as one stream through a
:class:`~ditta_ros.engine.session.Session`, once per method:

- ``iss``: the frozen ISS model frame by frame;
- ``once``: DiTTA with ``StreamConfig.policy = once``: one adaptation, on the first
  warm-up, kept for the whole stream (the paper's protocol applied to a stream);
- ``on_scene_change``: DiTTA re-adapting after cuts and drifts (engine/policy.py).

Every frame with ground truth is scored (the warm-up frames too: on a stream they are
served like any other), per scene and overall, with mIoU, wIoU and pixel accuracy; and per
scene over the frames after its first ``warmup_frames`` (the W2F view of each scene). Each
adaptation is listed with the frame and scene where its warm-up started, its reason, and
the frame from which it served.

Pacing: the stream waits for each adaptation to end before the next frame (as a fast
accelerator would let it), so results do not depend on this machine's speed; frames are
stamped ``index / fps`` for the policy's cooldown and period. A stream is one unit of work
(no ``--shard``). Results: ``stream_report.json``, ``stream_report.md`` and a timeline plot
``stream_timeline.png`` in the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ditta_ros.config import DittaConfig
from ditta_ros.engine.metrics import ConfusionMatrix
from ditta_ros.engine.types import Phase, SessionStatus
from ditta_ros.errors import InputError
from ditta_ros.tools.datasets import VideoRef

STREAM_METHODS = ("iss", "once", "on_scene_change")
WAIT_S = 24 * 3600.0       # an adaptation that takes longer than this is broken, not slow


@dataclass(frozen=True)
class AdaptationEvent:
    """One adaptation of a stream run."""

    start_frame: int            # stream index of the warm-up's first frame
    scene: int                  # scene of that frame
    reason: str                 # startup, cut, drift, period, service
    ready_frame: int | None     # first frame it served (None: failed or superseded)
    failed: bool


@dataclass
class MethodRun:
    """One method over the whole stream."""

    method: str
    scenes: list[ConfusionMatrix]
    after_warmup: list[ConfusionMatrix]
    overall: ConfusionMatrix
    accuracy: list[float | None] = field(default_factory=list)   # per frame, None: no GT
    events: list[AdaptationEvent] = field(default_factory=list)
    scene_starts: list[int] = field(default_factory=list)       # stream index of each scene
    seconds: float = 0.0

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "method": self.method, "seconds": self.seconds,
            "overall": _scores(self.overall),
            "scenes": [{"name": n, **_scores(c), "after_warmup": _scores(a)}
                       for n, c, a in zip(names, self.scenes, self.after_warmup)],
            "adaptations": [asdict(e) for e in self.events]}


def _scores(confusion: ConfusionMatrix) -> dict[str, float | int]:
    return {"miou": confusion.miou(), "wiou": confusion.wiou(),
            "accuracy": confusion.accuracy(), "pixels": int(confusion.gt_pixels.sum())}


def _frames(refs: Sequence[VideoRef]) -> Iterator[tuple[int, int, np.ndarray, Any]]:
    """(stream index, scene, frame, ground truth or None) over the videos in order."""
    index = 0
    for scene, ref in enumerate(refs):
        video = ref.open()
        try:
            for t in range(len(video)):
                gt = video.ground_truth[t] if video.ground_truth is not None else None
                yield index, scene, video.frames[t], gt
                index += 1
        finally:
            video.close()


class _EventLog:
    """Adaptation events from the session's status after each frame."""

    def __init__(self) -> None:
        self.events: list[AdaptationEvent] = []
        self._started = self._done = self._failed = 0
        self._open: tuple[int, int, str] | None = None

    def update(self, status: SessionStatus, index: int, scene: int) -> None:
        if status.phase is Phase.WARMUP and status.warmup_collected == 1:
            self._close(None, failed=False)          # a new warm-up supersedes the old
            self._open = (index, scene, status.adaptation_reason.value)
        if status.adaptations_done > self._done:
            self._close(index + 1, failed=False)
        elif status.consecutive_failures > self._failed:
            self._close(None, failed=True)
        self._done, self._failed = status.adaptations_done, status.consecutive_failures

    def _close(self, ready: int | None, failed: bool) -> None:
        if self._open is not None:
            self.events.append(AdaptationEvent(*self._open, ready, failed))
        self._open = None


def run_method(method: str, refs: Sequence[VideoRef], config: DittaConfig, model: Any,
               teacher: Any, fps: float, num_classes: int,
               progress: Callable[[int], None] | None = None) -> MethodRun:
    """Play the joined stream through one method (see the module docstring)."""
    from ditta_ros.engine.fusion import StreamPredictor
    from ditta_ros.engine.session import Session

    run = MethodRun(method, [ConfusionMatrix(num_classes) for _ in refs],
                    [ConfusionMatrix(num_classes) for _ in refs], ConfusionMatrix(num_classes))
    warmup = config.adaptation.warmup_frames
    log = _EventLog()
    start = time.perf_counter()
    session = None
    iss = None
    if method == "iss":
        iss = StreamPredictor(model, config.model, config.fusion, config.model.device, False)
    else:
        session = Session(model, teacher, config.replace(stream={"policy": method}))
    try:
        scene_start = 0
        last_scene = -1
        for index, scene, frame, gt in _frames(refs):
            if scene != last_scene:
                scene_start, last_scene = index, scene
                run.scene_starts.append(index)
            if session is None:
                assert iss is not None
                labels = iss.predict(frame)[0]
            else:
                labels = session.push(frame, stamp=index / fps).labels
                if session.status().phase is Phase.ADAPTING:
                    session.wait_for_phase({Phase.ADAPTED, Phase.FAILED}, WAIT_S)
                log.update(session.status(), index, scene)
            accuracy = None
            if gt is not None:
                run.scenes[scene].update(labels, gt)
                run.overall.update(labels, gt)
                if index - scene_start >= warmup:
                    run.after_warmup[scene].update(labels, gt)
                valid = gt != 255
                accuracy = float((labels[valid] == gt[valid]).mean()) if valid.any() else None
            run.accuracy.append(accuracy)
            if progress is not None:
                progress(1)
    finally:
        if session is not None:
            session.close()
    run.events = log.events
    run.seconds = time.perf_counter() - start
    return run


def evaluate_stream(refs: Sequence[VideoRef], config: DittaConfig, out: Path,
                    methods: Sequence[str] = STREAM_METHODS, fps: float = 30.0,
                    progress: bool = True, warn: Callable[[str], None] = print
                    ) -> dict[str, Any]:
    """Run every method over the joined stream; write the report files; return the report."""
    from ditta_ros.tools.evaluation import build_models

    unknown = [m for m in methods if m not in STREAM_METHODS]
    if unknown or not methods:
        raise InputError(f"--as-stream methods must be among {', '.join(STREAM_METHODS)}; "
                         f"got {', '.join(methods) or '(none)'}")
    if not refs:
        raise InputError("--as-stream needs at least one video")
    needs_teacher = any(m != "iss" for m in methods)
    models = build_models(config, ["ditta"] if needs_teacher else ["iss"], warn)
    num_classes = int(models.model.num_classes)
    names = [r.name for r in refs]
    runs = []
    for method in methods:
        bar = _bar(progress, method)
        runs.append(run_method(method, refs, config, models.model, models.teacher, fps,
                               num_classes, bar.update if bar is not None else None))
        if bar is not None:
            bar.close()
    report = {"scenes": names, "fps": fps, "warmup_frames": config.adaptation.warmup_frames,
              "stream": asdict(config.stream),
              "scene_starts": runs[0].scene_starts,
              "methods": [r.summary(names) for r in runs]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "stream_report.md").write_text(markdown(report) + "\n")
    plot_timeline(runs, runs[0].scene_starts, out / "stream_timeline.png")
    return report


def _bar(progress: bool, method: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(desc=f"stream {method}", unit="frame")


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The stream report as Markdown: overall, per scene, and the adaptations."""
    lines = [f"# Stream evaluation: {len(report['scenes'])} videos as one stream", "",
             f"Policy settings: {report['stream']}; warm-up {report['warmup_frames']} frames; "
             f"stamps at {report['fps']} frames/s.", "",
             "| method | mIoU | wIoU | accuracy | adaptations | seconds |",
             "|---|---|---|---|---|---|"]
    for m in report["methods"]:
        o = m["overall"]
        lines.append(f"| {m['method']} | {_pct(o['miou'])} | {_pct(o['wiou'])} | "
                     f"{_pct(o['accuracy'])} | {len(m['adaptations'])} | {m['seconds']:.1f} |")
    lines += ["", "## Per scene (mIoU: all frames / after the scene's first warm-up frames)", "",
              "| scene | " + " | ".join(m["method"] for m in report["methods"]) + " |",
              "|---|" + "---|" * len(report["methods"])]
    for i, name in enumerate(report["scenes"]):
        cells = [f"{_pct(m['scenes'][i]['miou'])} / {_pct(m['scenes'][i]['after_warmup']['miou'])}"
                 for m in report["methods"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Adaptations", "", "| method | warm-up from frame | scene | reason | "
              "serving from frame | failed |", "|---|---|---|---|---|---|"]
    for m in report["methods"]:
        for e in m["adaptations"]:
            lines.append(f"| {m['method']} | {e['start_frame']} | {e['scene']} | {e['reason']} "
                         f"| {e['ready_frame'] if e['ready_frame'] is not None else '-'} | "
                         f"{'yes' if e['failed'] else 'no'} |")
    return "\n".join(lines)


def plot_timeline(runs: Sequence[MethodRun], scene_starts: Sequence[int], path: Path) -> None:
    """Pixel accuracy per frame for each method, scene starts as dashed lines, adaptation
    starts as triangles (labelled with their reason) and their first served frame as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.8 * len(runs) + 0.6), sharex=True,
                             squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        acc = np.array([np.nan if a is None else a for a in run.accuracy], dtype=float)
        ax.plot(np.arange(acc.size), acc, lw=0.8)
        for s in scene_starts[1:]:
            ax.axvline(s, color="k", ls="--", lw=0.8)
        for e in run.events:
            ax.plot([e.start_frame], [0.02], marker="^", color="C3" if e.failed else "C2")
            ax.annotate(e.reason, (e.start_frame, 0.06), fontsize=7)
            if e.ready_frame is not None:
                ax.plot([e.ready_frame], [0.02], marker="o", color="C2", ms=4)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(run.method, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("stream frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stream_main(args: Any, config: DittaConfig, refs: Sequence[VideoRef]) -> int:
    """``ditta-eval --as-stream``, from ditta-eval's parsed arguments."""
    import sys

    from ditta_ros.tools.evaluation import select_videos
    from ditta_ros.tools.report import METHODS

    if args.shard is not None:
        raise InputError("--as-stream evaluates one stream, one unit of work: run it without "
                         "--shard (shard over several streams by running one job per stream)")
    if args.live:
        raise InputError("--as-stream and --live cannot be combined")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.methods == ",".join(METHODS):
        methods = STREAM_METHODS          # ditta-eval's default list: the stream default
    if args.warmup_frames is not None:
        config = config.replace(adaptation={"warmup_frames": args.warmup_frames})
    selected = select_videos(refs, args.videos, None)
    report = evaluate_stream(selected, config, args.output, methods, args.stream_fps,
                             not args.no_progress,
                             warn=lambda text: print(f"ditta-eval: {text}", file=sys.stderr))
    print(markdown(report))
    print(f"\nreport: {args.output / 'stream_report.md'}, stream_report.json and "
          "stream_timeline.png")
    return 0
