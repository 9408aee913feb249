"""The offline warm-up-to-future (W2F) protocol on one video (ALGORITHM.md, "W2F protocol").

Adapt on the warm-up prefix (stage A labels, stage B teacher targets, stage C adaptation),
then run stage D on every remaining frame W_n .. T-1 at the original resolution, with the
add-on's cache primed by warm-up frame W_n - 1. The evaluation tools and tests drive this;
the live counterpart is :class:`ditta_ros.engine.session.Session`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from ditta_ros.config import DittaConfig
from ditta_ros.engine.fusion import StreamPredictor
from ditta_ros.engine.types import Source, StepCallback, StepLosses, Teacher
from ditta_ros.engine.warmup import StageStart, WarmupOutcome, run_warmup
from ditta_ros.errors import ConfigError, InputError

if TYPE_CHECKING:
    from ditta_ros.engine.model import DittaModel

# progress(stage, done, total): stage "A" per warm-up frame, "B" once done, "C" per
# adaptation step, "D" per evaluated frame.
ProgressCallback = Callable[[str, int, int], None]


def warmup_length(num_frames: int, ratio: int) -> int:
    """W_n = max(T * ratio // 100, 1), integer arithmetic as the reference."""
    if num_frames < 1:
        raise InputError(f"a video needs at least one frame, got {num_frames}")
    if not 1 <= ratio <= 100:
        raise ConfigError(f"warm-up ratio must be a percentage in [1, 100], got {ratio}")
    return max(num_frames * ratio // 100, 1)


@dataclass(frozen=True)
class W2FFrame:
    """One evaluated frame: labels (H, W) int64 at the frame's own size."""

    index: int               # frame index in the video (W_n .. T-1)
    labels: np.ndarray
    inference_s: float       # stage D time of this frame (model + fusion + label copy)
    source: Source           # ADAPTED (adapted model, fused when a previous frame exists)
    fused: bool              # the add-on branch took part


@dataclass
class W2FSummary:
    """What happened to one video; complete once its frames have all been consumed."""

    num_frames: int
    warmup: int
    mode: str                         # "ditta" or "iss_only"
    adapted: bool = False
    fused: bool = False               # stage D fuses the add-on
    reason: str = ""                  # why (not) adapted, human-readable
    num_objects: int = 0              # stage B objects
    stage_seconds: dict[str, float] = field(default_factory=dict)   # "A", "B", "C", "D"
    evaluated: int = 0
    inference_fps: float = 0.0        # evaluated frames / stage D seconds


class W2FRun(Iterator[W2FFrame]):
    """Iterator over the evaluated frames of one video; ``summary`` describes the run.

    Stages A-C have already run when this object exists; iterating runs stage D lazily, one
    frame at a time, so the frames may be loaded lazily too.
    """

    def __init__(self, predictor: StreamPredictor, frames: Sequence[np.ndarray],
                 summary: W2FSummary, source: Source,
                 progress: ProgressCallback | None,
                 outcome: WarmupOutcome | None = None) -> None:
        self.summary = summary
        self.outcome = outcome               # stages A-C, each stage's results (None: ISS only)
        self._predictor = predictor
        self._frames = frames
        self._source = source
        self._progress = progress
        self._next = summary.warmup
        self._seconds = 0.0

    @property
    def model(self) -> DittaModel:
        """The model serving stage D: the adapted copy, or the ISS model when not adapted."""
        return self._predictor.model

    def __iter__(self) -> W2FRun:
        return self

    def __next__(self) -> W2FFrame:
        total = self.summary.num_frames
        if self._next >= total:
            raise StopIteration
        index = self._next
        frame = self._frames[index]          # loading is not inference time
        start = time.perf_counter()
        out = self._predictor.step(frame)
        labels = out.labels.cpu().numpy()
        elapsed = time.perf_counter() - start
        self._next += 1
        self._seconds += elapsed
        s = self.summary
        s.evaluated += 1
        s.stage_seconds["D"] = self._seconds
        s.inference_fps = s.evaluated / self._seconds if self._seconds > 0 else 0.0
        if self._progress is not None:
            self._progress("D", s.evaluated, total - s.warmup)
        return W2FFrame(index, labels, elapsed, self._source, out.fused)


def run_w2f(model: DittaModel, teacher: Teacher | None, frames: Sequence[np.ndarray],
            config: DittaConfig, warmup: int | None = None,
            on_step: StepCallback | None = None, progress: ProgressCallback | None = None,
            iss_only: bool = False) -> W2FRun:
    """W2F on one video: adapt on frames[:W_n] now, return an iterator over frames W_n..T-1.

    frames: a Sequence of (H, W, 3) uint8 BGR frames (a lazy loader works: each frame is
    read once for stage D, the warm-up frames once more for stages A-C). ``warmup``
    overrides W_n = :func:`warmup_length` (T, config.adaptation.warmup_ratio). ``iss_only``:
    the evaluation baseline, the frozen ISS model frame by frame on the same frames (no
    teacher needed). When stage B finds no object at all, nothing is adapted and the ISS
    model serves without fusion; ``summary.reason`` says so (the reference crashes there).
    Stages A-C run in :func:`~ditta_ros.engine.warmup.run_warmup`, as in the live session.
    """
    num_frames = len(frames)
    w_n = warmup_length(num_frames, config.adaptation.warmup_ratio) if warmup is None \
        else warmup
    if not 1 <= w_n <= num_frames:
        raise InputError(f"warm-up length {w_n} must lie in [1, {num_frames}] for a video of "
                         f"{num_frames} frames")
    device = torch.device(config.model.device)
    summary = W2FSummary(num_frames, w_n, "iss_only" if iss_only else "ditta")
    model.eval()
    if iss_only:
        summary.reason = "ISS baseline: no adaptation requested"
        return _iss_run(model, frames, config, summary, device, progress)
    if teacher is None:
        raise ConfigError("run_w2f needs a teacher unless iss_only is set")
    warm = [frames[t] for t in range(w_n)]

    def stage_started(event: StageStart) -> None:
        if progress is not None and event.stage == "B":
            progress("A", w_n, w_n)
        elif progress is not None and event.stage == "C":
            progress("B", 1, 1)

    def step_callback(losses: StepLosses) -> None:
        if on_step is not None:
            on_step(losses)
        if progress is not None:
            progress("C", losses.step + 1, losses.total_steps)

    outcome = run_warmup(model, teacher, warm, config, on_stage=stage_started,
                         on_step=step_callback)
    summary.stage_seconds.update(outcome.stage_seconds)
    summary.num_objects = outcome.num_objects
    if outcome.model is None:
        if progress is not None:
            progress("B", 1, 1)
        summary.reason = f"not adapted: {outcome.reason}; serving the ISS model without fusion"
        return _iss_run(model, frames, config, summary, device, progress, outcome)
    summary.adapted = summary.fused = True
    # W_n = 1: only frame-0 steps ran, so MLP_q/MLP_k are untrained; the reference still
    # fuses the add-on in stage D and so do we, offline, to reproduce its numbers. (A live
    # Session needs at least 2 warm-up frames: AdaptationConfig.warmup_frames >= 2.)
    summary.reason = (outcome.reason + ("; W_n = 1: the add-on is untrained but fused "
                                        "(reference)" if w_n == 1 else ""))
    predictor = StreamPredictor(outcome.model, config.model, config.fusion, device,
                                use_addon=True)
    predictor.prime(warm[-1])               # frame W_n - 1, encoded by the adapted model
    return W2FRun(predictor, frames, summary, Source.ADAPTED, progress, outcome)


def _iss_run(model: DittaModel, frames: Sequence[np.ndarray], config: DittaConfig,
             summary: W2FSummary, device: torch.device,
             progress: ProgressCallback | None,
             outcome: WarmupOutcome | None = None) -> W2FRun:
    predictor = StreamPredictor(model, config.model, config.fusion, device, use_addon=False)
    return W2FRun(predictor, frames, summary, Source.ISS, progress, outcome)
