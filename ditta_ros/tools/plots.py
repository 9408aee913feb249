"""PNG plots of an evaluation (matplotlib, no display needed).

- :func:`plot_class_iou`: per-class IoU bars, one colour per method (overall).
- :func:`plot_over_time`: pixel accuracy per frame and the mVC8 window score over a video.
- :func:`plot_strip`: colour label strips: input, ground truth and every method, a few frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window (headless machines, clusters)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ditta_ros.labels import colorize  # noqa: E402
from ditta_ros.tools.report import METHOD_TITLES, MethodResult  # noqa: E402

MAX_BAR_CLASSES = 40


def _title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def plot_class_iou(totals: Mapping[str, MethodResult], class_names: Sequence[str],
                   path: Path) -> Path | None:
    """Grouped bars of per-class IoU (%), classes ordered by ground-truth pixels.

    Only classes present in the ground truth, at most the MAX_BAR_CLASSES most frequent.
    Returns None (and draws nothing) when no method has ground truth.
    """
    if not totals:
        return None
    first = next(iter(totals.values()))
    gt_pixels = first.confusion.gt_pixels
    present = np.flatnonzero(gt_pixels > 0)
    if present.size == 0:
        return None
    order = present[np.argsort(-gt_pixels[present], kind="stable")][:MAX_BAR_CLASSES]
    width = 0.8 / len(totals)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(order) * max(len(totals), 2) / 2),
                                    4.0))
    xs = np.arange(len(order))
    for k, (method, total) in enumerate(totals.items()):
        iou = np.nan_to_num(total.confusion.per_class_iou()[order]) * 100
        ax.bar(xs + (k - (len(totals) - 1) / 2) * width, iou, width,
               label=f"{_title(method)} (mIoU {100 * total.confusion.miou():.1f})")
    ax.set_xticks(xs)
    ax.set_xticklabels([class_names[c] if c < len(class_names) else str(c) for c in order],
                       rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU (classes by ground-truth area)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_over_time(video: str, warmup: int, methods: Mapping[str, MethodResult],
                   path: Path, positions: Sequence[int] | None = None) -> Path:
    """Accuracy per evaluated frame and mVC8 window score, per method, over one video.

    positions: the frame index of every evaluated frame (default: warmup, warmup + 1, ...;
    a video with rejected frames or several segments has gaps)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for method, result in methods.items():
        count = len(result.accuracy)
        xs = (np.asarray(positions[:count], np.float64) if positions is not None
              else warmup + np.arange(count, dtype=np.float64))
        acc = np.array([np.nan if a is None else 100 * a for a in result.accuracy])
        vc = np.array([np.nan if s is None else 100 * s for s in result.window_scores])
        top.plot(xs, acc, ".-" if positions is not None else "-", label=_title(method))
        bottom.plot(xs[:len(vc)], vc, label=_title(method))
    top.set_ylabel("pixel accuracy (%)")
    top.set_title(f"{video}: evaluated frames {warmup}.. (warm-up 0..{warmup - 1})"
                  if positions is None else f"{video}: evaluated frames (gaps: warm-ups of "
                  "later segments, rejected frames)")
    bottom.set_ylabel("mVC8 window (%)")
    bottom.set_xlabel("frame (window: its first frame)")
    top.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_strip(video: str, frame_ids: Sequence[int], frames_bgr: Sequence[np.ndarray],
               ground_truth: Sequence[np.ndarray | None] | None,
               predictions: Mapping[str, Sequence[np.ndarray]], palette: np.ndarray,
               path: Path) -> Path:
    """Rows: input, ground truth (when known), one per method; columns: the sampled frames."""
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("input", [f[..., ::-1] for f in frames_bgr])]
    if ground_truth is not None and any(g is not None for g in ground_truth):
        blank = np.zeros_like(frames_bgr[0])
        rows.append(("ground truth", [blank if g is None else colorize(g, palette)
                                      for g in ground_truth]))
    for method, preds in predictions.items():
        rows.append((_title(method), [colorize(p, palette) for p in preds]))
    height, width = frames_bgr[0].shape[:2]
    cell = 1.8
    fig, axes = plt.subplots(len(rows), len(frame_ids), squeeze=False,
                             figsize=(cell * len(frame_ids) * width / height + 1.2,
                                      cell * len(rows)))
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {frame_ids[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(video, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
