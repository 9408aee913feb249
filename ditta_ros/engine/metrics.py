"""Evaluation metrics: mIoU, wIoU and mVC_n (ALGORITHM.md, "Metrics").

Both accumulators are mergeable and serialise to plain JSON-able dicts, so an evaluation can
be sharded over processes or machines and pooled afterwards. Everything is vectorised over
pixels; nothing loops over pixels in Python.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ditta_ros.errors import InputError

IGNORE = 255


def vspw_ground_truth(raw: np.ndarray, num_classes: int) -> np.ndarray:
    """VSPW raw label image (H, W) -> class ids (H, W) int64 with 255 = ignore.

    Raw 0 (the "others" label) and raw 255 are ignored; class = raw - 1; classes >= C are
    ignored too.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise InputError(f"VSPW ground truth must be a single-channel (H, W) image, got shape "
                         f"{raw.shape}; read the PNG as is (palette indices), not as colour")
    if not np.issubdtype(raw.dtype, np.integer):
        raise InputError(f"VSPW ground truth must be an integer image, got dtype {raw.dtype}")
    cls = raw.astype(np.int64) - 1
    cls[(raw == 0) | (raw == IGNORE) | (cls >= num_classes)] = IGNORE
    return cls


def _as_label_array(name: str, array: Any) -> np.ndarray:
    out = np.asarray(array)
    if not np.issubdtype(out.dtype, np.integer):
        raise InputError(f"{name} must hold integer class ids, got dtype {out.dtype}")
    return out


class ConfusionMatrix:
    """A (C, C) float64 confusion matrix: rows = ground truth, columns = prediction.

    Ground-truth pixels equal to ``ignore_index``, negative or >= C are left out. One matrix
    accumulates over every evaluated frame of every video; nothing is averaged per video.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.float64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one frame (or any batch of frames): ``pred`` and ``gt`` of one shape."""
        pred = _as_label_array("pred", pred)
        gt = _as_label_array("gt", gt)
        if pred.shape != gt.shape:
            raise InputError(f"prediction shape {pred.shape} differs from ground truth shape "
                             f"{gt.shape}; resize predictions to the ground truth's size")
        c = self.num_classes
        valid = (gt != self.ignore_index) & (gt >= 0) & (gt < c)
        p = pred[valid].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= c):
            raise InputError(f"predictions must be class ids in [0, {c}), got values in "
                             f"[{p.min()}, {p.max()}]")
        counts = np.bincount(gt[valid].astype(np.int64) * c + p, minlength=c * c)
        self.matrix += counts.reshape(c, c)

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes:
            raise InputError(f"cannot merge confusion matrices of {other.num_classes} and "
                             f"{self.num_classes} classes")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (in place); returns self."""
        self._check_compatible(other)
        self.matrix += other.matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    @property
    def gt_pixels(self) -> np.ndarray:
        """(C,) valid ground-truth pixels per class."""
        return self.matrix.sum(axis=1)

    def per_class_iou(self) -> np.ndarray:
        """(C,) IoU per class; NaN for classes absent from the ground truth."""
        tp = np.diag(self.matrix)
        gt = self.matrix.sum(axis=1)
        union = gt + self.matrix.sum(axis=0) - tp
        iou = np.full(self.num_classes, np.nan)
        present = gt > 0
        iou[present] = tp[present] / union[present]
        return iou

    def miou(self) -> float:
        """Mean IoU over classes whose ground-truth row is non-empty (NaN if there is none).

        A class that is predicted but absent from the ground truth does not count.
        """
        iou = self.per_class_iou()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    def wiou(self) -> float:
        """IoU weighted by each class's share of the valid ground-truth pixels."""
        gt = self.gt_pixels
        total = gt.sum()
        if total == 0:
            return float("nan")
        iou = np.nan_to_num(self.per_class_iou(), nan=0.0)
        return float((gt / total * iou).sum())

    def accuracy(self) -> float:
        """Pixel accuracy over valid ground-truth pixels (NaN if there is none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (counts as a nested list of floats)."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfusionMatrix:
        """Inverse of :meth:`to_dict`; raises InputError for a malformed dict."""
        try:
            out = cls(int(data["num_classes"]), int(data.get("ignore_index", IGNORE)))
            matrix = np.asarray(data["matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a confusion matrix dict ({exc!r}); expected keys "
                             "num_classes, ignore_index, matrix") from exc
        if matrix.shape != out.matrix.shape:
            raise InputError(f"confusion matrix has shape {matrix.shape}, expected "
                             f"{out.matrix.shape} for {out.num_classes} classes")
        out.matrix[...] = matrix
        return out


def _extend_runs(runs: np.ndarray, same: np.ndarray, cap: int) -> np.ndarray:
    """Per-pixel run lengths after one more frame: +1 where unchanged, else 1; at most cap."""
    return np.where(same, np.minimum(runs + 1, cap), 1).astype(np.int32)


class VideoConsistency:
    """mVC_n: temporal consistency of predictions over windows of n evaluated frames.

    For a window of n consecutive frames of one video, a pixel is GT-constant if its ground
    truth is identical in all n frames (a pixel ignored in all n frames counts too); the
    window's score is |prediction constant AND GT-constant| / |GT-constant|; windows with no
    GT-constant pixel are skipped. Window starts satisfy i < L - n (L = evaluated frames of
    the video), i.e. the last full window is not counted, as in the reference. The value is
    the mean over all windows of all videos pooled.

    Streaming: instead of keeping the last n frames, each pixel keeps the length of the run
    of identical values ending at the current frame (for GT and for the prediction); the
    window ending at the current frame is constant at a pixel iff that run is >= n. This is
    exactly the same test with O(H x W) state, whatever n. The score of the window ending at
    the current frame stays pending and is committed only when a further frame of the same
    video arrives, which implements i < L - n. ``start_video`` discards the pending window.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise InputError(f"mVC window length n must be >= 1, got {n}")
        self.n = n
        self.total = 0.0          # sum of committed window scores
        self.count = 0            # number of committed windows
        self._reset_video()

    def _reset_video(self) -> None:
        self._prev_pred: np.ndarray | None = None
        self._prev_gt: np.ndarray | None = None
        self._pred_run: np.ndarray | None = None   # (H, W) int32 run lengths
        self._gt_run: np.ndarray | None = None
        self._pending: float | None = None         # score of the window ending now
        self.frames_in_video = 0

    def start_video(self) -> None:
        """Begin a new video: forget the previous frames and drop the pending window."""
        self._reset_video()

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add the next evaluated frame of the current video: (H, W) prediction and GT."""
        pred = _as_label_array("pred", pred)
        gt = _as_label_array("gt", gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise InputError(f"mVC expects (H, W) prediction and ground truth of one shape, "
                             f"got {pred.shape} and {gt.shape}")
        if self._prev_gt is not None and self._prev_gt.shape != gt.shape:
            raise InputError(f"frame size changed within a video ({self._prev_gt.shape} -> "
                             f"{gt.shape}); call start_video() between videos")
        if self._pending is not None:
            # A further frame arrived: the window ending at the previous frame has i < L - n.
            self.total += self._pending
            self.count += 1
            self._pending = None
        if self._prev_gt is None or self._prev_pred is None or self._gt_run is None \
                or self._pred_run is None:
            self._gt_run = np.ones(gt.shape, dtype=np.int32)
            self._pred_run = np.ones(pred.shape, dtype=np.int32)
        else:
            # Runs are capped at n: only "at least n" matters, and the cap bounds the state.
            self._gt_run = _extend_runs(self._gt_run, gt == self._prev_gt, self.n)
            self._pred_run = _extend_runs(self._pred_run, pred == self._prev_pred, self.n)
        self._prev_gt, self._prev_pred = gt.copy(), pred.copy()
        self.frames_in_video += 1
        if self.frames_in_video >= self.n:
            gt_const = self._gt_run >= self.n
            num_const = int(gt_const.sum())
            if num_const > 0:   # windows without a GT-constant pixel are skipped
                both = int((gt_const & (self._pred_run >= self.n)).sum())
                self._pending = both / num_const

    def merge(self, other: VideoConsistency) -> VideoConsistency:
        """Pool another accumulator's committed windows into this one; returns self."""
        if other.n != self.n:
            raise InputError(f"cannot merge mVC_{other.n} into mVC_{self.n}")
        self.total += other.total
        self.count += other.count
        return self

    def __iadd__(self, other: VideoConsistency) -> VideoConsistency:
        return self.merge(other)

    def value(self) -> float:
        """Mean window score over all committed windows (NaN if there is none)."""
        return self.total / self.count if self.count else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable totals (committed windows only; call between videos)."""
        return {"n": self.n, "sum": self.total, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoConsistency:
        """Inverse of :meth:`to_dict`; raises InputError for a malformed dict."""
        try:
            out = cls(int(data["n"]))
            out.total = float(data["sum"])
            out.count = int(data["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an mVC dict ({exc!r}); expected keys n, sum, count") \
                from exc
        return out
