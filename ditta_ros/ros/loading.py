"""What ditta_node's configure transition loads, and its QoS profiles.

The default session factory builds the real engine (SegFormer + DiTTA head, the SAM2 teacher,
a streaming Session); tests may inject another factory with the same signature. Errors are
re-raised with the ROS parameter and its value in front, so the node's log line says which
parameter to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from ditta_ros.config import DittaConfig, NodeConfig
from ditta_ros.engine.types import Result, SessionStatus
from ditta_ros.errors import ConfigError, DittaError

StatusCallback = Callable[[SessionStatus], None]


class StreamSession(Protocol):
    """What the node needs of a session (``ditta_ros.engine.session.Session`` is one)."""

    def push(self, frame: np.ndarray, with_reliability: bool = False,
             stamp: float | None = None) -> Result: ...

    def restart_stream(self) -> None: ...

    def request_adaptation(self) -> None: ...

    def reset(self) -> None: ...

    def save_adaptation(self, path: Path | str) -> None: ...

    def load_adaptation(self, path: Path | str) -> None: ...

    def status(self) -> SessionStatus: ...

    def close(self, timeout: float | None = None) -> None: ...


class LoadedSession(NamedTuple):
    """What configure loads: the engine session and the number of classes its model has."""

    session: StreamSession
    num_classes: int


SessionFactory = Callable[[DittaConfig, StatusCallback], LoadedSession]


def named(parameter: str, value: object, err: DittaError) -> DittaError:
    """The same error type with the parameter and its value in front of the message."""
    return type(err)(f"parameter '{parameter}' = {value!r}: {err}")


def check_device(parameter: str, name: str) -> torch.device:
    """A usable torch device or ConfigError naming the parameter and the fix."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"parameter '{parameter}' = {name!r} is not a torch device ({err}); "
                          "use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"parameter '{parameter}' = {name!r}, but CUDA is not available "
                              f"on this machine; set {parameter}:=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"parameter '{parameter}' = {name!r}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); pick one of them")
    elif device.type != "cpu":
        raise ConfigError(f"parameter '{parameter}' = {name!r}: only cpu and cuda devices are "
                          "supported")
    return device


def default_session_factory(config: DittaConfig, on_status: StatusCallback) -> LoadedSession:
    """The real thing: SegFormer + DiTTA head, the SAM2 teacher, a streaming Session."""
    from ditta_ros.engine.checkpoints import build_model
    from ditta_ros.engine.sam2_teacher import build_sam2_teacher
    from ditta_ros.engine.session import Session

    try:
        model = build_model(config.model, window_radius=config.fusion.window_radius)
    except DittaError as err:
        raise named("model.checkpoint", config.model.checkpoint, err) from err
    try:
        teacher = build_sam2_teacher(config.teacher, config.model.device,
                                     num_classes=model.num_classes,
                                     precision=config.model.precision)
    except DittaError as err:
        raise named("teacher.sam2_checkpoint (with teacher.sam2_config "
                     f"{config.teacher.sam2_config!r})", config.teacher.sam2_checkpoint,
                     err) from err
    return LoadedSession(Session(model, teacher, config, on_status), int(model.num_classes))


def output_qos(node: NodeConfig) -> QoSProfile:
    reliability = (ReliabilityPolicy.RELIABLE if node.output_reliability == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=node.output_depth,
                      reliability=reliability, durability=DurabilityPolicy.VOLATILE)


def input_qos(node: NodeConfig) -> QoSProfile:
    """The sensor-data profile (best effort, volatile) with configurable reliability/depth."""
    reliability = (ReliabilityPolicy.RELIABLE if node.input_reliability == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=node.input_depth,
                      reliability=reliability, durability=qos_profile_sensor_data.durability)


# Entities this node destroys while the executor spins (outputs at cleanup, the input at
# deactivate) get no QoS event handlers: in rclpy 9 (Kilted) destroying an entity whose event
# handler the executor is adding to its wait set raises InvalidHandle in the executor thread
# and ends spin() (seen in this project's tests). The cost: no "incompatible QoS" warning for
# these topics; the input defaults to best effort, which every camera publisher matches.

STATUS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
