"""Every setting of ditta_ros, declared once, with the paper's defaults.

Each section is a frozen dataclass. A field's metadata carries its description and its
valid range or choices; :func:`validate` checks a whole config once, when it is built, and
raises :class:`~ditta_ros.errors.ConfigError` naming the field. The ROS parameters
(``ditta_ros.ros.parameters``), ``config/ditta.yaml`` and the README's parameter table are
all derived from these dataclasses, so they cannot disagree.

Defaults follow ../shared/ALGORITHM.md (the DiTTA paper and its reference implementation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ditta_ros.errors import ConfigError


def setting(
    default: Any,
    description: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[Any, ...] | None = None,
    read_only: bool = False,
) -> Any:
    """Declare one setting: its default, what it means and which values are valid.

    ``low``/``high`` are inclusive bounds for numbers; ``choices`` lists the accepted values
    of a string. ``read_only`` settings can only be given at start (ROS: read-only
    parameters), because changing them needs a new model or a new session.
    """
    meta = {"description": description, "low": low, "high": high, "choices": choices,
            "read_only": read_only}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return field(default=default, metadata=meta)


class _Section:
    """Base of every config section: validated once, when it is built."""

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The ISS model (SegFormer) and the DiTTA head."""

    checkpoint: str = setting(
        "",
        "Local path to the ISS model: a ditta_ros checkpoint (.pt, see ditta-convert-checkpoint) "
        "or a Hugging Face SegFormer directory (config.json + weights). Empty: seeded random "
        "weights (tests and demo only).",
        read_only=True)
    variant: str = setting(
        "tiny", "MiT size used when checkpoint is empty (random weights).",
        choices=("tiny", "b0", "b1", "b2", "b3", "b4", "b5"), read_only=True)
    num_classes: int = setting(
        124, "Number of classes when checkpoint is empty (a checkpoint carries its own).",
        low=1, high=65535, read_only=True)
    embed_dim: int = setting(
        256, "Decoder embedding width D when checkpoint is empty.", low=8, high=4096,
        read_only=True)
    fit_long: int = setting(
        853, "Preprocessing: the long side is fitted to at most this many pixels.",
        low=32, high=8192, read_only=True)
    fit_short: int = setting(
        480, "Preprocessing: the short side is fitted to at most this many pixels.",
        low=32, high=8192, read_only=True)
    dropout: float = setting(
        0.1, "Channel dropout (Dropout2d) before the classifier during adaptation.",
        low=0.0, high=0.99, read_only=True)
    drop_path: float = setting(
        0.1, "Largest stochastic-depth rate of the backbone during adaptation (linear from 0).",
        low=0.0, high=0.99, read_only=True)
    seed: int = setting(
        0, "Seed for random weights and for head parts a checkpoint lacks.", low=0,
        high=2**31 - 1, read_only=True)
    device: str = setting(
        "cpu", "Torch device of the ISS model and head: cpu, cuda, cuda:N.", read_only=True)
    precision: str = setting(
        "fp32", "Compute precision of the ISS network, the add-on, SAM2 (stage B) and the "
        "stage C steps: fp32, or bf16/fp16 autocast (float32 weights, classifier, losses, "
        "reliabilities and fusion). bf16 pays off on GPUs and on CPUs with bf16 matrix units "
        "(AMX); fp16 is meant for GPUs. On a CPU without such units torch emulates them, "
        "many times slower than fp32, and a warning says so.",
        choices=("fp32", "bf16", "fp16"), read_only=True)
    attention_implementation: str = setting(
        "sdpa", "SegFormer encoder attention: sdpa (torch's fused kernel, faster) or eager "
        "(matmul-softmax-matmul, bit-identical to the paper's MiT; sdpa differs by ~1e-6 "
        "in logits).", choices=("sdpa", "eager"), read_only=True)


@dataclass(frozen=True)
class TeacherConfig(_Section):
    """Stage B: SAM2 video predictor and the prompt/vote thresholds."""

    sam2_config: str = setting(
        "configs/sam2/sam2_hiera_l.yaml",
        "SAM2 config name inside the sam2 package (paper: SAM2 2.0 Hiera-L).", read_only=True)
    sam2_checkpoint: str = setting(
        "", "Local path to the SAM2 .pt checkpoint. Empty: seeded random weights (tests and "
        "demo only).", read_only=True)
    image_size: int = setting(1024, "SAM2 input size (square).", low=64, high=4096,
                              read_only=True)
    device: str = setting("", "Torch device for SAM2; empty: the model device.",
                          read_only=True)
    reliability_threshold: float = setting(
        0.8, "A class is prompted only where its peak reliability reaches this value.",
        low=0.0, high=1.0)
    max_objects: int = setting(100, "Most SAM2 objects tracked per warm-up.", low=1,
                               high=10000)
    dilation_iterations: int = setting(
        5, "3x3-cross dilations of propagated masks that mark the explained region.", low=0,
        high=100)
    size_power: float = setting(0.3, "Eq. 4: exponent of the object-coverage term.", low=0.0,
                                high=10.0)
    frequency_power: float = setting(0.8, "Eq. 4: exponent of the class-rarity term.",
                                     low=0.0, high=10.0)
    seed: int = setting(0, "Seed for random SAM2 weights when no checkpoint is given.",
                        low=0, high=2**31 - 1, read_only=True)


@dataclass(frozen=True)
class AdaptationConfig(_Section):
    """Warm-up and stage C (test-time adaptation)."""

    warmup_frames: int = setting(
        30, "Live streams: frames collected before adaptation starts (at least 2).", low=2,
        high=10000)
    warmup_ratio: int = setting(
        10, "Offline W2F runs: warm-up length in percent of the video (W_n = T*ratio//100, "
        "at least 1).", low=1, high=100)
    iterations: int = setting(5, "Passes over the warm-up frames (one step per frame).",
                              low=1, high=1000)
    lr: float = setting(1e-3, "AdamW learning rate.", low=0.0, high=1.0)
    beta1: float = setting(0.9, "AdamW beta1.", low=0.0, high=1.0)
    beta2: float = setting(0.999, "AdamW beta2.", low=0.0, high=1.0)
    eps: float = setting(1e-8, "AdamW eps.", low=0.0, high=1.0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", low=0.0, high=10.0)
    parameters: str = setting(
        "decoder", "What adaptation trains: the whole decoder with the DiTTA head (paper), "
        "or only the DiTTA head (add-on and projection head).",
        choices=("decoder", "head"))
    momentum: float = setting(0.99, "EMA factor of the momentum model.", low=0.0, high=1.0)
    temperature: float = setting(1.0, "Eq. 7 temperature T of the contrastive logits.",
                                 low=1e-6, high=100.0)
    distill: bool = setting(True, "Use the distillation loss (Eq. 5).")
    contrastive: bool = setting(True, "Use the contrastive loss (Eq. 6-7).")
    ce_on_probabilities: bool = setting(
        True, "Reference detail: cross-entropy applied to softmax outputs (a second "
        "log-softmax). Off: plain cross-entropy on logits.")
    seed: int = setting(5123, "Seed of the dropout and drop-path draws during adaptation.",
                        low=0, high=2**31 - 1)


@dataclass(frozen=True)
class FusionConfig(_Section):
    """Stage D: the temporal add-on and reliability-based fusion."""

    tau: float = setting(0.8, "Fuse the add-on where the plain reliability is below tau.",
                         low=0.0, high=1.0)
    window_radius: int = setting(5, "Add-on attention window radius r ((2r+1)^2 pixels).",
                                 low=0, high=64, read_only=True)


@dataclass(frozen=True)
class StreamConfig(_Section):
    """Streams (issue 13): scene-change detection and when to adapt again.

    Detector defaults were chosen from measurements on synthetic multi-scene streams
    (docs/streams.md, bench/bench_scene.py); re-measure them on your own footage.
    """

    policy: str = setting(
        "on_scene_change", "When to adapt: once (the first warm-up only: the paper's "
        "protocol), on_scene_change (again after a cut or a drift of the scene), periodic "
        "(again every period_s seconds).", choices=("once", "on_scene_change", "periodic"))
    period_s: float = setting(
        300.0, "periodic: seconds between the starts of two adaptations.", low=0.1,
        high=1e6)
    cooldown_s: float = setting(
        10.0, "Least seconds between the starts of two adaptations the policy triggers "
        "(a cut or drift inside it waits for its end).", low=0.0, high=1e6)
    max_per_hour: int = setting(
        60, "Most adaptations the policy starts in any hour of stream time; 0: no limit.",
        low=0, high=100000)
    cut_threshold: float = setting(
        0.3, "Cut: total-variation distance (0..1) of a frame's colour histogram from both the "
        "previous frame's and the mean of the frames before, above which the previous frame "
        "is unrelated (fusion restarts).",
        low=0.0, high=1.0)
    drift_threshold: float = setting(
        0.25, "Drift: total-variation distance (0..1) between the served class distribution "
        "over the window and the adapted scene's above which the scene has changed.",
        low=0.0, high=1.0)
    drift_appearance_threshold: float = setting(
        0.25, "Drift: total-variation distance (0..1) between the colour histogram over the "
        "window and the warm-up's above which the scene has changed.", low=0.0, high=1.0)
    window: int = setting(
        15, "Frames in the detector's sliding window (and in each reference).", low=2,
        high=10000)


@dataclass(frozen=True)
class NodeConfig(_Section):
    """The ROS 2 node: topics, QoS, outputs. (Owned by ditta_ros.ros; the engine ignores it.)"""

    transport: str = setting("raw", "Input transport: raw (sensor_msgs/Image on 'image') or "
                             "compressed (sensor_msgs/CompressedImage on 'image/compressed').",
                             choices=("raw", "compressed"), read_only=True)
    input_reliability: str = setting(
        "best_effort", "Input QoS reliability (sensor-data default; reliable suits bag "
        "evaluation).", choices=("best_effort", "reliable"), read_only=True)
    input_depth: int = setting(1, "Input QoS history depth.", low=1, high=1000,
                               read_only=True)
    output_reliability: str = setting("reliable", "Output QoS reliability.",
                                      choices=("best_effort", "reliable"), read_only=True)
    output_depth: int = setting(2, "Output QoS history depth.", low=1, high=1000,
                                read_only=True)
    classes: str = setting(
        "vspw", "Class names and palette: vspw, cityscapes, ade20k, or a path to a YAML list.",
        read_only=True)
    color_encoding: str = setting("rgb8", "Encoding of ~/labels_color.",
                                  choices=("rgb8", "bgr8"))
    publish_overlay: bool = setting(True, "Publish ~/overlay (input blended with colours).")
    overlay_alpha: float = setting(0.5, "Weight of the colours in ~/overlay.", low=0.0,
                                   high=1.0)
    publish_confidence: bool = setting(True, "Publish ~/confidence (reliability).")
    confidence_encoding: str = setting("mono8", "~/confidence: mono8 (0-255) or 32FC1.",
                                       choices=("mono8", "32FC1"))
    status_rate: float = setting(1.0, "~/status publish rate in Hz (also on every phase "
                                 "change); 0 disables the periodic message.", low=0.0,
                                 high=100.0)
    diagnostics_rate: float = setting(1.0, "/diagnostics publish rate in Hz; 0 disables.",
                                      low=0.0, high=100.0)
    adaptation_file: str = setting("", "Adaptation to load at configure (a file written by "
                                   "~/save_adaptation); empty: adapt on the stream.")
    autostart: bool = setting(False, "Configure and activate at start (no lifecycle "
                              "manager needed).", read_only=True)


@dataclass(frozen=True)
class DittaConfig:
    """The engine's whole configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def replace(self, **sections: Mapping[str, Any]) -> DittaConfig:
        """A copy with some fields of some sections changed, e.g. ``replace(model={"seed": 1})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **values)
                   for name, values in sections.items()}
        return dataclasses.replace(self, **changed)


def validate(section: Any) -> None:
    """Check every field of one config section against its metadata; raise ConfigError."""
    prefix = type(section).__name__
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        meta = f.metadata
        if not meta:
            continue
        name = f"{prefix}.{f.name}"
        expected = type(f.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(section, f.name, value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{name} must be {expected.__name__}, got {value!r}")
        if meta["low"] is not None and value < meta["low"]:
            raise ConfigError(f"{name} = {value!r} is below its minimum {meta['low']}")
        if meta["high"] is not None and value > meta["high"]:
            raise ConfigError(f"{name} = {value!r} is above its maximum {meta['high']}")
        if meta["choices"] is not None and value not in meta["choices"]:
            raise ConfigError(f"{name} = {value!r} is not one of {list(meta['choices'])}")
    if isinstance(section, ModelConfig) and section.fit_long < section.fit_short:
        raise ConfigError("ModelConfig.fit_long must be >= ModelConfig.fit_short")


def settings_of(section_type: type) -> list[dataclasses.Field[Any]]:
    """The declared settings of a section class, in declaration order."""
    return [f for f in dataclasses.fields(section_type) if f.metadata]
