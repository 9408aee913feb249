"""Generated evaluation data for the tests: bags, VSPW-layout folders, image folders.

Everything is drawn from :class:`ditta_ros.synthetic.SyntheticVideo`; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ditta_ros.synthetic import SyntheticVideo
from ditta_ros.tools.bags import BagWriter, make_compressed, make_image

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
