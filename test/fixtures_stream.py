"""Shared pieces of the stage D, session and runner tests: a tiny seeded SegFormer on small
synthetic frames, and an oracle teacher (a Teacher-protocol stand-in whose targets are the
synthetic video's ground truth)."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ditta_ros.config import AdaptationConfig, DittaConfig, ModelConfig
from ditta_ros.engine import preprocess
from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.model import DittaModel
from ditta_ros.engine.types import Targets
from ditta_ros.errors import CancelledError
from ditta_ros.synthetic import SyntheticFrame, SyntheticVideo

HEIGHT, WIDTH = 64, 96
NUM_CLASSES = 4
# fit size = frame size: the network input is the frame itself (64 x 96), so tests stay fast
TINY_MODEL = ModelConfig(variant="tiny", num_classes=NUM_CLASSES, embed_dim=32, fit_long=96,
                         fit_short=64)


def tiny_config(warmup_frames: int = 3, iterations: int = 1, **model: object) -> DittaConfig:
    base = DittaConfig(model=TINY_MODEL,
                       adaptation=AdaptationConfig(warmup_frames=warmup_frames,
                                                   iterations=iterations))
    return base.replace(model=model) if model else base


def tiny_model(config: DittaConfig) -> DittaModel:
    return build_model(config.model, "cpu")


def pretrain_iss(model: DittaModel, frames: Sequence[SyntheticFrame], steps: int = 100
                 ) -> DittaModel:
    """Train ``model``'s ISS network for ``steps`` seeded Adam steps (lr 2e-3, batches of 4)
    on ``frames`` with their ground truth, so the learning tests start from a model that
    labels the scene roughly right; returns it in eval mode."""
    height, width = frames[0].labels.shape
    x = torch.from_numpy(np.stack([preprocess.prepare(f.image, width, height) for f in frames]))
    y = torch.from_numpy(np.stack([f.labels for f in frames]))
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        model.train()
        optimizer = torch.optim.Adam(model.iss.parameters(), lr=2e-3)
        for _ in range(steps):
            batch = torch.randint(0, len(frames), (4,))
            _, logits = model.iss.forward_features(x[batch])          # (4, C, h, w)
            size = (height, width)
            loss = F.cross_entropy(preprocess.to_frame_size(logits, size, size), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def sharpen(model: DittaModel, logit_scale: float = 1000.0, qk_scale: float = 30.0
            ) -> DittaModel:
    """A random-init SegFormer's logits are ~1e-3 apart, so every pixel is a near tie and
    float rounding decides its label. Scaling the classifier (and the add-on's query/key
    MLPs) gives a real model with confident, peaked outputs, in place."""
    with torch.no_grad():
        model.iss.model.decode_head.classifier.weight.mul_(logit_scale)
        for mlp in (model.addon.mlp_q, model.addon.mlp_k):
            mlp[2].weight.mul_(qk_scale)
    return model


def frames_of(video: SyntheticVideo, count: int, start: int = 0) -> list[np.ndarray]:
    return [video.frame(t).image for t in range(start, start + count)]


def make_video(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> SyntheticVideo:
    return SyntheticVideo(height, width, NUM_CLASSES, num_shapes=3, seed=seed)


class OracleTeacher:
    """Stage B stand-in: every ground-truth class of the warm-up is one object (id class+1)
    whose rendered masks are the true class regions.

    gate: when given, ``targets`` blocks until it is set (polling ``cancel`` like the SAM2
    teacher does between frames). fail: raise this instead. empty: find no object.
    """

    def __init__(self, videos: Sequence[SyntheticVideo], length: int, *,
                 gate: threading.Event | None = None, fail: Exception | None = None,
                 empty: bool = False,
                 frames: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> None:
        self._truth: dict[bytes, np.ndarray] = {}
        for video in videos:
            for t in range(length):
                item = video.frame(t)
                self._truth[item.image.tobytes()] = item.labels
        for image, labels in frames:             # (image, ground truth) pairs of a stream
            self._truth[image.tobytes()] = labels
        self.gate, self.fail, self.empty = gate, fail, empty
        self.calls = 0
        self.started = threading.Event()

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray, cancel: threading.Event | None = None) -> Targets:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if cancel is not None and cancel.is_set():
                    raise CancelledError("oracle teacher cancelled")
        if self.fail is not None:
            raise self.fail
        n, h, w = labels.shape
        if self.empty:
            return Targets(np.zeros((n, h, w), np.int32), np.zeros(0, np.int32),
                           np.zeros(0, np.int64), np.zeros((0, NUM_CLASSES), np.float32))
        truth = np.stack([self._truth[f.tobytes()] for f in frames])     # (n, H, W)
        classes = np.unique(truth).astype(np.int64)
        scores = np.zeros((classes.size, NUM_CLASSES), np.float32)
        scores[np.arange(classes.size), classes] = 1.0
        return Targets((truth + 1).astype(np.int32), (classes + 1).astype(np.int32),
                       classes, scores)
