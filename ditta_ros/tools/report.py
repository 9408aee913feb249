"""Per-video results, their pooling, and the JSON + Markdown report in the paper's layout.

A run stores one JSON file per finished video (``<out>/videos/<name>.json``). Everything the
report shows is pooled from those files: confusion matrices add, mVC window sums and counts
add, inference seconds and frame counts add (ALGORITHM.md "Metrics": nothing is averaged per
video). So a resumed run, a merge of shards and a single run give the same report.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ditta_ros.engine.metrics import ConfusionMatrix, VideoConsistency
from ditta_ros.errors import InputError

METHODS = ("iss", "ditta", "sam2-refine")
METHOD_TITLES = {"iss": "ISS frame by frame", "ditta": "DiTTA",
                 "sam2-refine": "SAM2 zero-shot refinement", "live": "ditta_node (live)"}
VC_WINDOWS = (8, 16)
RESULT_VERSION = 1


@dataclass
class MethodResult:
    """One method on one video (or pooled over videos)."""

    confusion: ConfusionMatrix
    consistency: dict[int, VideoConsistency]     # n -> accumulator (8 and 16)
    frames: int = 0                  # evaluated frames
    inference_s: float = 0.0         # model time of the evaluated frames
    adaptation_s: float = 0.0        # warm-up work before the first evaluated frame
    latencies_s: list[float] = field(default_factory=list)   # live mode: end to end
    dropped: int = 0                 # live mode: good frames the node did not answer
    rejected: int = 0                # live mode: bad frames (the scan's), no output expected
    wall_s: float = 0.0              # live mode: first frame sent -> last labels received
    notes: list[str] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)   # per evaluated frame
    window_scores: list[float | None] = field(default_factory=list)  # mVC8, per frame

    @classmethod
    def empty(cls, num_classes: int) -> MethodResult:
        return cls(ConfusionMatrix(num_classes), {n: VideoConsistency(n) for n in VC_WINDOWS})

    def merge(self, other: MethodResult) -> None:
        self.confusion.merge(other.confusion)
        for n, vc in self.consistency.items():
            vc.merge(other.consistency[n])
        self.frames += other.frames
        self.inference_s += other.inference_s
        self.adaptation_s += other.adaptation_s
        self.latencies_s.extend(other.latencies_s)
        self.dropped += other.dropped
        self.rejected += other.rejected
        self.wall_s += other.wall_s

    def summary(self) -> dict[str, Any]:
        """The numbers of the report: percentages, FPS, seconds; NaN -> None."""
        out: dict[str, Any] = {
            "miou": _pct(self.confusion.miou()), "wiou": _pct(self.confusion.wiou()),
            "accuracy": _pct(self.confusion.accuracy()),
            **{f"mvc{n}": _pct(vc.value()) for n, vc in self.consistency.items()},
            "fps": self.frames / self.inference_s if self.inference_s > 0 else None,
            "frames": self.frames, "inference_s": self.inference_s,
            "adaptation_s": self.adaptation_s,
        }
        if self.latencies_s or self.dropped or self.wall_s:
            lat = np.array(self.latencies_s, np.float64)
            total = self.frames + self.dropped
            out.update({"latency_mean_ms": float(lat.mean() * 1e3) if lat.size else None,
                        "latency_p95_ms": float(np.percentile(lat, 95) * 1e3)
                        if lat.size else None,
                        "processed": self.frames, "dropped": self.dropped,
                        "rejected": self.rejected,
                        "drop_share": self.dropped / total if total else 0.0,
                        "wall_s": self.wall_s,
                        # processed frames per second of wall-clock time (the node's real
                        # throughput, as seen from outside)
                        "fps": self.frames / self.wall_s if self.wall_s > 0 else None})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"confusion": self.confusion.to_dict(),
                "consistency": {str(n): vc.to_dict() for n, vc in self.consistency.items()},
                "frames": self.frames, "inference_s": self.inference_s,
                "adaptation_s": self.adaptation_s, "latencies_s": self.latencies_s,
                "dropped": self.dropped, "rejected": self.rejected, "wall_s": self.wall_s,
                "notes": self.notes, "accuracy": self.accuracy,
                "window_scores": self.window_scores}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodResult:
        try:
            return cls(ConfusionMatrix.from_dict(data["confusion"]),
                       {int(n): VideoConsistency.from_dict(v)
                        for n, v in data["consistency"].items()},
                       int(data["frames"]), float(data["inference_s"]),
                       float(data["adaptation_s"]), list(data.get("latencies_s", [])),
                       int(data.get("dropped", 0)), int(data.get("rejected", 0)),
                       float(data.get("wall_s", 0.0)), list(data.get("notes", [])),
                       list(data.get("accuracy", [])), list(data.get("window_scores", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed method result ({exc!r})") from exc


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


@dataclass
class SegmentResult:
    """One segment of a video (a run of frames of one size): what was evaluated on it."""

    width: int
    height: int
    frames: int                      # good frames of the segment
    warmup: int                      # its own warm-up (0 when not evaluated)
    evaluated: int                   # frames scored (0: too short for its warm-up)

    def to_dict(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height, "frames": self.frames,
                "warmup": self.warmup, "evaluated": self.evaluated}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentResult:
        return cls(int(data["width"]), int(data["height"]), int(data["frames"]),
                   int(data["warmup"]), int(data["evaluated"]))


@dataclass
class VideoResult:
    """Every method on one video, plus what the run saw of it."""

    name: str
    frames: int                      # T: every frame of the source (bags: image messages)
    warmup: int                      # warm-up frames (over all segments), not evaluated
    labelled: int                    # evaluated frames with ground truth
    height: int
    width: int
    methods: dict[str, MethodResult]
    settings_key: str = ""           # fingerprint of the run settings (resume/merge check)
    evaluated: int | None = None     # frames scored; None (older results): frames - warmup
    rejected: dict[str, int] = field(default_factory=dict)   # reason kind -> bad frames
    segments: list[SegmentResult] = field(default_factory=list)
    out_of_order: int = 0            # bags: records out of stamp order
    order: str = ""                  # bags: "stamp" or "record"

    @property
    def scored(self) -> int:
        return self.frames - self.warmup if self.evaluated is None else self.evaluated

    def to_dict(self) -> dict[str, Any]:
        return {"version": RESULT_VERSION, "video": self.name, "frames": self.frames,
                "warmup": self.warmup, "labelled": self.labelled, "height": self.height,
                "width": self.width, "settings_key": self.settings_key,
                "evaluated": self.scored, "rejected": dict(self.rejected),
                "segments": [s.to_dict() for s in self.segments],
                "out_of_order": self.out_of_order, "order": self.order,
                "methods": {m: r.to_dict() for m, r in self.methods.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoResult:
        try:
            if int(data["version"]) != RESULT_VERSION:
                raise InputError(f"result version {data['version']} is not {RESULT_VERSION}")
            evaluated = data.get("evaluated")
            return cls(str(data["video"]), int(data["frames"]), int(data["warmup"]),
                       int(data["labelled"]), int(data["height"]), int(data["width"]),
                       {m: MethodResult.from_dict(r) for m, r in data["methods"].items()},
                       str(data.get("settings_key", "")),
                       None if evaluated is None else int(evaluated),
                       {str(k): int(v) for k, v in data.get("rejected", {}).items()},
                       [SegmentResult.from_dict(s) for s in data.get("segments", [])],
                       int(data.get("out_of_order", 0)), str(data.get("order", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed video result ({exc!r})") from exc


# -- files -----------------------------------------------------------------------------------
def result_path(out_dir: Path, video: str) -> Path:
    return out_dir / "videos" / f"{video}.json"


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash never leaves a half-written (seemingly finished) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)


def save_video_result(out_dir: Path, result: VideoResult) -> Path:
    path = result_path(out_dir, result.name)
    write_json(path, result.to_dict())
    return path


def load_video_result(path: Path) -> VideoResult:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read video result {path} ({exc}); delete it to redo the "
                         "video") from exc
    try:
        return VideoResult.from_dict(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}; delete it to redo the video") from exc


def load_results(out_dir: Path) -> list[VideoResult]:
    """Every finished video of a run folder, sorted by name."""
    folder = out_dir / "videos"
    if not folder.is_dir():
        return []
    return sorted((load_video_result(p) for p in folder.glob("*.json")), key=lambda r: r.name)


# -- pooling and the report ------------------------------------------------------------------
def pool(results: Iterable[VideoResult], num_classes: int) -> dict[str, MethodResult]:
    """Method -> totals over all videos (confusion matrices and mVC counts add)."""
    totals: dict[str, MethodResult] = {}
    for video in results:
        for method, result in video.methods.items():
            totals.setdefault(method, MethodResult.empty(num_classes)).merge(result)
    return totals


def build_report(results: Sequence[VideoResult], num_classes: int, class_names: Sequence[str],
                 settings: Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable report: settings, overall and per-video numbers per method."""
    totals = pool(results, num_classes)
    overall = {}
    for method, total in _ordered(totals):
        summary = total.summary()
        iou = total.confusion.per_class_iou()
        summary["per_class_iou"] = {class_names[c] if c < len(class_names) else str(c):
                                    100.0 * float(iou[c])
                                    for c in range(num_classes) if not math.isnan(iou[c])}
        summary["videos"] = sum(1 for r in results if method in r.methods)
        overall[method] = summary
    videos = {r.name: {"frames": r.frames, "warmup": r.warmup, "labelled": r.labelled,
                       "evaluated": r.scored, "rejected": dict(r.rejected),
                       "frames_rejected": sum(r.rejected.values()),
                       "segments": [s.to_dict() for s in r.segments],
                       "out_of_order": r.out_of_order, "order": r.order,
                       "methods": {m: {**res.summary(), "notes": res.notes}
                                   for m, res in _ordered(r.methods)}}
              for r in results}
    rejected: dict[str, int] = {}
    for r in results:
        for kind, n in r.rejected.items():
            rejected[kind] = rejected.get(kind, 0) + n
    return {"settings": dict(settings), "videos_evaluated": len(results),
            "frames": sum(r.frames for r in results),
            "frames_evaluated": sum(r.scored for r in results),
            "frames_rejected": sum(rejected.values()),
            "rejected": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
            "segments": sum(max(len(r.segments), 1) for r in results),
            "overall": overall, "videos": videos}


def _ordered(methods: Mapping[str, MethodResult]) -> list[tuple[str, MethodResult]]:
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(methods.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _frames_lines(report: Mapping[str, Any]) -> list[str]:
    """The frames behind the numbers: rejected per reason, segments, ordering."""
    lines = [f"{report['videos_evaluated']} videos, {report.get('frames', '?')} frames: "
             f"{report['frames_evaluated']} evaluated (every method on the same post-warm-up "
             f"frames of every segment), {report.get('frames_rejected', 0)} rejected."]
    rejected = report.get("rejected", {})
    if rejected:
        lines += ["", "Rejected frames (the node's reasons; never scored, never fatal):", ""]
        lines += [f"- {n} x {kind}" for kind, n in rejected.items()]
    notes = []
    for name, v in report["videos"].items():
        segments = v.get("segments", [])
        parts = []
        if len(segments) > 1:
            parts.append(f"{len(segments)} segments: " + ", ".join(
                f"{s['width']}x{s['height']} {s['frames']} frames ("
                + (f"warm-up {s['warmup']}, {s['evaluated']} evaluated)" if s["evaluated"]
                   else "too short: not evaluated)") for s in segments))
        if v.get("frames_rejected"):
            parts.append(f"{v['frames_rejected']} rejected")
        if v.get("out_of_order"):
            parts.append(f"{v['out_of_order']} records out of stamp order, read in "
                         f"{v.get('order') or 'stamp'} order")
        if parts:
            notes.append(f"- {name}: " + "; ".join(parts))
    if notes:
        lines += ["", "Per video:", "", *notes]
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the paper's table, then one row per video and method."""
    settings = report["settings"]
    warmup = settings.get("warmup", "")
    live = any("drop_share" in s for s in report["overall"].values())
    head = "| warm-up | method | FPS | mIoU | wIoU | mVC8 | mVC16 | adaptation s |"
    rule = "|---|---|---|---|---|---|---|---|"
    if live:
        head += " latency mean ms | latency p95 ms | processed | dropped | rejected |"
        rule += "---|---|---|---|---|"
    lines = ["# ditta-eval report", "", *_frames_lines(report), "",
             "## Overall (paper layout; metrics in %)", ""]
    if live:
        lines += ["Live: FPS = frames the node answered per second of wall-clock time (first "
                  "frame sent to last labels received); dropped = good frames it did not "
                  "answer; rejected = bad frames (no answer expected).", ""]
    lines += [head, rule]
    for method, s in report["overall"].items():
        row = (f"| {warmup} | {METHOD_TITLES.get(method, method)} | {_cell(s['fps'])} | "
               f"{_cell(s['miou'])} | {_cell(s['wiou'])} | {_cell(s['mvc8'])} | "
               f"{_cell(s['mvc16'])} | {_cell(s['adaptation_s'], 1)} |")
        if live:
            row += (f" {_cell(s.get('latency_mean_ms'), 1)} | "
                    f"{_cell(s.get('latency_p95_ms'), 1)} | {_cell(s.get('processed'))} | "
                    f"{_cell(s.get('dropped'))} "
                    f"({_cell(100 * s['drop_share'] if 'drop_share' in s else None, 1)} %) | "
                    f"{_cell(s.get('rejected'))} |")
        lines.append(row)
    lines += ["", "## Per video", "",
              "| video | frames | warm-up | method | FPS | mIoU | wIoU | mVC8 | mVC16 | "
              "adaptation s | notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in report["videos"].items():
        for method, s in v["methods"].items():
            lines.append(
                f"| {name} | {v['frames']} | {v['warmup']} | {method} | {_cell(s['fps'])} | "
                f"{_cell(s['miou'])} | {_cell(s['wiou'])} | {_cell(s['mvc8'])} | "
                f"{_cell(s['mvc16'])} | {_cell(s['adaptation_s'], 1)} | "
                f"{'; '.join(s['notes'])} |")
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=1), "```", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json(json_path, report)
    md_path.write_text(markdown(report))
    return json_path, md_path
