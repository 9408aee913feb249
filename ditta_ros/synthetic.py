"""Synthetic videos with known ground truth: moving textured shapes over a textured ground.

Used by the tests, the demo's embedded default stream and the benchmarks; nothing is
downloaded. Every frame is drawn from the seed and the frame index alone, so a stream of any
length can be generated lazily and identically twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np


@dataclass(frozen=True)
class Shape:
    cls: int                 # ground-truth class id
    kind: str                # "rect" or "ellipse"
    size: tuple[int, int]    # half height, half width in pixels
    start: tuple[float, float]   # centre (row, col) at frame 0
    velocity: tuple[float, float]  # pixels per frame (row, col); shapes bounce at borders


@dataclass(frozen=True)
class SyntheticFrame:
    image: np.ndarray   # (H, W, 3) uint8 BGR
    labels: np.ndarray  # (H, W) int64 ground-truth class ids


class SyntheticVideo:
    """A deterministic scene: class 0 is the ground, shapes of classes 1..num_classes-1 move.

    Each class has its own base colour and stripe texture, so a model can tell classes
    apart by appearance; shapes keep their class for the whole video.
    """

    def __init__(self, height: int = 96, width: int = 128, num_classes: int = 4,
                 num_shapes: int = 3, seed: int = 0, noise: float = 6.0) -> None:
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (ground + at least one shape class)")
        self.height, self.width, self.num_classes = height, width, num_classes
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.noise = noise
        self.colors = rng.integers(30, 226, size=(num_classes, 3)).astype(np.float32)
        self.periods = rng.integers(3, 9, size=num_classes)
        self.angles = rng.uniform(0, np.pi, size=num_classes)
        shapes = []
        for i in range(num_shapes):
            hh = int(rng.integers(max(height // 8, 2), max(height // 4, 3)))
            hw = int(rng.integers(max(width // 8, 2), max(width // 4, 3)))
            start = (float(rng.uniform(hh, height - hh)), float(rng.uniform(hw, width - hw)))
            speed = rng.uniform(0.5, 2.0, size=2) * rng.choice([-1, 1], size=2)
            shapes.append(Shape(cls=1 + i % (num_classes - 1), kind=("rect", "ellipse")[i % 2],
                                size=(hh, hw), start=start,
                                velocity=(float(speed[0]), float(speed[1]))))
        self.shapes = tuple(shapes)
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        self._textures = np.stack([self._texture(c, rows, cols) for c in range(num_classes)])

    def _texture(self, cls: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 appearance of class ``cls`` on the whole image plane."""
        angle = self.angles[cls]
        phase = (rows * np.sin(angle) + cols * np.cos(angle)) * (2 * np.pi / self.periods[cls])
        stripes = 25.0 * np.sin(phase)[..., None]
        return np.clip(self.colors[cls][None, None, :] + stripes, 0, 255)

    def _centre(self, shape: Shape, t: int) -> tuple[float, float]:
        """Centre at frame t, bouncing between the borders (triangle wave)."""
        out = []
        for start, vel, half, extent in zip(shape.start, shape.velocity, shape.size,
                                            (self.height, self.width)):
            lo, hi = float(half), float(extent - half)
            span = max(hi - lo, 1e-6)
            pos = (start - lo + vel * t) % (2 * span)
            out.append(lo + (pos if pos <= span else 2 * span - pos))
        return out[0], out[1]

    def frame(self, t: int) -> SyntheticFrame:
        labels = np.zeros((self.height, self.width), np.int64)
        for shape in self.shapes:
            mask = np.zeros((self.height, self.width), np.uint8)
            cy, cx = self._centre(shape, t)
            hh, hw = shape.size
            if shape.kind == "rect":
                cv2.rectangle(mask, (int(cx - hw), int(cy - hh)), (int(cx + hw), int(cy + hh)),
                              1, thickness=-1)
            else:
                cv2.ellipse(mask, (int(cx), int(cy)), (hw, hh), 0, 0, 360, 1, thickness=-1)
            labels[mask.astype(bool)] = shape.cls
        image = np.take_along_axis(
            self._textures, labels[None, :, :, None].repeat(3, axis=3), axis=0)[0]
        rng = np.random.default_rng((self.seed, t))
        image = image + rng.normal(0.0, self.noise, size=image.shape)
        return SyntheticFrame(np.clip(image, 0, 255).astype(np.uint8), labels)

    def frames(self, count: int, start: int = 0) -> Iterator[SyntheticFrame]:
        for t in range(start, start + count):
            yield self.frame(t)

    def clip(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W, 3) uint8 BGR frames and (T, H, W) int64 labels of the first frames."""
        items = list(self.frames(count))
        return np.stack([f.image for f in items]), np.stack([f.labels for f in items])


def lit(image: np.ndarray, gain_left: float, gain_right: float) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image under light that changes across it: gain
    ``gain_left`` at the left border to ``gain_right`` at the right (a domain shift)."""
    gain = np.linspace(gain_left, gain_right, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class StreamFrame:
    image: np.ndarray    # (H, W, 3) uint8 BGR
    labels: np.ndarray   # (H, W) int64 ground truth
    scene: int           # index of the scene in view (the later one during a fade)


class SceneStream:
    """One stream crossing several synthetic scenes (issue 13: streams, not clips).

    Scene i shows ``lengths[i]`` frames of ``scenes[i]``, starting at frame ``start`` of its
    own timeline, each under its light ``gains[i]`` (left, right; default even light).
    Between two scenes, ``fade`` frames dissolve one into the other (0: a hard cut); the
    ground truth of a fade frame is the later scene's, as is its scene index.
    """

    def __init__(self, scenes: tuple[SyntheticVideo, ...], lengths: tuple[int, ...],
                 gains: tuple[tuple[float, float], ...] | None = None, fade: int = 0,
                 start: int = 0) -> None:
        if len(scenes) != len(lengths) or not scenes:
            raise ValueError("one length per scene, and at least one scene")
        if gains is not None and len(gains) != len(scenes):
            raise ValueError("one (left, right) gain per scene")
        self.scenes, self.lengths, self.fade, self.start = scenes, lengths, fade, start
        self.gains = gains or tuple((1.0, 1.0) for _ in scenes)
        self.cuts = tuple(int(x) for x in np.cumsum(lengths)[:-1])   # first frame of 1, 2..

    def __len__(self) -> int:
        return int(sum(self.lengths))

    def _view(self, scene: int, t: int) -> SyntheticFrame:
        item = self.scenes[scene].frame(self.start + t)
        return SyntheticFrame(lit(item.image, *self.gains[scene]), item.labels)

    def frame(self, index: int) -> StreamFrame:
        scene = int(np.searchsorted(np.cumsum(self.lengths), index, side="right"))
        offset = index - (self.cuts[scene - 1] if scene else 0)
        item = self._view(scene, offset)
        if scene and offset < self.fade:
            # dissolve: the previous scene goes on for the fade and fades out
            before = self._view(scene - 1, self.lengths[scene - 1] + offset)
            alpha = (offset + 1) / (self.fade + 1)
            mixed = (1 - alpha) * before.image.astype(np.float32) + alpha * item.image
            item = SyntheticFrame(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), item.labels)
        return StreamFrame(item.image, item.labels, scene)

    def __iter__(self) -> Iterator[StreamFrame]:
        for index in range(len(self)):
            yield self.frame(index)
