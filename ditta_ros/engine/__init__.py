"""The DiTTA engine: pure torch/numpy, no ROS. Public names are re-exported here.

Re-exports are resolved lazily (PEP 562), so ``import ditta_ros.errors`` or
``from ditta_ros.engine import Phase`` does not load torch, transformers or sam2 until a
name that needs them is used.

Typical use::

    from ditta_ros.config import DittaConfig
    from ditta_ros.engine import Session, build_model, build_sam2_teacher

    config = DittaConfig()
    session = Session(build_model(config.model), build_sam2_teacher(config.teacher),
                      config)
    result = session.push(frame)          # (H, W, 3) uint8 BGR -> Result
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    # errors and typed values
    "DittaError": "ditta_ros.errors", "ConfigError": "ditta_ros.errors",
    "CheckpointError": "ditta_ros.errors", "InputError": "ditta_ros.errors",
    "AdaptationError": "ditta_ros.errors", "CancelledError": "ditta_ros.errors",
    "Phase": "types", "Source": "types", "Result": "types", "Prompt": "types",
    "Targets": "types", "Teacher": "types", "StepLosses": "types",
    "StepCallback": "types", "SessionStatus": "types", "Reason": "types",
    # model and checkpoints
    "DittaModel": "model", "build_model": "checkpoints", "save_model": "checkpoints",
    "save_adaptation": "checkpoints", "load_adaptation": "checkpoints",
    "convert_mmseg_checkpoint": "checkpoints",
    # stages A-D
    "prepare": "preprocess", "to_frame_size": "preprocess", "check_frame": "preprocess",
    "labels_and_reliability": "reliability", "iss_labels": "reliability",
    "ObjectMasks": "types", "MaskPropagator": "types", "PropagationTeacher": "teacher",
    "SAM2Teacher": "sam2_teacher", "build_sam2_teacher": "sam2_teacher",
    "run_warmup": "warmup", "WarmupOutcome": "warmup", "StageStart": "warmup",
    "fuse": "fusion", "StreamPredictor": "fusion", "FrameOutput": "fusion",
    "predict_clip": "fusion", "clip_output": "fusion",
    # streaming, offline runs, metrics
    "Session": "session", "SceneDetector": "scene", "AdaptationPolicy": "policy",
    "warmup_length": "runner", "run_w2f": "runner", "W2FRun": "runner",
    "W2FFrame": "runner", "W2FSummary": "runner",
    "ConfusionMatrix": "metrics", "VideoConsistency": "metrics",
    "vspw_ground_truth": "metrics",
}

# A public name means one thing: no re-exported name equals a submodule's name (importing
# ``ditta_ros.engine.adapt`` would otherwise replace the function ``adapt`` by the module).
# Stage C's function is ``ditta_ros.engine.adapt.adapt``; stage A's reliability map is
# ``ditta_ros.engine.reliability.reliability``; the whole warm-up is ``run_warmup``.

# a literal list, so that linters see the re-exports (kept equal to _EXPORTS' keys)
__all__ = [
    "AdaptationError", "AdaptationPolicy", "CancelledError", "CheckpointError", "ConfigError",
    "ConfusionMatrix", "DittaError", "DittaModel", "FrameOutput", "InputError",
    "MaskPropagator", "ObjectMasks", "Phase", "Prompt", "PropagationTeacher", "Reason",
    "Result", "SAM2Teacher", "SceneDetector", "Session", "SessionStatus", "Source",
    "StageStart", "StepCallback", "StepLosses", "StreamPredictor", "Targets", "Teacher",
    "VideoConsistency", "W2FFrame", "W2FRun", "W2FSummary", "WarmupOutcome", "build_model",
    "build_sam2_teacher", "check_frame", "clip_output", "convert_mmseg_checkpoint", "fuse",
    "iss_labels", "labels_and_reliability", "load_adaptation", "predict_clip", "prepare",
    "run_w2f", "run_warmup", "save_adaptation",
    "save_model", "to_frame_size", "vspw_ground_truth", "warmup_length",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = module if module.startswith("ditta_ros.") else f"{__name__}.{module}"
    value = getattr(importlib.import_module(path), name)
    globals()[name] = value          # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static re-exports for type checkers and IDEs
    from ditta_ros.engine.checkpoints import (
        build_model,
        convert_mmseg_checkpoint,
        load_adaptation,
        save_adaptation,
        save_model,
    )
    from ditta_ros.engine.fusion import (
        FrameOutput,
        StreamPredictor,
        clip_output,
        fuse,
        predict_clip,
    )
    from ditta_ros.engine.metrics import ConfusionMatrix, VideoConsistency, vspw_ground_truth
    from ditta_ros.engine.model import DittaModel
    from ditta_ros.engine.policy import AdaptationPolicy
    from ditta_ros.engine.preprocess import check_frame, prepare, to_frame_size
    from ditta_ros.engine.reliability import iss_labels, labels_and_reliability
    from ditta_ros.engine.runner import W2FFrame, W2FRun, W2FSummary, run_w2f, warmup_length
    from ditta_ros.engine.sam2_teacher import SAM2Teacher, build_sam2_teacher
    from ditta_ros.engine.scene import SceneDetector
    from ditta_ros.engine.session import Session
    from ditta_ros.engine.teacher import PropagationTeacher
    from ditta_ros.engine.types import (
        MaskPropagator,
        ObjectMasks,
        Phase,
        Prompt,
        Reason,
        Result,
        SessionStatus,
        Source,
        StepCallback,
        StepLosses,
        Targets,
        Teacher,
    )
    from ditta_ros.engine.warmup import StageStart, WarmupOutcome, run_warmup
    from ditta_ros.errors import (
        AdaptationError,
        CancelledError,
        CheckpointError,
        ConfigError,
        DittaError,
        InputError,
    )
