"""Propagators for stage-B tests: a ground-truth oracle and a call recorder.

``OraclePropagator`` implements ``ditta_ros.engine.types.MaskPropagator`` from a
ground-truth instance map: a point prompt selects the instance under the pixel, a mask
prompt the instance it overlaps most, and every frame returns those instances' true masks.
Plug it into ``PropagationTeacher(OraclePropagator(instances), TeacherConfig())`` to get
stage-B targets without SAM2 (e.g. for a learning test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ditta_ros.engine.types import MaskPropagator, ObjectMasks


class OraclePropagator:
    """Ground-truth tracker. instances: (T, H, W) int, 0 = no instance.

    A clip handle is an :class:`OracleClip` (object id -> instance); a released handle
    raises, as SAM2's does."""

    def __init__(self, instances: np.ndarray) -> None:
        self.instances = np.asarray(instances)
        self.calls: list[tuple[Any, ...]] = []
        self.last_clip: OracleClip | None = None

    @property
    def _objects(self) -> dict[int, int]:
        """Object id -> instance of the latest clip, also after its release (tests read
        which instance each prompt selected)."""
        return self.last_clip.kept if self.last_clip is not None else {}

    def _masks(self, clip: OracleClip, frame: int) -> ObjectMasks:
        objects = clip.objects()
        inst = self.instances[frame]
        ids = tuple(objects)
        masks = np.stack([(inst == objects[i]) & (objects[i] != 0) for i in ids]) \
            if ids else np.zeros((0, *inst.shape), dtype=bool)
        return ObjectMasks(ids, masks)

    def start(self, frames: Sequence[np.ndarray]) -> OracleClip:
        if len(frames) != self.instances.shape[0]:
            raise ValueError("oracle clip length differs from its instance maps")
        self.calls.append(("start", len(frames)))
        self.last_clip = OracleClip()
        return self.last_clip

    def reset(self, clip: OracleClip) -> None:
        self.calls.append(("reset",))
        clip.objects().clear()

    def add_point(self, clip: OracleClip, frame: int, object_id: int, row: int,
                  col: int) -> ObjectMasks:
        self.calls.append(("point", frame, object_id, row, col))
        clip.objects().setdefault(object_id, int(self.instances[frame, row, col]))
        return self._masks(clip, frame)

    def add_mask(self, clip: OracleClip, frame: int, object_id: int,
                 mask: np.ndarray) -> ObjectMasks:
        self.calls.append(("mask", frame, object_id, int(mask.sum())))
        inst = self.instances[frame][mask]
        inst = inst[inst != 0]
        best = int(np.bincount(inst).argmax()) if inst.size else 0
        clip.objects().setdefault(object_id, best)
        return self._masks(clip, frame)

    def propagate(self, clip: OracleClip, frame: int, reverse: bool) -> ObjectMasks:
        self.calls.append(("propagate", frame, reverse))
        target = frame - 1 if reverse else frame + 1
        if not 0 <= target < self.instances.shape[0]:
            raise AssertionError(f"propagate past the clip: {frame} -> {target}")
        return self._masks(clip, target)

    def release(self, clip: OracleClip) -> None:
        self.calls.append(("release",))
        clip.release()


class OracleClip:
    """One oracle clip: object id -> instance (0: tracks nothing)."""

    def __init__(self) -> None:
        self.kept: dict[int, int] = {}
        self._released = False

    def objects(self) -> dict[int, int]:
        if self._released:
            raise RuntimeError("oracle clip used after release")
        return self.kept

    def release(self) -> None:
        self._released = True


class RecordingPropagator:
    """Wraps a real propagator, records every call and every mask it returns."""

    def __init__(self, inner: MaskPropagator[Any]) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, ...]] = []
        self.returned: list[tuple[tuple[Any, ...], ObjectMasks]] = []

    def _log(self, call: tuple[Any, ...], out: ObjectMasks) -> ObjectMasks:
        self.calls.append(call)
        self.returned.append((call, out))
        return out

    def start(self, frames: Sequence[np.ndarray]) -> Any:
        self.calls.append(("start", len(frames)))
        return self.inner.start(frames)

    def reset(self, clip: Any) -> None:
        self.calls.append(("reset",))
        self.inner.reset(clip)

    def add_point(self, clip: Any, frame: int, object_id: int, row: int,
                  col: int) -> ObjectMasks:
        return self._log(("point", frame, object_id, row, col),
                         self.inner.add_point(clip, frame, object_id, row, col))

    def add_mask(self, clip: Any, frame: int, object_id: int, mask: np.ndarray) -> ObjectMasks:
        return self._log(("mask", frame, object_id, int(mask.sum())),
                         self.inner.add_mask(clip, frame, object_id, mask))

    def propagate(self, clip: Any, frame: int, reverse: bool) -> ObjectMasks:
        return self._log(("propagate", frame, reverse),
                         self.inner.propagate(clip, frame, reverse))

    def release(self, clip: Any) -> None:
        self.calls.append(("release",))
        self.inner.release(clip)
