"""Generated evaluation data for the tests: bags, VSPW-layout folders, image folders.

Everything is drawn from :class:`ditta_ros.synthetic.SyntheticVideo`; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ditta_ros.synthetic import SyntheticVideo
from ditta_ros.tools.bags import IMAGE_TYPE, BagWriter, make_compressed, make_image, typestore

HEIGHT, WIDTH = 48, 64
NUM_CLASSES = 4
IMAGE_TOPIC = "/camera/image_raw"
LABEL_TOPIC = "/camera/labels"
PERIOD_NS = 100_000_000          # 10 Hz
T0_NS = 1_700_000_000_000_000_000


def synthetic(seed: int = 0) -> SyntheticVideo:
    return SyntheticVideo(HEIGHT, WIDTH, num_classes=NUM_CLASSES, num_shapes=3, seed=seed)


def as_encoding(frame_bgr: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "bgr8":
        return frame_bgr
    if encoding == "rgb8":
        return np.ascontiguousarray(frame_bgr[..., ::-1])
    if encoding == "mono8":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    raise ValueError(encoding)


def write_bag(path: Path, frames: int = 8, seed: int = 0, storage: str = "sqlite3",
              encoding: str = "bgr8", labels: bool = True, label_raw_offset: int = 0,
              label_stamp_shift: int = 0, label_encoding: str = "mono8",
              label_type: str = "image", video: SyntheticVideo | None = None) -> Path:
    """A bag of a synthetic video: images (``encoding`` or "jpeg") and optional labels.

    label_raw_offset is added to the stored label ids (e.g. 1 for VSPW-style raw ids);
    label_stamp_shift moves the label stamps (non-zero: no label matches a frame);
    label_type "compressed" writes the labels as a CompressedImage (a wrong type).
    """
    video = video or synthetic(seed)
    with BagWriter(path, storage) as writer:
        for t in range(frames):
            item = video.frame(t)
            stamp = T0_NS + t * PERIOD_NS
            if encoding == "jpeg":
                msg = make_compressed(item.image, stamp, "cam")
                topic = IMAGE_TOPIC + "/compressed"
            else:
                msg = make_image(as_encoding(item.image, encoding), encoding, stamp, "cam")
                topic = IMAGE_TOPIC
            writer.write(topic, msg, stamp + 1000)
            if labels:
                raw = item.labels + label_raw_offset
                lstamp = stamp + label_stamp_shift
                if label_type == "compressed":
                    lmsg = make_compressed(cv2.cvtColor(raw.astype(np.uint8),
                                                        cv2.COLOR_GRAY2BGR), lstamp, "cam",
                                           fmt="png")
                else:
                    dtype = np.uint8 if label_encoding == "mono8" else np.uint16
                    lmsg = make_image(raw.astype(dtype), label_encoding, lstamp, "cam")
                writer.write(LABEL_TOPIC, lmsg, stamp + 2000)
    return path


def write_vspw(root: Path, videos: int = 2, frames: int = 8, split: str = "val") -> Path:
    """A VSPW-layout folder: data/<video>/origin/*.jpg, mask/*.png (raw = class + 1)."""
    names = []
    for v in range(videos):
        name = f"video_{v:02d}"
        names.append(name)
        video = synthetic(seed=10 + v)
        folder = root / "data" / name
        (folder / "origin").mkdir(parents=True)
        (folder / "mask").mkdir()
        for t in range(frames):
            item = video.frame(t)
            cv2.imwrite(str(folder / "origin" / f"{t:08d}.jpg"), item.image,
                        [cv2.IMWRITE_JPEG_QUALITY, 98])
            cv2.imwrite(str(folder / "mask" / f"{t:08d}.png"),
                        (item.labels + 1).astype(np.uint8))
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_image_folder(root: Path, frames: int = 8, seed: int = 3) -> Path:
    root.mkdir(parents=True)
    video = synthetic(seed)
    for t in range(frames):
        cv2.imwrite(str(root / f"frame_{t}.png"), video.frame(t).image)
    return root


# -- recordings with real-world flaws ---------------------------------------------------------
SMALL_HEIGHT, SMALL_WIDTH = 24, 32     # the second resolution of a flawed bag


def raw_message(height: int, width: int, encoding: str, step: int, data: bytes,
                stamp: int) -> Any:
    """A sensor_msgs/Image with any fields, consistent or not (rosbags type)."""
    store = typestore()
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id="cam")
    return store.types[IMAGE_TYPE](header=header, height=height, width=width,
                                   encoding=encoding, is_bigendian=0, step=step,
                                   data=np.frombuffer(data, np.uint8))


# t -> what is wrong with frame t (and the reason kind the node gives)
BAD_FRAMES: dict[int, str] = {3: "empty", 6: "short step", 9: "truncated", 12: "bayer"}
FLAWED_FRAMES = 20       # 0..13 at 48 x 64, 14..19 at 24 x 32
RESOLUTION_CHANGE = 14


def _bad_message(kind: str, stamp: int) -> Any:
    if kind == "empty":
        return raw_message(0, 0, "bgr8", 0, b"", stamp)
    if kind == "short step":
        return raw_message(HEIGHT, WIDTH, "bgr8", WIDTH, bytes(HEIGHT * WIDTH), stamp)
    if kind == "truncated":
        return raw_message(HEIGHT, WIDTH, "bgr8", WIDTH * 3, bytes(WIDTH * 3 * HEIGHT // 2),
                           stamp)
    return raw_message(HEIGHT, WIDTH, "bayer_rggb8", WIDTH, bytes(HEIGHT * WIDTH), stamp)


def flawed_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(image BGR, labels) of good frame t of the flawed recording."""
    if t < RESOLUTION_CHANGE:
        item = synthetic(seed=21).frame(t)
    else:
        item = SyntheticVideo(SMALL_HEIGHT, SMALL_WIDTH, num_classes=NUM_CLASSES,
                              num_shapes=2, seed=22).frame(t)
    return item.image, item.labels


def flawed_record_times(shuffle: bool) -> list[int]:
    """Record time of frame t: in stamp order, or shuffled (a recorder that wrote frames
    late: record order differs from header-stamp order)."""
    order = list(range(FLAWED_FRAMES))
    if shuffle:
        rng = np.random.default_rng(7)
        order = [int(k) for k in rng.permutation(FLAWED_FRAMES)]
    return [T0_NS + 5_000_000_000 + order[t] * PERIOD_NS for t in range(FLAWED_FRAMES)]


def write_flawed_bag(path: Path, storage: str = "mcap", shuffle: bool = False,
                     labels: bool = True) -> Path:
    """A recording as they come: good frames mixed with an empty, a short-step, a truncated
    and a Bayer frame (BAD_FRAMES), a resolution change at RESOLUTION_CHANGE, labels for the
    good frames; ``shuffle`` records the frames out of stamp order."""
    record_times = flawed_record_times(shuffle)
    records = []
    for t in range(FLAWED_FRAMES):
        stamp = T0_NS + t * PERIOD_NS
        if t in BAD_FRAMES:
            records.append((record_times[t], IMAGE_TOPIC, _bad_message(BAD_FRAMES[t], stamp)))
            continue
        image, truth = flawed_frame(t)
        records.append((record_times[t], IMAGE_TOPIC, make_image(image, "bgr8", stamp, "cam")))
        if labels:
            records.append((record_times[t] + 1000, LABEL_TOPIC,
                            make_image(truth.astype(np.uint8), "mono8", stamp, "cam")))
    with BagWriter(path, storage) as writer:
        for log_time, topic, msg in sorted(records, key=lambda r: r[0]):
            writer.write(topic, msg, log_time)
    return path


# A second writer: the `mcap` and `mcap-ros2-support` packages, with the ROS 2 message
# definitions stored in the file (as `ros2 bag record` and Foxglove store them).
IMAGE_MSGDEF = """std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


def _image_dict(array: np.ndarray, encoding: str, stamp: int) -> dict[str, Any]:
    arr = np.ascontiguousarray(array)
    return {"header": {"stamp": {"sec": stamp // 1_000_000_000,
                                 "nanosec": stamp % 1_000_000_000}, "frame_id": "cam"},
            "height": arr.shape[0], "width": arr.shape[1], "encoding": encoding,
            "is_bigendian": 0, "step": arr.strides[0], "data": arr.tobytes()}


def write_bare_mcap(path: Path, frames: int = 8, seed: int = 0, labels: bool = True,
                    bad: tuple[int, ...] = ()) -> Path:
    """A single .mcap file (no metadata.yaml) written by mcap-ros2-support, not rosbags;
    frames in ``bad`` are truncated (half their data)."""
    from mcap_ros2.writer import Writer

    video = synthetic(seed)
    with path.open("wb") as stream:
        writer = Writer(stream)
        schema = writer.register_msgdef(IMAGE_TYPE, IMAGE_MSGDEF)
        for t in range(frames):
            item = video.frame(t)
            stamp = T0_NS + t * PERIOD_NS
            image = _image_dict(item.image, "bgr8", stamp)
            if t in bad:
                image["data"] = image["data"][: len(image["data"]) // 2]
            writer.write_message(IMAGE_TOPIC, schema, image, log_time=stamp + 1000,
                                 publish_time=stamp + 1000, sequence=t)
            if labels:
                writer.write_message(LABEL_TOPIC, schema,
                                     _image_dict(item.labels.astype(np.uint8), "mono8", stamp),
                                     log_time=stamp + 2000, publish_time=stamp + 2000,
                                     sequence=t)
        writer.finish()
    return path


def write_resolution_bag(path: Path, first: int = 3, second: int = 3) -> Path:
    """A short clean bag whose frames change size once: ``first`` frames at 48 x 64, then
    ``second`` at 24 x 32 (frames of the flawed recording's two parts), with labels."""
    with BagWriter(path, "mcap") as writer:
        for k, t in enumerate([*range(first), *range(RESOLUTION_CHANGE,
                                                     RESOLUTION_CHANGE + second)]):
            image, truth = flawed_frame(t)
            stamp = T0_NS + k * PERIOD_NS
            writer.write(IMAGE_TOPIC, make_image(image, "bgr8", stamp, "cam"), stamp)
            writer.write(LABEL_TOPIC, make_image(truth.astype(np.uint8), "mono8", stamp, "cam"),
                         stamp + 1000)
    return path
