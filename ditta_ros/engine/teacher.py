"""Stage B: SAM2 distillation targets (ALGORITHM.md, "Stage B").

The stage is split in three layers so each can be tested on its own:

* pure functions on numpy arrays: :func:`explained_region`, :func:`select_prompts`,
  :func:`merge_passes`, :func:`vote` (Eq. 4) and :func:`render_objects`;
* :class:`PropagationTeacher`, the forward/backward prompt-and-propagate algorithm, written
  once against the small :class:`MaskPropagator` protocol (a test can plug in an oracle that
  returns ground-truth object masks);
* :class:`SAM2Teacher` / :func:`build_sam2_teacher`: the same algorithm driven by SAM2's video
  predictor (the adapter lives in :mod:`ditta_ros.engine.sam2_teacher`, imported lazily so
  that importing this module never loads sam2 or hydra).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from ditta_ros.config import TeacherConfig
from ditta_ros.engine.errors import AdaptationError, CancelledError, InputError
from ditta_ros.engine.types import Prompt, Targets

if TYPE_CHECKING:
    import torch


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------
class ObjectMasks(NamedTuple):
    """The masks of several tracked objects on one frame.

    ids: object ids, in the tracker's object order (SAM2's order; it matters for merging
        and for ties in rendering).
    masks: (K, H, W) bool, original frame size; ``masks[i]`` belongs to ``ids[i]``.
    """

    ids: tuple[int, ...]
    masks: np.ndarray

    @staticmethod
    def empty(height: int, width: int) -> ObjectMasks:
        return ObjectMasks((), np.zeros((0, height, width), dtype=bool))

    def select(self, keep: Sequence[int]) -> ObjectMasks:
        """The objects at positions ``keep`` (in that order)."""
        idx = np.asarray(list(keep), dtype=np.int64)
        return ObjectMasks(tuple(self.ids[i] for i in keep), self.masks[idx])

    def concat(self, other: ObjectMasks) -> ObjectMasks:
        return ObjectMasks(self.ids + other.ids, np.concatenate([self.masks, other.masks]))


class PromptPoint(NamedTuple):
    """A chosen prompt pixel of one ISS class (frame and object id are assigned later)."""

    iss_class: int
    row: int
    col: int


class FramePrompts(NamedTuple):
    """:func:`select_prompts` result for one frame.

    points: new point prompts, in prompt order.
    class_counts: (C,) int64 pixel count of every class on this frame (its N_c share).
    """

    points: tuple[PromptPoint, ...]
    class_counts: np.ndarray


# --------------------------------------------------------------------------------------
# The video-object operations the algorithm needs
# --------------------------------------------------------------------------------------
class MaskPropagator(Protocol):
    """The part of a video object tracker (SAM2) that stage B drives.

    A propagator holds one clip and a set of tracked objects. Object ids are chosen by the
    caller. The tracker's *object order* is the order in which objects were first added
    since the last :meth:`start` or :meth:`reset`; every method that returns masks returns
    all tracked objects in that order, as :class:`ObjectMasks` with (K, H, W) bool masks at
    the clip's original frame size (for SAM2: logit > 0).

    Call sequence used by :class:`PropagationTeacher`::

        start(frames)
        (add_point | add_mask)* on frame t, then propagate(t, reverse) ...
        reset(); ...                  # forget objects, keep the clip (and cached features)
        release()

    An oracle for tests: remember, per object id, which ground-truth region the prompt
    pixel (or mask) selected, and return those regions' masks on the requested frames.
    """

    def start(self, frames: Sequence[np.ndarray]) -> None:
        """Load a new clip (frames (H, W, 3) uint8 BGR) and forget every object."""
        ...

    def reset(self) -> None:
        """Forget every object, prompt and tracking result; keep the clip."""
        ...

    def add_point(self, frame: int, object_id: int, row: int, col: int) -> ObjectMasks:
        """Add a new object from one positive point at pixel (row, col) of ``frame``.

        Returns the masks of all tracked objects on ``frame``.
        """
        ...

    def add_mask(self, frame: int, object_id: int, mask: np.ndarray) -> ObjectMasks:
        """Add a new object from a (H, W) bool mask on ``frame`` (may be empty).

        Returns the masks of all tracked objects on ``frame``.
        """
        ...

    def propagate(self, frame: int, reverse: bool) -> ObjectMasks:
        """Track every object from ``frame`` one frame on (``frame - 1`` when ``reverse``).

        Returns the masks on that next frame; the caller never asks past either end.
        """
        ...

    def release(self) -> None:
        """Drop the clip and everything cached for it."""
        ...


# --------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------
def explained_region(masks: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Union of object masks, dilated ``iterations`` times by a 3x3 cross.

    masks: (K, H, W) bool (K may be 0). Returns (H, W) bool. Pixels outside the image count
    as background, so the dilation never wraps around or grows in from a border.
    """
    if masks.ndim != 3:
        raise InputError(f"explained_region expects (K, H, W) masks, got shape {masks.shape}")
    region: np.ndarray = np.any(masks, axis=0)  # (H, W)
    for _ in range(iterations):
        grown = region.copy()
        grown[1:, :] |= region[:-1, :]
        grown[:-1, :] |= region[1:, :]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        region = grown
    return region


def select_prompts(labels: np.ndarray, reliability: np.ndarray, explained: np.ndarray,
                   num_tracked: int, num_classes: int, threshold: float = 0.8,
                   max_objects: int = 100) -> FramePrompts:
    """Stage B step 2 for one frame: which classes get a new point prompt, and where.

    labels: (H, W) integer ISS labels in [0, num_classes); reliability: (H, W) float32;
    explained: (H, W) bool explained region; num_tracked: objects tracked before this frame.
    Candidates are the present classes, by peak reliability (highest first, ties ascending
    class id). Every present class adds its pixel count to N_c before any skip test; then a
    class is skipped when ``max_objects`` objects are tracked (counting this frame's new
    ones), when its peak is below ``threshold`` (compared in float32), or when its peak pixel
    (first in row-major order with Y = c and R = peak) lies in the explained region.
    """
    if labels.shape != reliability.shape or labels.shape != explained.shape:
        raise InputError(f"select_prompts: labels {labels.shape}, reliability "
                         f"{reliability.shape} and explained {explained.shape} must match")
    flat_labels = labels.reshape(-1).astype(np.int64, copy=False)  # (HW,)
    if flat_labels.size and (flat_labels.min() < 0 or flat_labels.max() >= num_classes):
        raise InputError(f"select_prompts: labels must lie in [0, {num_classes})")
    flat_rel = reliability.reshape(-1).astype(np.float32, copy=False)  # (HW,)
    flat_explained = explained.reshape(-1)
    counts = np.bincount(flat_labels, minlength=num_classes).astype(np.int64)  # (C,)
    present = np.flatnonzero(counts)
    peak = np.full(num_classes, -np.inf, dtype=np.float32)
    np.maximum.at(peak, flat_labels, flat_rel)
    # Row-major first pixel of each class that reaches its peak.
    at_peak = np.flatnonzero(flat_rel == peak[flat_labels])
    peak_classes, first = np.unique(flat_labels[at_peak], return_index=True)
    peak_pixel = dict(zip(peak_classes.tolist(), at_peak[first].tolist()))
    order = sorted(present.tolist(), key=lambda c: (-float(peak[c]), c))
    limit = np.float32(threshold)
    width = labels.shape[1]
    points: list[PromptPoint] = []
    for cls in order:
        # N_c of this class is already in ``counts``: the reference counts before it skips.
        if num_tracked + len(points) >= max_objects:
            continue
        if peak[cls] < limit:
            continue
        index = peak_pixel[cls]
        if flat_explained[index]:
            continue
        points.append(PromptPoint(int(cls), index // width, index % width))
    return FramePrompts(tuple(points), counts)


def merge_passes(forward: Sequence[ObjectMasks], backward: Mapping[int, ObjectMasks],
                 prompted: Mapping[int, Sequence[int]]) -> list[ObjectMasks]:
    """Per frame: forward objects, then backward objects not prompted on that frame.

    forward: one entry per warm-up frame; backward: frame -> masks, only for frames the
    backward pass visited (frames after the last prompted frame keep the forward pass only);
    prompted: frame -> object ids prompted on that frame.
    """
    merged: list[ObjectMasks] = []
    for t, fwd in enumerate(forward):
        bwd = backward.get(t)
        if bwd is None:
            merged.append(fwd)
            continue
        skip = set(prompted.get(t, ()))
        keep = [i for i, oid in enumerate(bwd.ids) if oid not in skip]
        merged.append(fwd.concat(bwd.select(keep)))
    return merged


def vote(objects: Sequence[ObjectMasks], labels: np.ndarray, reliability: np.ndarray,
         class_counts: np.ndarray, object_ids: Sequence[int], size_power: float = 0.3,
         frequency_power: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Soft voting, Eq. 4, over all warm-up frames.

    objects: merged masks per frame (objects may overlap); labels (T, H, W) ISS labels;
    reliability (T, H, W) float32; class_counts (C,) N_c; object_ids: the K voters.
    S(o,c) = mean_{p in o, Y=c} R(p) * (|o and Y=c| / |o|)^size_power
             * (1 - N_c / N)^frequency_power,  N = T * H * W.
    Returns scores (K, C) float32 and classes (K,) int64: argmax_c (ties: lowest id), -1
    where the best score is 0.
    """
    num_classes = int(class_counts.shape[0])
    if num_classes == 0:
        raise InputError("vote needs class_counts for at least one class")
    ids = [int(i) for i in object_ids]
    row_of = {oid: k for k, oid in enumerate(ids)}
    num_objects = len(ids)
    # Sums in float64 (exact pixel counts, stable reliability sums); the equation itself
    # is evaluated in float32 as the spec asks.
    hits = np.zeros(num_objects * num_classes, dtype=np.float64)      # |o and Y=c|
    rel_sum = np.zeros(num_objects * num_classes, dtype=np.float64)   # sum of R there
    size = np.zeros(num_objects, dtype=np.float64)                    # |o|
    for t, frame_objects in enumerate(objects):
        if not frame_objects.ids:
            continue
        rows = np.array([row_of[oid] for oid in frame_objects.ids], dtype=np.int64)  # (K_t,)
        flat_masks = frame_objects.masks.reshape(len(rows), -1)  # (K_t, HW)
        which, pixel = np.nonzero(flat_masks)
        key = rows[which] * num_classes + labels[t].reshape(-1)[pixel]
        hits += np.bincount(key, minlength=hits.size)
        rel_sum += np.bincount(key, weights=reliability[t].reshape(-1)[pixel],
                               minlength=hits.size)
        np.add.at(size, rows, flat_masks.sum(axis=1))
    hits_2d = hits.reshape(num_objects, num_classes).astype(np.float32)  # (K, C)
    rel_2d = rel_sum.reshape(num_objects, num_classes).astype(np.float32)  # (K, C)
    size_f = size.astype(np.float32)[:, None]  # (K, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_rel = np.where(hits_2d > 0, rel_2d / hits_2d, np.float32(0))
        coverage = np.where(size_f > 0, hits_2d / size_f, np.float32(0))
    total = np.float32(labels.size)  # N = W_n * H * W
    rarity = np.maximum(np.float32(1) - class_counts.astype(np.float32) / total, np.float32(0))
    scores = (mean_rel * coverage ** np.float32(size_power)
              * (rarity ** np.float32(frequency_power))[None, :]).astype(np.float32)
    classes = np.argmax(scores, axis=1).astype(np.int64)  # first maximum: lowest class id
    classes[scores.max(axis=1, initial=0) <= 0] = -1
    return scores, classes


def render_objects(objects: ObjectMasks, best_scores: Mapping[int, float], height: int,
                   width: int) -> np.ndarray:
    """One frame's object-id map (H, W) int32, 0 = no object.

    Objects are painted in ascending order of their best score max_c S(o, c) with a stable
    sort (ties keep the list order), so the highest-scoring object wins overlaps.
    """
    out = np.zeros((height, width), dtype=np.int32)
    order = sorted(range(len(objects.ids)), key=lambda i: best_scores[objects.ids[i]])
    for i in order:
        out[objects.masks[i]] = objects.ids[i]
    return out


# --------------------------------------------------------------------------------------
# The forward/backward algorithm
# --------------------------------------------------------------------------------------
@dataclass
class _ForwardResult:
    masks: list[ObjectMasks]         # per warm-up frame, SAM2's order
    prompts: list[Prompt]            # in prompt order
    class_counts: np.ndarray         # (C,) N_c


class PropagationTeacher:
    """Stage B on any :class:`MaskPropagator` (implements :class:`types.Teacher`).

    num_classes: C of the score matrix; None: ``labels.max() + 1`` of each call.
    """

    def __init__(self, propagator: MaskPropagator, config: TeacherConfig,
                 num_classes: int | None = None) -> None:
        self.propagator = propagator
        self.config = config
        self.num_classes = num_classes

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray, cancel: threading.Event | None = None) -> Targets:
        labels, reliability = _check_inputs(frames, labels, reliability, self.num_classes)
        num_frames, height, width = labels.shape
        num_classes = self.num_classes or int(labels.max()) + 1
        self.propagator.start(frames)
        try:
            forward = self._forward_pass(labels, reliability, num_classes, cancel)
            backward = self._backward_pass(forward.prompts, cancel)
        finally:
            self.propagator.release()
        prompted: dict[int, list[int]] = {}
        for p in forward.prompts:
            prompted.setdefault(p.frame, []).append(p.object_id)
        merged = merge_passes(forward.masks, backward, prompted)
        ids = sorted(p.object_id for p in forward.prompts)
        scores, classes = vote(merged, labels, reliability, forward.class_counts, ids,
                               self.config.size_power, self.config.frequency_power)
        best = {oid: float(s) for oid, s in zip(ids, scores.max(axis=1, initial=0))}
        object_ids = np.zeros((num_frames, height, width), dtype=np.int32)
        for t, frame_objects in enumerate(merged):
            object_ids[t] = render_objects(frame_objects, best, height, width)
        return Targets(object_ids=object_ids, ids=np.asarray(ids, dtype=np.int32),
                       classes=classes, scores=scores, prompts=tuple(forward.prompts))

    def _forward_pass(self, labels: np.ndarray, reliability: np.ndarray, num_classes: int,
                      cancel: threading.Event | None) -> _ForwardResult:
        cfg = self.config
        num_frames, height, width = labels.shape
        counts = np.zeros(num_classes, dtype=np.int64)
        prompts: list[Prompt] = []
        recorded: list[ObjectMasks] = []
        current: ObjectMasks | None = None  # masks propagated onto the frame being visited
        next_id = 1
        for t in range(num_frames):
            _check_cancel(cancel, t, "forward")
            explained = (explained_region(current.masks, cfg.dilation_iterations)
                         if current is not None else np.zeros((height, width), dtype=bool))
            tracked = len(current.ids) if current is not None else 0
            chosen = select_prompts(labels[t], reliability[t], explained, tracked,
                                    num_classes, cfg.reliability_threshold, cfg.max_objects)
            counts += chosen.class_counts
            new = [Prompt(frame=t, object_id=next_id + i, row=p.row, col=p.col,
                          iss_class=p.iss_class) for i, p in enumerate(chosen.points)]
            next_id += len(new)
            prompts.extend(new)
            if new:
                current = self._place(t, new, current)
            if current is None:
                # No object tracked yet: record nothing for this frame. The reference
                # crashes when frame 0 has no prompt; this is our deliberate fix.
                recorded.append(ObjectMasks.empty(height, width))
                continue
            # The masks on frame t as the tracker holds them after this frame's prompts.
            # This equals the first output of SAM2's propagate call from t: a prompted frame
            # returns its prompt outputs, an unprompted one is re-tracked from the same
            # memory (frames before t), which gives the same masks again.
            recorded.append(current)
            if t + 1 < num_frames:
                current = self.propagator.propagate(t, reverse=False)
        return _ForwardResult(recorded, prompts, counts)

    def _place(self, frame: int, new: Sequence[Prompt],
               current: ObjectMasks | None) -> ObjectMasks:
        """Add a frame's new point objects; with objects already tracked, reset first and
        re-add each of them as a mask prompt (its current mask on ``frame``) after them.
        SAM2 needs all prompts of a frame before tracking it, hence the reset."""
        result: ObjectMasks | None = None
        if current is not None:
            self.propagator.reset()
        for p in new:
            result = self.propagator.add_point(frame, p.object_id, p.row, p.col)
        if current is not None:
            # After the points, so the tracker's order becomes: new points in prompt order,
            # then the re-added objects in their previous order. Empty masks are re-added too
            # (objects are never dropped).
            for oid, mask in zip(current.ids, current.masks):
                result = self.propagator.add_mask(frame, oid, mask)
        if result is None:
            raise AdaptationError("stage B placed no prompt (internal error)")
        expected = tuple(p.object_id for p in new) + (current.ids if current else ())
        if sorted(result.ids) != sorted(expected):
            raise AdaptationError(
                f"the mask propagator reports objects {result.ids} on frame {frame}, "
                f"expected {expected}: it must return every tracked object")
        return result

    def _backward_pass(self, prompts: Sequence[Prompt],
                       cancel: threading.Event | None) -> dict[int, ObjectMasks]:
        """Replay the forward prompts from the last prompted frame down to frame 0."""
        if not prompts:
            return {}
        by_frame: dict[int, list[Prompt]] = {}
        for p in prompts:
            by_frame.setdefault(p.frame, []).append(p)
        last = max(by_frame)
        self.propagator.reset()
        recorded: dict[int, ObjectMasks] = {}
        current: ObjectMasks | None = None
        for t in range(last, -1, -1):
            _check_cancel(cancel, t, "backward")
            if t in by_frame:
                # No thresholds or region tests here: the same prompts, ids and order.
                current = self._place(t, by_frame[t], current)
            if current is None:
                raise AdaptationError("backward pass started without a prompt (internal)")
            recorded[t] = current
            if t > 0:
                current = self.propagator.propagate(t, reverse=True)
        return recorded


def _check_cancel(cancel: threading.Event | None, frame: int, where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"stage B cancelled before frame {frame} of the {where} pass")


def _check_inputs(frames: Sequence[np.ndarray], labels: np.ndarray, reliability: np.ndarray,
                  num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate the teacher's inputs; return labels as int64 and reliability as float32."""
    labels = np.asarray(labels)
    reliability = np.asarray(reliability)
    if labels.ndim != 3 or labels.shape[0] == 0 or labels.shape[1] == 0 or labels.shape[2] == 0:
        raise InputError(f"stage B labels must be (W_n, H, W) with W_n >= 1, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"stage B labels must be integer class ids, got {labels.dtype}")
    if reliability.shape != labels.shape:
        raise InputError(f"stage B reliability shape {reliability.shape} differs from the "
                         f"labels' {labels.shape}; pass stage A's outputs of the same clip")
    if not np.issubdtype(reliability.dtype, np.floating) or not np.isfinite(reliability).all():
        raise InputError("stage B reliability must be finite floats (stage A's 1 - E/max E)")
    if len(frames) != labels.shape[0]:
        raise InputError(f"stage B got {len(frames)} frames but {labels.shape[0]} label maps")
    size = labels.shape[1:]
    for t, frame in enumerate(frames):
        if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8
                or frame.shape != (*size, 3)):
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise InputError(f"stage B frame {t} must be {(*size, 3)} uint8 BGR like the "
                             f"labels, got shape {shape} dtype {dtype}")
    low = int(labels.min())
    high = int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise InputError(f"stage B labels span [{low}, {high}], outside the class range "
                         f"[0, {num_classes if num_classes is not None else 'C'})")
    return labels.astype(np.int64, copy=False), reliability.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------
# SAM2
# --------------------------------------------------------------------------------------
class SAM2Teacher(PropagationTeacher):
    """Stage B with SAM2's video predictor as the propagator (the paper's teacher).

    predictor: a ``sam2.sam2_video_predictor.SAM2VideoPredictor`` (see
    :func:`build_sam2_teacher`); device: where SAM2 runs, None: the predictor's device.
    """

    def __init__(self, predictor: object, config: TeacherConfig,
                 device: torch.device | str | None = None,
                 num_classes: int | None = None, precision: str = "fp32") -> None:
        from ditta_ros.engine.sam2_teacher import SAM2Propagator

        super().__init__(SAM2Propagator(predictor, device, precision), config, num_classes)


def build_sam2_teacher(config: TeacherConfig, device: torch.device | str | None = None,
                       num_classes: int | None = None,
                       precision: str = "fp32") -> SAM2Teacher:
    """SAM2 teacher from ``config``: local checkpoint, or seeded random weights when
    ``config.sam2_checkpoint`` is empty. Never downloads; raises CheckpointError naming the
    path and the fix. ``config.device`` wins over ``device`` when set. ``precision``:
    ModelConfig.precision (SAM2's autocast, see :mod:`ditta_ros.engine.precision`)."""
    from ditta_ros.engine.sam2_teacher import build_sam2_predictor, teacher_device

    where = teacher_device(config, device)
    predictor = build_sam2_predictor(config, where)
    return SAM2Teacher(predictor, config, where, num_classes, precision)
