"""The node's data path, from the subscription callback to the output topics::

    camera message -> latest-frame slot -> worker thread -> image decode -> stream health
    -> Session.push -> Result -> label, colour, overlay and confidence images (input header)

The subscription callback only hands the message to a slot of size one and returns; one
worker thread decodes, pushes and publishes. Every frame received is processed, dropped
(replaced in the slot, left in it at stop, or arriving while nothing is configured) or
rejected with a reason, and counted in :class:`~ditta_ros.ros.stream_health.StreamHealth`;
warnings are rate-limited there.

No rclpy here: the node hands in what a frame needs (:class:`FrameTarget`, read once per
frame, so live parameter changes apply from the next frame), a publish function and its
logger, so the path runs and is tested without a ROS graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from ditta_ros.config import NodeConfig
from ditta_ros.errors import InputError
from ditta_ros.ros import outputs
from ditta_ros.ros.image import compressed_to_frame, image_to_frame
from ditta_ros.ros.loading import StreamSession
from ditta_ros.ros.log_bridge import RosLog
from ditta_ros.ros.stream_health import StreamHealth
from ditta_ros.ros.worker import LatestSlot, Worker

Item = tuple[Any, float]          # (Image or CompressedImage, time.monotonic() at receipt)


class FrameTarget(NamedTuple):
    """What one frame needs of the configured node."""

    session: StreamSession
    node: NodeConfig
    palette: np.ndarray           # (N, 3) uint8 RGB, one colour per class
    num_classes: int


class DataPath:
    """``target()``: the configured node's :class:`FrameTarget`, None when not configured.
    ``publish(name, image)``: send on output ``name`` ("labels", "labels_color", ...).
    ``publish_status()``: called after a rejection's warning line (as rate-limited)."""

    def __init__(self, health: StreamHealth, target: Callable[[], FrameTarget | None],
                 publish: Callable[[str, Image], None], log: RosLog,
                 publish_status: Callable[[], None]) -> None:
        self.health = health
        self._target, self._publish, self._log = target, publish, log
        self._publish_status = publish_status
        self._slot: LatestSlot[Item] = LatestSlot()
        self._worker: Worker[Item] | None = None

    def start(self) -> None:
        """Start the worker thread on an empty slot (activate)."""
        self._slot.clear()
        worker: Worker[Item] = Worker(self._slot, self.process, self._worker_error)
        self._worker = worker
        worker.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the worker after its current frame; a frame left waiting counts as dropped.
        False when the thread did not end within ``timeout`` seconds."""
        worker, self._worker = self._worker, None
        stopped = worker is None or worker.stop(timeout=timeout)
        if self._slot.clear() is not None:
            self.health.stats.dropped()
        return stopped

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def pending(self) -> int:
        """Frames waiting in the slot (0 or 1)."""
        return self._slot.pending

    def on_image(self, msg: Image | CompressedImage) -> None:
        """The subscription callback. Hand over only: never decode or run the model here."""
        self.health.stats.received()
        if self._slot.put((msg, time.monotonic())) is not None:
            self.health.stats.dropped()

    def process(self, item: Item) -> None:
        """One frame, on the worker thread: decode, check, push, publish."""
        msg, received = item
        target = self._target()
        if target is None:
            self.health.stats.dropped()
            return
        header, health, session = msg.header, self.health, target.session
        try:
            decoded = (compressed_to_frame(msg) if isinstance(msg, CompressedImage)
                       else image_to_frame(msg))
            height, width = decoded.frame.shape[:2]
            self._warn(health.note_size(width, height, header.frame_id))
            stamp = health.note_stamp(header.stamp.sec, header.stamp.nanosec, header.frame_id)
            self._warn(stamp.warning)
            if stamp.jumped_back:
                session.restart_stream()     # never fuse with the frame before the jump
            result = session.push(decoded.frame, with_reliability=target.node.publish_confidence,
                                  stamp=stamp.seconds)   # the stream policy's clock
        except InputError as err:
            line = health.rejected(str(err), header.frame_id)
            if line is not None:
                self._warn(line)
                self._publish_status()       # as rate-limited as the log line
            return
        health.stats.processed(result.inference_s)
        try:
            for name, image in outputs.result_images(decoded.frame, result, header,
                                                     target.node, target.palette,
                                                     target.num_classes):
                self._publish(name, image)
        except Exception as err:  # noqa: BLE001 - the frame stays counted once: processed
            line = health.publish_error(err)
            if line is not None:
                self._log.error(line)
            return
        health.stats.published(time.monotonic() - received)

    def _warn(self, line: str | None) -> None:
        if line is not None:
            self._log.warning(line)

    def _worker_error(self, err: BaseException) -> None:
        line = self.health.internal_error(err)
        if line is not None:  # rate-limited like rejections: a bad stream must not flood
            self._log.error(line)
