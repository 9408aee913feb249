"""Scene-change detector (engine/scene.py): the distances its thresholds are chosen from, its
detection delays and false triggers with the defaults, and its cost per frame.

Part 1, distances (synthetic multi-scene streams, ground-truth labels standing in for the
served labels; each size separately):

- **within**: appearance distance of each frame to the mean of the frames before it (the cut
  test) over long single scenes; and the drift distances (window vs the first window) of
  appearance and classes over the same scenes. The thresholds must sit above all of these.
- **cut**: the same distance on the first frame after a hard cut between two scenes.
- **across**: the drift distances of the first full window after a cut.
- **same place, later**: a jump of 5000 frames inside one scene (everything moved).
- **light**: a sudden change of light in one scene (dimmed to 60 %, or lit from one side).
- **fade**: 30-frame dissolves between two scenes: the largest cut distance inside the fade,
  and how many frames after the fade starts the drift fires with the defaults.

Part 2, with the defaults (StreamConfig()): the delay in frames from each hard cut to the
cut flag (0: the first frame of the new scene is flagged), and the false cuts and drifts
over the long single scenes.

Part 3, cost per frame at 480 x 854 (VSPW size) against the ISS model serving that frame
(StreamPredictor, plain branch, labels at frame size), interleaved, medians.

Usage: ``python bench/bench_scene.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments,
    command_line,
    machine_info,
    machine_line,
    median,
    now_utc,
    percentile,
    setup_device,
    write_results,
)

from ditta_ros.config import FusionConfig, ModelConfig, StreamConfig  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.fusion import StreamPredictor  # noqa: E402
from ditta_ros.engine.scene import (  # noqa: E402
    SceneDetector,
    appearance,
    class_distribution,
    total_variation,
)
from ditta_ros.synthetic import SceneStream, SyntheticVideo, lit  # noqa: E402

C = 4
WINDOW = StreamConfig().window


def _signals(images: list[np.ndarray], labels: list[np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([appearance(i) for i in images]),
            np.stack([class_distribution(y, C) for y in labels]))


def _cut_distance(looks: np.ndarray, t: int, since: int) -> float:
    """The detector's cut distance: min of the distance to the previous frame and to the
    mean of the window before."""
    lo = max(since, t - WINDOW)
    return min(total_variation(looks[t], looks[t - 1]),
               total_variation(looks[t], looks[lo:t].mean(axis=0)))


def _drift(vectors: np.ndarray, ref: np.ndarray, t: int) -> float:
    return total_variation(vectors[t - WINDOW + 1:t + 1].mean(axis=0), ref)


def distances(size: tuple[int, int], pairs: int, length: int) -> dict[str, Any]:
    h, w = size
    out: dict[str, list[float]] = {k: [] for k in (
        "within_cut", "within_look_drift", "within_class_drift", "cut", "across_look_drift",
        "across_class_drift", "same_place_later", "light_dim", "light_side", "fade_max_cut")}
    for p in range(pairs):
        a = SyntheticVideo(h, w, C, 3, seed=1000 + 2 * p)
        b = SyntheticVideo(h, w, C, 3, seed=1001 + 2 * p)
        items = [a.frame(t) for t in range(length)]
        looks, classes = _signals([i.image for i in items], [i.labels for i in items])
        look_ref, class_ref = looks[:WINDOW].mean(0), classes[:WINDOW].mean(0)
        for t in range(1, length):
            out["within_cut"].append(_cut_distance(looks, t, 0))
        for t in range(WINDOW - 1, length):
            out["within_look_drift"].append(_drift(looks, look_ref, t))
            out["within_class_drift"].append(_drift(classes, class_ref, t))
        after = [b.frame(t) for t in range(WINDOW)]
        look_b, class_b = _signals([i.image for i in after], [i.labels for i in after])
        both = np.concatenate([looks[-WINDOW:], look_b])
        out["cut"].append(_cut_distance(both, WINDOW, 0))
        out["across_look_drift"].append(total_variation(look_b.mean(0), look_ref))
        out["across_class_drift"].append(total_variation(class_b.mean(0), class_ref))
        later = appearance(a.frame(length + 5000).image)
        out["same_place_later"].append(total_variation(later, looks[-WINDOW:].mean(0)))
        last = items[-1].image
        out["light_dim"].append(total_variation(appearance(lit(last, 0.6, 0.6)),
                                                looks[-WINDOW:].mean(0)))
        out["light_side"].append(total_variation(appearance(lit(last, 0.5, 1.0)),
                                                 looks[-WINDOW:].mean(0)))
        fade = SceneStream((a, b), (WINDOW * 2, WINDOW * 4), fade=30)
        fl = np.stack([appearance(fade.frame(i).image) for i in range(len(fade))])
        out["fade_max_cut"].append(max(_cut_distance(fl, t, 0)
                                       for t in range(WINDOW * 2, WINDOW * 2 + 30)))
    summary: dict[str, Any] = {}
    for key, values in out.items():
        summary[key] = {"n": len(values), "min": float(np.min(values)),
                        "median": median(values), "p99": percentile(values, 99),
                        "max": float(np.max(values))}
    return summary


def with_defaults(size: tuple[int, int], pairs: int, length: int, config: StreamConfig
                  ) -> dict[str, Any]:
    """Delays and false triggers of a SceneDetector with ``config`` on hard cuts, fades and
    long single scenes."""
    h, w = size
    cut_delays: list[int | None] = []
    fade_cut_flags = 0
    fade_drift_delays: list[int | None] = []
    false_cuts = false_drifts = frames = 0
    for p in range(pairs):
        a = SyntheticVideo(h, w, C, 3, seed=1000 + 2 * p)
        b = SyntheticVideo(h, w, C, 3, seed=1001 + 2 * p)
        for fade in (0, 30):
            stream = SceneStream((a, b), (length, 60), fade=fade)
            det = SceneDetector(config, C)
            cut_at: int | None = None
            drift_at: int | None = None
            for i, f in enumerate(stream):
                cut = det.before(f.image)
                sig = det.after(f.labels)
                if i < stream.cuts[0]:
                    frames += int(fade == 0)
                    false_cuts += int(cut and fade == 0)
                    false_drifts += int(sig.drift and fade == 0)
                    continue
                if cut:
                    if fade:
                        fade_cut_flags += 1
                    if cut_at is None:
                        cut_at = i - stream.cuts[0]
                if sig.drift and drift_at is None:
                    drift_at = i - stream.cuts[0]
            if fade:
                fade_drift_delays.append(drift_at)
            else:
                cut_delays.append(cut_at)
    return {"cut_delays": cut_delays, "fade_cut_flags": fade_cut_flags,
            "fade_drift_delays": fade_drift_delays, "single_scene_frames": frames,
            "false_cuts": false_cuts, "false_drifts": false_drifts}


def cost(repeats: int, device: torch.device) -> dict[str, Any]:
    """Detector (before + after) vs the ISS model serving one 480 x 854 frame."""
    h, w = 480, 854
    video = SyntheticVideo(h, w, 124, 6, seed=3)
    frames = [video.frame(t) for t in range(repeats + 1)]
    result: dict[str, Any] = {"frame": f"{h} x {w}", "repeats": repeats}
    det = SceneDetector(StreamConfig(), 124)
    for variant in ("tiny", "b0"):
        model = build_model(ModelConfig(variant=variant, num_classes=124), device)
        predictor = StreamPredictor(model, ModelConfig(variant=variant, num_classes=124),
                                    FusionConfig(),
                                    device, use_addon=False)
        predictor.predict(frames[0].image)            # unmeasured: allocations
        t_iss, t_det = [], []
        for f in frames[1:]:
            start = time.perf_counter()
            labels, _ = predictor.predict(f.image)
            t_iss.append(time.perf_counter() - start)
            start = time.perf_counter()
            det.before(f.image)
            det.after(labels)
            t_det.append(time.perf_counter() - start)
        result[variant] = {"iss_ms": 1e3 * median(t_iss), "detector_ms": 1e3 * median(t_det),
                           "percent": 100 * median(t_det) / median(t_iss)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--skip-cost", action="store_true",
                        help="leave out part 3 (the ISS model at 480 x 854 is slow on a CPU)")
    args = parser.parse_args(argv)
    device = setup_device(args)
    pairs, length, repeats = (6, 300, 5) if args.quick else (12, 600, 15)
    config = StreamConfig()
    command = command_line("bench/bench_scene.py", argv)
    result: dict[str, Any] = {"when": now_utc(), "command": command,
                              "machine": machine_info(device), "config": config.__dict__}
    lines = [f"# Scene detector ({now_utc()})", "", machine_line(result["machine"]), "",
             f"Command: `{command}`", ""]
    for size in ((64, 96), (240, 320)):
        key = f"{size[0]}x{size[1]}"
        dist = distances(size, pairs, length)
        defaults = with_defaults(size, pairs, length, config)
        result[key] = {"distances": dist, "defaults": defaults}
        lines += [f"## {key}: {pairs} scene pairs, single scenes of {length} frames", "",
                  "| distance | n | min | median | p99 | max |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['min']:.3f} | {v['median']:.3f} | {v['p99']:.3f} "
                  f"| {v['max']:.3f} |" for k, v in dist.items()]
        lines += ["", f"With the defaults: {defaults}", ""]
    if args.skip_cost:
        markdown = "\n".join(lines)
        print(markdown)
        write_results("bench_scene", result, markdown, args.out)
        return 0
    c = cost(repeats, device)
    result["cost"] = c
    lines += ["## Cost per frame, 480 x 854, 124 classes", "",
              "| ISS model | ISS ms | detector ms | detector / ISS |", "|---|---|---|---|"]
    lines += [f"| {v} | {c[v]['iss_ms']:.1f} | {c[v]['detector_ms']:.3f} | "
              f"{c[v]['percent']:.2f} % |" for v in ("tiny", "b0")]
    markdown = "\n".join(lines)
    print(markdown)
    write_results("bench_scene", result, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
