"""Messages the node publishes, built from engine results (pure functions, unit-tested).

Every image output carries the input's header unchanged (same stamp and frame_id: Nav2's
semantic segmentation layer and message filters match on exact time) and the camera's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ditta_ros.config import NodeConfig
from ditta_ros.engine.types import Phase, Result, SessionStatus, Source
from ditta_ros.labels import colorize
from ditta_ros.msg import AdaptationStatus
from ditta_ros.ros.image import array_to_image
from ditta_ros.ros.worker import FrameCounts

UNLABELLED = 255  # label value of pixels without a class in mono8 label images
REPEATED_FAILURES = 2  # /diagnostics warns from this many failed adaptations in a row

PHASE_IDS: dict[Phase | None, int] = {
    None: AdaptationStatus.PHASE_NONE,
    Phase.WARMUP: AdaptationStatus.PHASE_WARMUP,
    Phase.ADAPTING: AdaptationStatus.PHASE_ADAPTING,
    Phase.ADAPTED: AdaptationStatus.PHASE_ADAPTED,
    Phase.FAILED: AdaptationStatus.PHASE_FAILED,
}
PHASE_LABELS: dict[Phase | None, str] = {
    None: "none", Phase.WARMUP: "warmup", Phase.ADAPTING: "adapting",
    Phase.ADAPTED: "adapted", Phase.FAILED: "failed"}
LIFECYCLE_IDS: dict[str, int] = {
    "unconfigured": AdaptationStatus.LIFECYCLE_UNCONFIGURED,
    "inactive": AdaptationStatus.LIFECYCLE_INACTIVE,
    "active": AdaptationStatus.LIFECYCLE_ACTIVE,
    "finalized": AdaptationStatus.LIFECYCLE_FINALIZED,
}


def label_encoding(num_classes: int) -> str:
    """mono8 while every id and the unlabelled value 255 fit in a byte, else mono16."""
    return "mono8" if num_classes <= UNLABELLED else "mono16"


def label_image(labels: np.ndarray, num_classes: int, header: Header) -> Image:
    """(H, W) int64 class ids -> ~/labels (mono8 or mono16); ids outside [0, C) -> 255/65535."""
    encoding = label_encoding(num_classes)
    dtype = np.uint8 if encoding == "mono8" else np.uint16
    invalid = np.iinfo(dtype).max if encoding == "mono16" else UNLABELLED
    valid = (labels >= 0) & (labels < num_classes)
    ids = np.where(valid, labels, invalid).astype(dtype)             # (H, W)
    return array_to_image(ids, encoding, header)


def colour_image(colours_rgb: np.ndarray, encoding: str, header: Header) -> Image:
    """(H, W, 3) uint8 RGB palette colours -> ~/labels_color in rgb8 or bgr8."""
    pixels = colours_rgb if encoding == "rgb8" else colours_rgb[:, :, ::-1]
    return array_to_image(np.ascontiguousarray(pixels), encoding, header)


def overlay_image(frame_bgr: np.ndarray, colours_rgb: np.ndarray, alpha: float, encoding: str,
                  header: Header) -> Image:
    """alpha * colours + (1 - alpha) * camera frame, rounded, in rgb8 or bgr8."""
    colours_bgr = np.ascontiguousarray(colours_rgb[:, :, ::-1])
    blend = cv2.addWeighted(colours_bgr, alpha, frame_bgr, 1.0 - alpha, 0.0)  # (H, W, 3) BGR
    pixels = blend if encoding == "bgr8" else np.ascontiguousarray(blend[:, :, ::-1])
    return array_to_image(pixels, encoding, header)


def confidence_image(reliability: np.ndarray, encoding: str, header: Header) -> Image:
    """(H, W) float32 reliability in [0, 1] -> mono8 (round(255 r)) or 32FC1 (r itself)."""
    r = np.clip(np.nan_to_num(reliability.astype(np.float32), nan=0.0), 0.0, 1.0)
    if encoding == "32FC1":
        return array_to_image(r, "32FC1", header)
    return array_to_image(np.round(r * 255.0).astype(np.uint8), "mono8", header)


def result_images(frame_bgr: np.ndarray, result: Result, header: Header, node: NodeConfig,
                  palette: np.ndarray, num_classes: int) -> Iterator[tuple[str, Image]]:
    """(output name, image) for one served frame, in publishing order, the label image
    first; the colour work runs only as the next image is asked for."""
    yield "labels", label_image(result.labels, num_classes, header)
    colours = colorize(result.labels, palette)                      # (H, W, 3) RGB
    yield "labels_color", colour_image(colours, node.color_encoding, header)
    if node.publish_overlay:
        yield "overlay", overlay_image(frame_bgr, colours, node.overlay_alpha,
                                       node.color_encoding, header)
    if node.publish_confidence and result.reliability is not None:
        yield "confidence", confidence_image(result.reliability, node.confidence_encoding,
                                             header)


def label_info(names: Sequence[str], header: Header, threshold: float = 0.0) -> Any:
    """vision_msgs/LabelInfo: class id i -> names[i]; threshold: the minimum confidence a
    label must reach to count (0: every label is published)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    msg.header = header
    msg.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(names)]
    msg.threshold = float(threshold)
    return msg


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def status_message(stamp: Time, lifecycle: str, status: SessionStatus | None,
                   serving: Source | None, counts: FrameCounts, message: str = ""
                   ) -> AdaptationStatus:
    """~/status from the session's snapshot (None: not configured) and the frame counters."""
    msg = AdaptationStatus()
    msg.header.stamp = stamp
    msg.lifecycle_state = LIFECYCLE_IDS.get(lifecycle, AdaptationStatus.LIFECYCLE_UNKNOWN)
    msg.lifecycle_label = lifecycle
    phase = status.phase if status is not None else None
    msg.phase, msg.phase_label = PHASE_IDS[phase], PHASE_LABELS[phase]
    msg.message = message or (status.message if status is not None else "not configured")
    msg.serving = serving.value if serving is not None else "none"
    if status is not None:
        msg.warmup_frames_collected = int(status.warmup_collected)
        msg.warmup_frames_target = int(status.warmup_target)
        msg.adaptation_steps_done = int(status.steps_done)
        msg.adaptation_steps_total = int(status.steps_total)
        msg.adaptation_progress = (float(status.steps_done) / status.steps_total
                                   if status.steps_total else 0.0)
        msg.adaptations_completed = int(status.adaptations_done)
        msg.stage = status.stage
        msg.superseded_error = status.superseded_error
        msg.adaptation_reason = status.adaptation_reason.value
        msg.adaptations_started = int(status.adaptations_started)
        msg.scene_cuts = int(status.cuts)
        msg.consecutive_failures = int(status.consecutive_failures)
        losses = status.last_losses
        msg.loss_distill = _nan_if_none(losses.distill if losses else None)
        msg.loss_distill_addon = _nan_if_none(losses.distill_addon if losses else None)
        msg.loss_contrastive = _nan_if_none(losses.contrastive if losses else None)
        msg.loss_total = _nan_if_none(losses.total if losses else None)
        msg.sam2_objects = int(status.num_objects)
        msg.stage_a_seconds = float(status.stage_seconds.get("A", math.nan))
        msg.stage_b_seconds = float(status.stage_seconds.get("B", math.nan))
        msg.stage_c_seconds = float(status.stage_seconds.get("C", math.nan))
    else:
        for name in ("loss_distill", "loss_distill_addon", "loss_contrastive", "loss_total",
                     "stage_a_seconds", "stage_b_seconds", "stage_c_seconds"):
            setattr(msg, name, math.nan)
    msg.inference_ms = float(counts.inference_ms)
    msg.latency_ms = float(counts.latency_ms)
    msg.frames_received = counts.received
    msg.frames_processed = counts.processed
    msg.frames_dropped = counts.dropped
    msg.frames_rejected = counts.rejected
    msg.last_rejection = counts.last_rejection
    return msg


def diagnostics_message(stamp: Time, name: str, status: AdaptationStatus,
                        counts: FrameCounts, recent_rejections: bool,
                        last_failure: str = "") -> DiagnosticArray:
    """/diagnostics: one DiagnosticStatus with rates, latency, drops and the phase.

    Level: STALE when not active; WARN when ``REPEATED_FAILURES`` or more adaptations failed
    in a row (whatever the phase: the stream policy may already be collecting the next
    warm-up; ``last_failure`` says why the latest failed), when the adaptation failed, or
    when frames were rejected since the previous report; else OK.
    """
    entry = DiagnosticStatus()
    entry.name = f"{name}: semantic segmentation"
    entry.hardware_id = name
    if status.lifecycle_state != AdaptationStatus.LIFECYCLE_ACTIVE:
        entry.level, entry.message = DiagnosticStatus.STALE, f"node {status.lifecycle_label}"
    elif status.consecutive_failures >= REPEATED_FAILURES:
        entry.level = DiagnosticStatus.WARN
        entry.message = (f"adaptations fail repeatedly: {status.consecutive_failures} in a "
                         f"row{'; latest: ' + last_failure if last_failure else ''}")
    elif status.phase == AdaptationStatus.PHASE_FAILED:
        entry.level, entry.message = DiagnosticStatus.WARN, f"adaptation failed: {status.message}"
    elif recent_rejections:
        entry.level = DiagnosticStatus.WARN
        entry.message = f"rejecting frames: {counts.last_rejection}"
    else:
        entry.level, entry.message = DiagnosticStatus.OK, status.phase_label
    values = {
        "phase": status.phase_label, "serving": status.serving,
        "input_rate_hz": f"{counts.input_hz:.2f}", "output_rate_hz": f"{counts.output_hz:.2f}",
        "latency_ms": f"{counts.latency_ms:.1f}", "inference_ms": f"{counts.inference_ms:.1f}",
        "frames_received": str(counts.received), "frames_processed": str(counts.processed),
        "frames_dropped": str(counts.dropped), "frames_rejected": str(counts.rejected),
        "last_rejection": counts.last_rejection,
        "adaptations_completed": str(status.adaptations_completed),
        "adaptations_started": str(status.adaptations_started),
        "adaptation_reason": status.adaptation_reason,
        "scene_cuts": str(status.scene_cuts),
        "consecutive_failures": str(status.consecutive_failures),
    }
    entry.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [entry]
    return array
