"""Learning test: warm-up -> stage A -> oracle stage B -> stage C -> stage D really learns.

The scene is a synthetic video with known ground truth (moving textured shapes, 4 classes).
The ISS model is a tiny SegFormer the test trains itself, deterministically and briefly, on
evenly lit frames of the same scene taken much later in its timeline. The evaluated video is
seen under uneven illumination (the left side darker, a domain shift), so the frozen ISS
model is imperfect but far from random. The teacher is an oracle behind the real
:class:`~ditta_ros.engine.teacher.PropagationTeacher`: prompt search, voting and rendering run
as they do with SAM2, and only the mask propagation returns ground truth. Adaptation must then
beat the frozen model clearly on the post-warm-up frames, in mIoU and in mVC.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np
import pytest
import torch
from fixtures_stream import pretrain_iss

from ditta_ros.config import AdaptationConfig, FusionConfig, ModelConfig, TeacherConfig
from ditta_ros.engine.adapt import adapt, distillation_labels
from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.fusion import StreamPredictor
from ditta_ros.engine.metrics import ConfusionMatrix, VideoConsistency
from ditta_ros.engine.model import DittaModel
from ditta_ros.engine.reliability import iss_labels
from ditta_ros.engine.teacher import ObjectMasks, PropagationTeacher
from ditta_ros.engine.types import StepLosses
from ditta_ros.synthetic import SyntheticVideo

H, W, C = 64, 96, 4
SCENE_SEED = 0
NUM_FRAMES, WARMUP = 40, 10            # W2F with a 25 % warm-up
MODEL_CONFIG = ModelConfig(num_classes=C, embed_dim=32, fit_long=W, fit_short=H, seed=0)
FUSION_CONFIG = FusionConfig()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model gains nothing from intra-op threads, and on a shared 2-core machine
    OpenMP's spinning workers made this test about 50x slower (measured: 2.4 s vs 117 s for
    the ISS pre-training). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pretrained_iss(scene: SyntheticVideo) -> DittaModel:
    """A tiny ISS model trained for 100 seeded Adam steps on 8 evenly lit frames."""
    model = build_model(MODEL_CONFIG, "cpu", window_radius=FUSION_CONFIG.window_radius)
    return pretrain_iss(model, [scene.frame(t) for t in range(200, 240, 5)])


def _unevenly_lit(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the same scene lit from the right: gain 0.5 -> 1.0 across."""
    gain = np.linspace(0.5, 1.0, frames.shape[2], dtype=np.float32)[None, None, :, None]
    return np.clip(frames.astype(np.float32) * gain, 0, 255).astype(np.uint8)


class GroundTruthPropagator:
    """Oracle :class:`~ditta_ros.engine.teacher.MaskPropagator`: an object is the ground-truth
    region of the class under its prompt (each shape has its own class in this scene, so the
    region is the shape, or the ground), tracked perfectly on every frame."""

    def __init__(self, ground_truth: np.ndarray) -> None:
        self.gt = ground_truth                      # (W_n, H, W) int64

    def start(self, frames: Sequence[np.ndarray]) -> dict[int, int]:
        """The clip handle: object id -> class, in insertion (= tracker) order."""
        if len(frames) != len(self.gt):
            raise ValueError("the oracle knows the ground truth of the warm-up frames only")
        return {}

    def reset(self, tracks: dict[int, int]) -> None:
        tracks.clear()

    def release(self, tracks: dict[int, int]) -> None:
        tracks.clear()

    def _masks(self, tracks: dict[int, int], frame: int) -> ObjectMasks:
        ids = tuple(tracks)
        masks = np.stack([self.gt[frame] == tracks[i] for i in ids]) if ids else \
            np.zeros((0,) + self.gt.shape[1:], bool)
        return ObjectMasks(ids, masks)

    def add_point(self, tracks: dict[int, int], frame: int, object_id: int, row: int,
                  col: int) -> ObjectMasks:
        tracks[object_id] = int(self.gt[frame, row, col])
        return self._masks(tracks, frame)

    def add_mask(self, tracks: dict[int, int], frame: int, object_id: int,
                 mask: np.ndarray) -> ObjectMasks:
        under = self.gt[frame][mask]
        tracks[object_id] = int(np.bincount(under).argmax()) if under.size else -1
        return self._masks(tracks, frame)

    def propagate(self, tracks: dict[int, int], frame: int, reverse: bool) -> ObjectMasks:
        return self._masks(tracks, frame - 1 if reverse else frame + 1)


def _evaluate(model: DittaModel, frames: np.ndarray, gt: np.ndarray, use_addon: bool,
              model_config: ModelConfig = MODEL_CONFIG,
              served: list[np.ndarray] | None = None) -> tuple[float, float, float]:
    """Stage D over frames W_n..T-1 -> (mIoU, mVC_8, mVC_16); labels appended to served."""
    confusion, vc8, vc16 = ConfusionMatrix(C), VideoConsistency(8), VideoConsistency(16)
    predictor = StreamPredictor(model, model_config, FUSION_CONFIG, "cpu", use_addon)
    predictor.prime(frames[WARMUP - 1])
    for t in range(WARMUP, len(frames)):
        labels, _ = predictor.predict(frames[t])
        if served is not None:
            served.append(labels)
        confusion.update(labels, gt[t])
        vc8.update(labels, gt[t])
        vc16.update(labels, gt[t])
    return confusion.miou(), vc8.value(), vc16.value()


def test_adaptation_beats_the_frozen_iss_model() -> None:
    scene = SyntheticVideo(H, W, num_classes=C, num_shapes=3, seed=SCENE_SEED)
    model = _pretrained_iss(scene)
    clean, gt = scene.clip(NUM_FRAMES)
    frames = _unevenly_lit(clean)
    warmup = list(frames[:WARMUP])

    labels, reliability = iss_labels(model, warmup, MODEL_CONFIG, "cpu")          # stage A
    teacher = PropagationTeacher(GroundTruthPropagator(gt[:WARMUP]), TeacherConfig(),
                                 num_classes=C)
    targets = teacher.targets(warmup, labels, reliability)                        # stage B
    distilled = distillation_labels(targets.object_ids, targets.class_of(), labels)
    iss_accuracy = float((labels == gt[:WARMUP]).mean())
    target_accuracy = float((distilled == gt[:WARMUP]).mean())
    assert targets.num_objects >= 2
    assert target_accuracy > iss_accuracy + 0.1          # the oracle teacher does help

    steps: list[StepLosses] = []
    adapted = adapt(model, warmup, labels, targets, MODEL_CONFIG, AdaptationConfig(), "cpu",
                    on_step=steps.append)                                          # stage C
    assert len(steps) == 5 * WARMUP
    first = np.mean([s.total for s in steps[:WARMUP]])
    last = np.mean([s.total for s in steps[-WARMUP:]])

    frozen = _evaluate(model, frames, gt, use_addon=False)                        # stage D
    ditta = _evaluate(adapted, frames, gt, use_addon=True)
    print(f"\nlearning test, {NUM_FRAMES - WARMUP} post-warm-up frames: "
          f"ISS accuracy on warm-up {iss_accuracy:.3f}, targets {target_accuracy:.3f}, "
          f"stage-C loss {first:.3f} -> {last:.3f}\n"
          f"  frozen ISS: mIoU {frozen[0]:.4f}  mVC8 {frozen[1]:.4f}  mVC16 {frozen[2]:.4f}\n"
          f"  DiTTA     : mIoU {ditta[0]:.4f}  mVC8 {ditta[1]:.4f}  mVC16 {ditta[2]:.4f}")
    assert last < first
    assert ditta[0] > frozen[0] + 0.15
    assert ditta[1] > frozen[1] + 0.02
    assert ditta[2] > frozen[2] + 0.02


def _pipeline(model: DittaModel, frames: np.ndarray, gt: np.ndarray,
              model_config: ModelConfig) -> tuple[tuple[float, float, float],
                                                  tuple[float, float, float],
                                                  list[np.ndarray]]:
    """Stages A-D at one precision -> frozen and DiTTA (mIoU, mVC8, mVC16), DiTTA labels."""
    warmup = list(frames[:WARMUP])
    labels, reliability = iss_labels(model, warmup, model_config, "cpu")
    teacher = PropagationTeacher(GroundTruthPropagator(gt[:WARMUP]), TeacherConfig(),
                                 num_classes=C)
    targets = teacher.targets(warmup, labels, reliability)
    adapted = adapt(model, warmup, labels, targets, model_config, AdaptationConfig(), "cpu")
    served: list[np.ndarray] = []
    frozen = _evaluate(model, frames, gt, False, model_config)
    ditta = _evaluate(adapted, frames, gt, True, model_config, served)
    return frozen, ditta, served


@pytest.mark.slow
def test_bf16_learns_as_fp32_does() -> None:
    """model.precision = bf16 (autocast in stages A-D, float32 losses and decisions) on the
    learning scene: >= 99.5 % of the served labels equal fp32's, and the mIoU gain of
    adaptation is fp32's within 0.01."""
    scene = SyntheticVideo(H, W, num_classes=C, num_shapes=3, seed=SCENE_SEED)
    model = _pretrained_iss(scene)
    clean, gt = scene.clip(NUM_FRAMES)
    frames = _unevenly_lit(clean)
    f32 = _pipeline(model, frames, gt, MODEL_CONFIG)
    b16 = _pipeline(model, frames, gt, dataclasses.replace(MODEL_CONFIG, precision="bf16"))
    agreement = float(np.mean([np.mean(a == b) for a, b in zip(f32[2], b16[2])]))
    gains = (f32[1][0] - f32[0][0], b16[1][0] - b16[0][0])
    print(f"\nbf16 vs fp32 on the learning scene: label agreement {agreement:.5f}, mIoU "
          f"gain fp32 {gains[0]:.4f}, bf16 {gains[1]:.4f} (frozen {f32[0][0]:.4f} / "
          f"{b16[0][0]:.4f}, DiTTA {f32[1][0]:.4f} / {b16[1][0]:.4f})")
    assert agreement >= 0.995
    assert abs(gains[0] - gains[1]) <= 0.01
