"""rosbag2 bags (sqlite3 and mcap) read and written with ``rosbags``: no ROS install needed.

Reading: a rosbag2 folder (``metadata.yaml`` + its data files), one of its data files, or a
bare ``.mcap`` file without ``metadata.yaml`` (what many recorders and tools hand around; its
own schema and channel records say what it holds). One image topic (``sensor_msgs/msg/Image``
in any encoding the node accepts, or ``sensor_msgs/msg/CompressedImage``) becomes a lazy
sequence of ``(H, W, 3) uint8 BGR`` frames;
an optional label topic (``Image``, mono8/mono16 class ids) is matched to the frames by header
stamp, mapped through an optional id table, and gives ``(H, W) int64`` ground truth with
:data:`IGNORE` for ignored pixels.

Writing lives in :mod:`ditta_ros.tools.bagwrite` (re-exported here).

Frames are read in header-stamp order (the order the camera produced them) unless
``order="record"``; :attr:`BagSource.out_of_order` counts the records whose stamp is older
than an earlier record's. A message that cannot be deserialised is kept as a bad frame (see
:mod:`ditta_ros.tools.bagscan`, which checks every frame), never fatal.

Every problem with the bag itself (missing file or topic, wrong message type, unmatched
stamps, a truncated file) raises :class:`~ditta_ros.errors.InputError` saying what and
how to fix.
"""

from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Mapping

import numpy as np
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.rosbag2.storage_mcap import McapReader

from ditta_ros.engine import metrics
from ditta_ros.errors import InputError
from ditta_ros.ros import image as ros_image  # pure conversions; imports no rclpy
from ditta_ros.tools.bagwrite import (  # noqa: F401 - the writing half, re-exported
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    BagWriter,
    label_encoding,
    make_compressed,
    make_image,
    stamp_ns,
    typestore,
)
from ditta_ros.tools.lazy import LazySequence

IGNORE = metrics.IGNORE
"""Ground-truth value of ignored pixels."""

LABEL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")
# Errors a corrupt or truncated bag raises from rosbags or its storage back ends.
_BAG_ERRORS = (ReaderError, sqlite3.DatabaseError, struct.error, EOFError, OSError,
               KeyError, ValueError)
ORDERS = ("stamp", "record")


def _bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return np.asarray(data, np.uint8).tobytes()


def decode_frame(msg: Any, msgtype: str) -> np.ndarray:
    """A deserialised Image or CompressedImage -> (H, W, 3) uint8 BGR.

    Uses the node's own conversion (:mod:`ditta_ros.ros.image`, pure functions on plain
    fields, no rclpy), so a bag decodes offline exactly as the node decodes it live.
    """
    if msgtype == COMPRESSED_TYPE:
        return ros_image.compressed_to_frame(msg).frame
    pixels = ros_image.raw_to_array(_bytes(msg.data), msg.height, msg.width, msg.encoding,
                                    msg.step, bool(msg.is_bigendian))
    return ros_image.array_to_bgr(pixels, msg.encoding)


def labels_from_image(height: int, width: int, encoding: str, is_bigendian: int, step: int,
                      data: Any, id_map: Mapping[int, int] | None = None,
                      ignore: tuple[int, ...] = ()) -> np.ndarray:
    """A label ``Image`` (mono8/mono16 class ids) -> (H, W) int64 classes, IGNORE where ignored.

    ``id_map`` maps raw values to classes (unmapped raw values become IGNORE); ``ignore``
    lists raw values to ignore.
    """
    if encoding not in LABEL_ENCODINGS:
        raise InputError(f"label Image encoding {encoding!r} cannot hold class ids; use "
                         f"{', '.join(LABEL_ENCODINGS)}")
    raw = ros_image.raw_to_array(_bytes(data), height, width, encoding, step,
                                 bool(is_bigendian)).astype(np.int64)  # (H, W)
    if id_map:
        keys = np.array(sorted(id_map), np.int64)
        values = np.array([id_map[k] for k in sorted(id_map)], np.int64)
        pos = np.clip(np.searchsorted(keys, raw), 0, len(keys) - 1)
        labels = np.where(keys[pos] == raw, values[pos], IGNORE)
    else:
        labels = raw.copy()
    if ignore:
        labels[np.isin(raw, np.array(ignore, np.int64))] = IGNORE
    labels[labels < 0] = IGNORE
    return labels


@dataclass(frozen=True)
class FrameIndex:
    """Where one image message lies in the bag."""

    log_time: int      # record time, ns (what the bag is ordered and replayed by)
    stamp: int         # header stamp, ns (what frames, labels and outputs are matched by)
    record: int = 0    # position in record order (0 = the first image message recorded)


def bare_mcap(path: Path) -> Path | None:
    """The .mcap file to read without metadata.yaml, or None when ``path`` is no bare mcap."""
    if path.is_file():
        return path if path.suffix == ".mcap" and not (path.parent / "metadata.yaml").exists() \
            else None
    if (path / "metadata.yaml").exists():
        return None
    files = sorted(path.glob("*.mcap"))
    if len(files) > 1:
        raise InputError(f"{path} holds {len(files)} .mcap files and no metadata.yaml: pass "
                         f"one file ({files[0].name}, ...), or reindex the split bag with "
                         "`ros2 bag reindex`")
    return files[0] if files else None


def _open_reader(path: Path) -> tuple[Any, str]:
    """An open rosbags reader of ``path`` and what it is ("rosbag2 <storage>", "bare mcap")."""
    if not path.exists():
        raise InputError(f"bag {path} does not exist; pass a rosbag2 directory (with "
                         "metadata.yaml), its .db3/.mcap file, or a bare .mcap file")
    bare = bare_mcap(path)
    if bare is not None:
        reader: Any = McapReader(bare)
        what, where = "bare mcap", bare
    else:
        bag_dir = path.parent if path.is_file() else path
        if not (bag_dir / "metadata.yaml").exists():
            raise InputError(f"{bag_dir} has no metadata.yaml: not a rosbag2 bag (or a "
                             "truncated copy); record it again or run `ros2 bag reindex` on "
                             "it (a bare .mcap file is read without one)")
        reader, what, where = Reader(bag_dir), "rosbag2", bag_dir
    try:
        reader.open()
    except _BAG_ERRORS as exc:
        raise InputError(f"bag {where} cannot be read ({exc}); it may be truncated or "
                         "corrupt: re-record it, or try `ros2 bag reindex`") from exc
    if what == "rosbag2":
        what += " mcap" if any(where.glob("*.mcap")) else " sqlite3"
    return reader, what


def bag_name(path: Path) -> str:
    """A bag's video name: its folder's name, or a bare .mcap file's stem."""
    if path.is_file():
        return path.stem if bare_mcap(path) is not None else path.parent.name
    return path.name


def out_of_order(stamps: list[int]) -> int:
    """Records whose stamp is older than the newest stamp recorded before them."""
    newest, count = None, 0
    for stamp in stamps:
        if newest is not None and stamp < newest:
            count += 1
        else:
            newest = stamp
    return count


class BagSource:
    """An open bag: an image topic as lazy frames, an optional label topic matched by stamp.

    image_topic None picks the only image topic of the bag (an error lists them when there
    are several). ``order`` "stamp" (default) reads the frames in header-stamp order, "record"
    in the order they were recorded. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, image_topic: str | None = None,
                 label_topic: str | None = None, id_map: Mapping[int, int] | None = None,
                 ignore: tuple[int, ...] = (), order: str = "stamp") -> None:
        if order not in ORDERS:
            raise InputError(f"frame order {order!r} is not one of {', '.join(ORDERS)}")
        self.path = Path(path)
        self.order = order
        self._reader, self.storage = _open_reader(self.path)
        try:
            self.topics = {c.topic: c.msgtype for c in self._reader.connections}
            self.message_counts: dict[str, int] = {}
            for c in self._reader.connections:
                self.message_counts[c.topic] = (self.message_counts.get(c.topic, 0)
                                                + int(getattr(c, "msgcount", 0) or 0))
            self.image_topic = self._pick_image_topic(image_topic, label_topic)
            self.image_type = self.topics[self.image_topic]
            self._image_conns = [c for c in self._reader.connections
                                 if c.topic == self.image_topic]
            self.bad_records: dict[int, str] = {}    # record -> why it cannot be read
            self.records = self._scan_images()
            self._first_at: dict[int, int] = {}
            for entry in self.records:
                self._first_at.setdefault(entry.log_time, entry.record)
            self.out_of_order = out_of_order([f.stamp for f in self.records])
            self.index = (sorted(self.records, key=lambda f: (f.stamp, f.record))
                          if order == "stamp" else list(self.records))
            self.label_topic = label_topic
            self._id_map = dict(id_map) if id_map else None
            self._ignore = tuple(ignore)
            self.label_log_times: dict[int, int] = {}
            self.label_sizes: dict[int, tuple[int, int]] = {}    # stamp -> (H, W)
            if label_topic is not None:
                self.label_log_times = self._scan_labels(label_topic)
        except BaseException:
            self._reader.close()
            raise
        self._cursor: Iterator[tuple[Any, int, bytes]] | None = None
        self._cursor_next = -1

    # -- topics -----------------------------------------------------------------------------
    def _pick_image_topic(self, wanted: str | None, label_topic: str | None) -> str:
        images = sorted(t for t, k in self.topics.items()
                        if k in (IMAGE_TYPE, COMPRESSED_TYPE) and t != label_topic)
        listing = ", ".join(f"{t} ({k})" for t, k in sorted(self.topics.items())) or "none"
        if wanted is None:
            if len(images) > 1:   # label topics are images too: they are not the camera
                images = [t for t in images if "label" not in t.rsplit("/", 1)[-1]] or images
            if len(images) == 1:
                return images[0]
            raise InputError(f"bag {self.path} has {len(images)} image topics; pick one with "
                             f"--image-topic (topics: {listing})")
        if wanted not in self.topics:
            raise InputError(f"bag {self.path} has no topic {wanted!r} (topics: {listing})")
        if self.topics[wanted] not in (IMAGE_TYPE, COMPRESSED_TYPE):
            raise InputError(f"topic {wanted!r} of bag {self.path} is {self.topics[wanted]}, "
                             f"not {IMAGE_TYPE} or {COMPRESSED_TYPE}")
        return wanted

    def _messages(self, conns: list[Any], start: int | None = None
                  ) -> Iterator[tuple[Any, int, bytes]]:
        try:
            yield from self._reader.messages(connections=conns, start=start)
        except _BAG_ERRORS as exc:
            raise InputError(f"bag {self.path} stops being readable ({exc}); it is probably "
                             "truncated: re-record it or try `ros2 bag reindex`") from exc

    def _deserialize(self, raw: bytes, msgtype: str, topic: str) -> Any:
        try:
            return typestore().deserialize_cdr(raw, msgtype)
        except Exception as exc:  # rosbags raises assorted errors on bad CDR  # noqa: BLE001
            raise InputError(f"a {msgtype} message on {topic} in bag {self.path} cannot be "
                             f"deserialised ({exc}); the bag is corrupt") from exc

    def _scan_images(self) -> list[FrameIndex]:
        """Every image message in record order; one that cannot be deserialised keeps the
        previous record's stamp (so it stays in place) and is noted in ``bad_records``."""
        index: list[FrameIndex] = []
        for conn, log_time, raw in self._messages(self._image_conns):
            record = len(index)
            try:
                stamp = stamp_ns(self._deserialize(raw, conn.msgtype, self.image_topic).header)
            except InputError as exc:
                self.bad_records[record] = str(exc)
                stamp = index[-1].stamp if index else 0
            index.append(FrameIndex(log_time, stamp, record))
        if not index:
            raise InputError(f"topic {self.image_topic!r} of bag {self.path} has no messages")
        return index

    def _scan_labels(self, topic: str) -> dict[int, int]:
        if topic not in self.topics:
            listing = ", ".join(sorted(self.topics))
            raise InputError(f"bag {self.path} has no label topic {topic!r} (topics: "
                             f"{listing})")
        if self.topics[topic] != IMAGE_TYPE:
            raise InputError(f"label topic {topic!r} of bag {self.path} is "
                             f"{self.topics[topic]}; it must be {IMAGE_TYPE} with class ids "
                             f"({', '.join(LABEL_ENCODINGS)})")
        conns = [c for c in self._reader.connections if c.topic == topic]
        by_stamp: dict[int, int] = {}
        for conn, log_time, raw in self._messages(conns):
            msg = self._deserialize(raw, conn.msgtype, topic)
            if msg.encoding not in LABEL_ENCODINGS:
                raise InputError(f"label topic {topic!r} of bag {self.path} has encoding "
                                 f"{msg.encoding!r}; class ids need "
                                 f"{', '.join(LABEL_ENCODINGS)}")
            stamp = stamp_ns(msg.header)
            if stamp not in by_stamp:
                by_stamp[stamp] = log_time
                self.label_sizes[stamp] = (int(msg.height), int(msg.width))
        frame_stamps = {f.stamp for f in self.index}
        if not frame_stamps & set(by_stamp):
            raise InputError(
                f"no message of label topic {topic!r} has the header stamp of an image on "
                f"{self.image_topic!r} in bag {self.path} ({len(by_stamp)} labels, "
                f"{len(self.index)} images); labels are matched to frames by exact header "
                "stamp: republish the labels with the images' stamps")
        return by_stamp

    # -- frames -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def stamps(self) -> list[int]:
        return [f.stamp for f in self.index]

    def raw_image(self, i: int) -> tuple[Any, int, bytes]:
        """(connection, log time, serialised bytes) of image ``i`` (in reading order)."""
        entry = self.index[i]
        if self._cursor is None or self._cursor_next != entry.record:
            # Jump: restart the stream at this record time, skip earlier same-time messages.
            self._cursor = self._messages(self._image_conns, start=entry.log_time)
            self._cursor_next = self._first_at[entry.log_time]
        while True:
            item = next(self._cursor, None)
            if item is None:
                raise InputError(f"image {i} of bag {self.path} vanished while reading; the "
                                 "bag changed on disk")
            self._cursor_next += 1
            if self._cursor_next - 1 == entry.record:
                return item

    def message(self, i: int) -> Any:
        """Image ``i`` deserialised (InputError when it cannot be)."""
        reason = self.bad_records.get(self.index[i].record)
        if reason is not None:
            raise InputError(reason)
        conn, _, raw = self.raw_image(i)
        return self._deserialize(raw, conn.msgtype, self.image_topic)

    def frame(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8 BGR; InputError (the node's reason) when bad."""
        return decode_frame(self.message(i), self.image_type)

    def frames(self) -> LazySequence[np.ndarray]:
        """All frames, decoded on demand, (H, W, 3) uint8 BGR."""
        return LazySequence(len(self), self.frame)

    def raw_label(self, stamp: int) -> bytes | None:
        """Serialised label message with header stamp ``stamp``, or None."""
        log_time = self.label_log_times.get(stamp)
        if log_time is None or self.label_topic is None:
            return None
        conns = [c for c in self._reader.connections if c.topic == self.label_topic]
        for conn, _, raw in self._messages(conns, start=log_time):
            msg = self._deserialize(raw, conn.msgtype, self.label_topic)
            if stamp_ns(msg.header) == stamp:
                return raw
        return None

    def labels(self, i: int) -> np.ndarray | None:
        """Ground truth of frame ``i`` (matched by header stamp), or None when it has none."""
        raw = self.raw_label(self.index[i].stamp)
        if raw is None or self.label_topic is None:
            return None
        msg = self._deserialize(raw, IMAGE_TYPE, self.label_topic)
        return labels_from_image(msg.height, msg.width, msg.encoding, msg.is_bigendian,
                                 msg.step, msg.data, self._id_map, self._ignore)

    def ground_truth(self) -> LazySequence[np.ndarray | None] | None:
        if self.label_topic is None:
            return None
        return LazySequence(len(self), self.labels)

    def close(self) -> None:
        self._cursor = None
        self._reader.close()

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_id_map(path: str | Path) -> dict[int, int]:
    """A label id table: JSON ``{"raw": class}`` or text lines ``raw class`` (# comments)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"label id map {file} does not exist; write lines 'raw class' or a "
                         "JSON object {\"raw\": class}")
    text = file.read_text()
    try:
        if file.suffix == ".json":
            import json
            return {int(k): int(v) for k, v in json.loads(text).items()}
        table = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                raw, cls = line.replace(",", " ").split()
                table[int(raw)] = int(cls)
        return table
    except (ValueError, AttributeError) as exc:
        raise InputError(f"label id map {file} is malformed ({exc}); write lines 'raw class' "
                         "or a JSON object {\"raw\": class}") from exc
