"""Scene-change detection on a stream: cuts and drifts from cheap per-frame signals.

A robot's camera crosses many scenes in one stream; DiTTA adapts on one warm-up. This module
says when the scene the adaptation was made for is no longer the one in view. It looks at
two signals, each costing far less than the ISS model (docs/streams.md has the figures):

- **appearance**: a soft joint colour histogram (``LEVELS`` levels per channel, 64 bins) of the
  frame shrunk to ``THUMB x THUMB`` pixels (bilinear to 4 x THUMB, then area averaging).
  It is known *before* the frame is served, so a cut found on it resets the fusion state
  for that very frame.
- **classes**: the class distribution of the served labels, read on a grid of about
  ``LABEL_SIDE`` x ``LABEL_SIDE`` or more pixels, known after the frame is served.

Two outputs (distances are total variation, 0.5 * L1 between distributions, in [0, 1]):

- **cut**: the appearance of this frame is far (> ``cut_threshold``) both from the previous
  frame's and from the mean appearance of the frames before it (since the last cut, at
  most ``window`` of them): the previous frame is unrelated, and the add-on must not
  attend to it. Both, so that a dissolve (each frame close to the one before) is a drift,
  not a cut, and sensor noise on one frame (the mean is steadier) is neither.
- **drift**: over a full window of frames, the mean appearance is far from the appearance
  reference (> ``drift_appearance_threshold``), or the mean class distribution is far from
  the class reference (> ``drift_threshold``): the scene has changed, gradually or not.

References are collected over the ``window`` frames after :meth:`SceneDetector.rebase`: the
session rebases the appearance when a warm-up starts (so it describes the frames the
adaptation learns from) and the classes when a new model starts serving (a different model
labels the same scene differently; comparing across models would be a false drift).

Pure numpy and OpenCV; one detector per stream, not thread-safe (the session calls it under
its push lock). Memory is fixed: a few ``window``-long rings of small vectors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from ditta_ros.config import StreamConfig
from ditta_ros.errors import InputError

THUMB = 16          # the frame is shrunk to THUMB x THUMB before its histogram is taken
LEVELS = 4          # colour levels per channel: LEVELS ** 3 = 64 histogram bins
LABEL_SIDE = 64     # class distribution read on a grid of at least 64 x 64 pixels
# bin-code offsets of the 8 corners of a colour's lattice cell, in (b, g, r) corner order
_CORNER_OFFSETS = np.array([(b * LEVELS + g) * LEVELS + r
                            for b in (0, 1) for g in (0, 1) for r in (0, 1)], np.intp)


def appearance(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame -> (LEVELS ** 3,) float64 colour histogram summing to 1.

    Averaging first, so that sensor noise and fine texture average out and the histogram
    describes the scene's colours rather than its pixels' noise. Straight area averaging of
    a 480 x 854 frame costs 4 ms (a non-integer factor); a bilinear step to 4 x THUMB first
    (4 samples per output pixel), then area averaging by exactly 4, costs about 0.03 ms.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 frame, got {frame.dtype} "
                         f"{tuple(frame.shape)}")
    big = cv2.resize(frame, (4 * THUMB, 4 * THUMB), interpolation=cv2.INTER_LINEAR)
    thumb: np.ndarray = cv2.resize(big, (THUMB, THUMB),
                                   interpolation=cv2.INTER_AREA)  # (T, T, 3) uint8
    # Soft (trilinear) binning: a colour shares its weight among the 8 lattice points
    # around it, so a gradual change of colour (a dissolve, light slowly changing) moves the
    # histogram gradually; hard bins would move a whole region across a bin edge at once.
    x = thumb.reshape(-1, 3).astype(np.float32) * ((LEVELS - 1) / 255.0)  # (N, 3) in [0, L-1]
    low = np.minimum(x.astype(np.intp), LEVELS - 2)                       # (N, 3)
    frac = x - low                                                        # (N, 3) in [0, 1]
    w = np.stack([1.0 - frac, frac], axis=2)                              # (N, 3, 2)
    weight = (w[:, 0, :, None, None] * w[:, 1, None, :, None]
              * w[:, 2, None, None, :]).reshape(-1, 8)                    # (N, 8)
    base = (low[:, 0] * LEVELS + low[:, 1]) * LEVELS + low[:, 2]          # (N,)
    codes = base[:, None] + _CORNER_OFFSETS[None, :]                      # (N, 8)
    hist = np.bincount(codes.ravel(), weights=weight.ravel(), minlength=LEVELS ** 3)
    return hist / hist.sum()


def class_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class ids (>= 0) -> (num_classes,) float64 distribution of a strided
    subsample; ids >= num_classes are not counted (none counted: a zero vector)."""
    if labels.ndim != 2 or labels.size == 0:
        raise InputError(f"expected (H, W) class ids, got shape {tuple(labels.shape)}")
    stride = max(1, min(labels.shape) // LABEL_SIDE)
    sub = labels[::stride, ::stride].ravel()
    if sub.min() < 0:
        raise InputError("class ids must be >= 0")
    hist = np.bincount(sub, minlength=num_classes)[:num_classes].astype(np.float64)
    total = hist.sum()
    return hist / total if total > 0 else hist


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 * sum |p - q| of two distributions: 0 identical, 1 disjoint."""
    return 0.5 * float(np.abs(p - q).sum())


@dataclass(frozen=True)
class SceneSignal:
    """What the detector saw on one frame; distances are None until they can be measured."""

    cut: bool
    drift: bool
    cut_distance: float | None          # appearance vs the frames before (None: none yet)
    appearance_drift: float | None      # window vs appearance reference (None: not full)
    class_drift: float | None           # window vs class reference (None: not full)


class _Reference:
    """Mean of the first ``size`` vectors added after a reset; ``ready`` once full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sum: np.ndarray | None = None
        self._count = 0

    def reset(self) -> None:
        self._sum, self._count = None, 0

    def add(self, vector: np.ndarray) -> None:
        if self._count >= self.size:
            return
        self._sum = vector.copy() if self._sum is None else self._sum + vector
        self._count += 1

    @property
    def ready(self) -> bool:
        return self._count >= self.size

    def mean(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError("empty reference")
        return self._sum / self._count


class _Window:
    """Running sum of the last ``size`` vectors (a ring; nothing grows with the stream)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[np.ndarray] = deque()
        self._sum: np.ndarray | None = None

    def clear(self) -> None:
        self._items.clear()
        self._sum = None

    def add(self, vector: np.ndarray) -> None:
        if self._sum is None or self._sum.shape != vector.shape:
            self.clear()
            self._sum = np.zeros_like(vector)
        self._items.append(vector)
        self._sum += vector
        if len(self._items) > self.size:
            self._sum -= self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def last(self) -> np.ndarray:
        return self._items[-1]

    @property
    def full(self) -> bool:
        return len(self._items) >= self.size

    def mean(self) -> np.ndarray:
        if self._sum is None or not self._items:
            raise ValueError("empty window")
        return self._sum / len(self._items)


class SceneDetector:
    """Cut and drift detection over one stream (see the module docstring).

    Per frame: :meth:`before` with the frame (returns whether it starts after a cut), then
    :meth:`after` with the labels served for it (returns the frame's :class:`SceneSignal`).
    """

    def __init__(self, config: StreamConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes
        n = config.window
        self._recent = _Window(n)          # appearance since the last cut (cut context)
        self._look = _Window(n)            # appearance, drift window
        self._classes = _Window(n)         # class distribution, drift window
        self._look_ref = _Reference(n)
        self._class_ref = _Reference(n)
        self._pending: tuple[np.ndarray, bool, float | None] | None = None

    def rebase(self, appearance_ref: bool = True, classes_ref: bool = True) -> None:
        """Collect new references over the next ``window`` frames (and restart the drift
        windows, so that drift is measured on frames after the rebase only)."""
        if appearance_ref:
            self._look_ref.reset()
            self._look.clear()
        if classes_ref:
            self._class_ref.reset()
            self._classes.clear()

    def before(self, frame: np.ndarray) -> bool:
        """Look at a frame before it is served; True when it follows a cut."""
        look = appearance(frame)
        distance = None
        if len(self._recent):
            distance = min(total_variation(look, self._recent.last()),
                           total_variation(look, self._recent.mean()))
        cut = distance is not None and distance > self.config.cut_threshold
        if cut:
            self._recent.clear()           # the frames before belong to another scene
        self._recent.add(look)
        self._pending = (look, cut, distance)
        return cut

    def after(self, labels: np.ndarray) -> SceneSignal:
        """The served labels of the frame given to :meth:`before` -> its signal. The frame
        enters the drift windows and any reference still collecting here, so a
        :meth:`rebase` between the two calls counts the frame in the new references."""
        if self._pending is None:
            raise ValueError("SceneDetector.after() without before()")
        look, cut, distance = self._pending
        self._pending = None
        classes = class_distribution(labels, self.num_classes)
        self._look.add(look)
        self._look_ref.add(look)
        self._classes.add(classes)
        self._class_ref.add(classes)
        look_drift = class_drift = None
        if self._look_ref.ready and self._look.full:
            look_drift = total_variation(self._look.mean(), self._look_ref.mean())
        if self._class_ref.ready and self._classes.full:
            class_drift = total_variation(self._classes.mean(), self._class_ref.mean())
        drift = ((look_drift is not None and look_drift > self.config.drift_appearance_threshold)
                 or (class_drift is not None and class_drift > self.config.drift_threshold))
        return SceneSignal(cut, drift, distance, look_drift, class_drift)
