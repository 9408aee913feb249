"""Writing rosbag2 bags with ``rosbags``: image and label messages, raw copies.

The evaluation writes the predicted labels of every method (and optionally their colours) as
Image topics beside the input images, with the input's header stamps and record times, so a
run can be replayed in RViz or Foxglove; the tests write their bags with it too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from ditta_ros.errors import InputError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The ROS 2 Kilted message definitions (sensor_msgs, std_msgs, builtin_interfaces)."""
    return get_typestore(Stores.ROS2_KILTED)


def stamp_ns(header: Any) -> int:
    """Header stamp in integer nanoseconds (the key that matches frames, labels, outputs)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def make_image(array: np.ndarray, encoding: str, stamp: int, frame_id: str = "") -> Any:
    """A ``sensor_msgs/Image`` message (rosbags type) holding ``array`` as ``encoding``."""
    store = typestore()
    arr = np.ascontiguousarray(array)
    height, width = arr.shape[:2]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)
    return store.types[IMAGE_TYPE](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=arr.strides[0], data=np.frombuffer(arr.tobytes(), np.uint8))


def make_compressed(frame_bgr: np.ndarray, stamp: int, frame_id: str = "",
                    fmt: str = "jpeg") -> Any:
    """A ``sensor_msgs/CompressedImage`` message (rosbags type) holding a jpeg or png."""
    store = typestore()
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", frame_bgr)
    if not ok:
        raise InputError(f"could not encode a frame as {fmt}")
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)
    return store.types[COMPRESSED_TYPE](header=header, format=fmt,
                                        data=np.asarray(buf, np.uint8).ravel())


def label_encoding(num_classes: int) -> str:
    """mono8 when every class id (and IGNORE) fits a byte, else mono16."""
    return "mono8" if num_classes <= 255 else "mono16"


class BagWriter:
    """Writes a rosbag2 bag (sqlite3 or mcap): image topics, label topics, raw copies."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f"output bag {self.path} already exists; remove it or choose "
                             "another path")
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise InputError(f"bag storage {storage!r} is not one of mcap, sqlite3")
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        try:
            self._writer.open()
        except WriterError as exc:
            raise InputError(f"cannot create bag {self.path}: {exc}") from exc
        self._conns: dict[str, Any] = {}

    def _conn(self, topic: str, msgtype: str) -> Any:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype,
                                                             typestore=typestore())
        return self._conns[topic]

    def write(self, topic: str, msg: Any, log_time: int) -> None:
        """Serialise and write one rosbags message."""
        msgtype = msg.__msgtype__
        self._writer.write(self._conn(topic, msgtype), log_time,
                           typestore().serialize_cdr(msg, msgtype))

    def write_raw(self, topic: str, msgtype: str, raw: bytes, log_time: int) -> None:
        """Copy an already serialised message (the input images, byte for byte)."""
        self._writer.write(self._conn(topic, msgtype), log_time, raw)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
