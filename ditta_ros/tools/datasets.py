"""Video sources the evaluation reads: bags, VSPW-layout folders, image folders, video files.

Every source is a list of :class:`VideoRef` (a name and a way to open it), so ``--videos N``
and ``--shard K/N`` pick videos before anything is decoded. Opening gives a :class:`Video`:
lazy ``(H, W, 3) uint8 BGR`` frames, optional lazy ``(H, W) int64`` ground truth (255 =
ignore, ``None`` for a frame without labels), and header stamps where the source has them.

Bags are scanned when listed (:mod:`ditta_ros.tools.bagscan`): their bad frames, resolution
segments and ordering are known before any model loads, and the opened :class:`Video`
carries the segments to evaluate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from ditta_ros.engine.metrics import vspw_ground_truth
from ditta_ros.errors import InputError
from ditta_ros.tools.bags import ORDERS, BagSource, bag_name, bare_mcap
from ditta_ros.tools.bagscan import BagScan, Segment, scan_bag, split_segments
from ditta_ros.tools.lazy import LazySequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Video:
    """One opened video; call :meth:`close` when done (bags hold a file open)."""

    name: str
    frames: Sequence[np.ndarray]                               # (H, W, 3) uint8 BGR each
    ground_truth: Sequence[np.ndarray | None] | None = None    # (H, W) int64, 255 = ignore
    stamps: Sequence[int] | None = None                        # header stamps, ns
    bag: BagSource | None = None                               # set for bag sources
    closers: list[Callable[[], None]] = field(default_factory=list)
    segments: list[Segment] | None = None    # None: one segment, every frame (not scanned)
    scan: BagScan | None = None              # what the up-front scan found (bags)
    rejected: dict[str, int] = field(default_factory=dict)   # files: reason -> frames

    def __len__(self) -> int:
        return len(self.frames)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


@dataclass(frozen=True)
class VideoRef:
    """A video not opened yet: its name and how to open it."""

    name: str
    open: Callable[[], Video]
    scan: BagScan | None = None              # bags: the up-front scan


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 BGR (OpenCV, as the ISS reference reads frames)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read image {path}; is it a readable jpg/png?")
    return image


def read_raw_mask(path: Path) -> np.ndarray:
    """A label PNG as stored (palette indices or grey values), (H, W)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(f"cannot read label image {path}")
    if mask.ndim == 3:
        raise InputError(f"label image {path} has {mask.shape[2]} channels; VSPW masks are "
                         "single-channel (palette) PNGs holding raw class ids")
    return mask


def _natural_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                  key=_natural_key)


# -- VSPW ------------------------------------------------------------------------------------
def vspw_videos(root: str | Path, split: str = "val", num_classes: int = 124) -> list[VideoRef]:
    """Videos of a VSPW-layout folder: ``<root>/data/<video>/origin/*.jpg`` and ``mask/*.png``.

    ``split`` names a file ``<root>/<split>.txt`` (one video per line) or is a path to such a
    file; "all" takes every folder under ``data/``. Ground truth follows VSPW's convention:
    raw 0 and 255 are ignored, class = raw - 1.
    """
    base = Path(root)
    data = base / "data"
    if not data.is_dir():
        raise InputError(f"{base} is not a VSPW-layout folder: {data} is missing (expected "
                         "<root>/data/<video>/origin/*.jpg and mask/*.png)")
    if split == "all":
        names = sorted(p.name for p in data.iterdir() if (p / "origin").is_dir())
    else:
        split_file = Path(split) if Path(split).is_file() else base / f"{split}.txt"
        if not split_file.is_file():
            raise InputError(f"VSPW split file {split_file} does not exist; pass --split with "
                             "a file of video names, or --split all")
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    missing = [n for n in names if not (data / n / "origin").is_dir()]
    if missing:
        raise InputError(f"{len(missing)} videos of split {split!r} are missing under {data} "
                         f"(first: {missing[0]}); check the dataset root")
    return [VideoRef(n, _vspw_opener(data / n, n, num_classes)) for n in names]


def _vspw_opener(folder: Path, name: str, num_classes: int) -> Callable[[], Video]:
    def open_video() -> Video:
        images = _images_in(folder / "origin")
        if not images:
            raise InputError(f"VSPW video {folder} has no frames in origin/")
        masks = [folder / "mask" / f"{p.stem}.png" for p in images]

        def gt(i: int) -> np.ndarray | None:
            if not masks[i].is_file():
                return None
            return vspw_ground_truth(read_raw_mask(masks[i]), num_classes)

        segments, rejected = image_segments(images)
        return Video(name, LazySequence(len(images), lambda i: read_image(images[i])),
                     LazySequence(len(images), gt), segments=segments, rejected=rejected)
    return open_video


# -- image folders and video files -----------------------------------------------------------
def image_folder_videos(root: str | Path) -> list[VideoRef]:
    """A folder of images is one video; a folder of such folders is one video per folder."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"image folder {base} does not exist")
    if _images_in(base):
        return [VideoRef(base.name, lambda: _open_image_folder(base, base.name))]
    subs = sorted((p for p in base.iterdir() if p.is_dir() and _images_in(p)),
                  key=_natural_key)
    if not subs:
        raise InputError(f"{base} is not a bag (no metadata.yaml, no .mcap file), not a VSPW "
                         f"root (no data/ folder), and holds no images "
                         f"({', '.join(IMAGE_SUFFIXES)}) nor folders of images: pass a bag, "
                         "a VSPW root, an image folder or a video file")
    return [VideoRef(p.name, _image_folder_opener(p)) for p in subs]


def _image_folder_opener(folder: Path) -> Callable[[], Video]:
    return lambda: _open_image_folder(folder, folder.name)


def _open_image_folder(folder: Path, name: str) -> Video:
    images = _images_in(folder)
    segments, rejected = image_segments(images)
    return Video(name, LazySequence(len(images), lambda i: read_image(images[i])),
                 segments=segments, rejected=rejected)


def image_segments(paths: Sequence[Path]) -> tuple[list[Segment], dict[str, int]]:
    """Segments of an image sequence from the files' headers (nothing is decoded): a size
    change starts a new segment, as in a bag; a file that is no readable image is left out
    and counted (reason -> files)."""
    from PIL import Image, UnidentifiedImageError

    sizes: dict[int, tuple[int, int]] = {}
    rejected: dict[str, int] = {}
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):   # OpenCV rotates these
                    width, height = height, width
        except (OSError, UnidentifiedImageError, ValueError):
            rejected["unreadable image file"] = rejected.get("unreadable image file", 0) + 1
            continue
        if width < 1 or height < 1:
            rejected["empty image file"] = rejected.get("empty image file", 0) + 1
            continue
        sizes[i] = (height, width)
    return split_segments(sizes, len(paths)), rejected


class _VideoFileFrames:
    """Frames of a video file via OpenCV, decoded sequentially; a backward jump reopens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._capture: Any = None
        self._next = 0
        count = 0
        probe = self._open()
        while probe.grab():
            count += 1
        probe.release()
        if count == 0:
            raise InputError(f"video file {path} has no decodable frames")
        self.count = count

    def _open(self) -> Any:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise InputError(f"cannot open video file {self.path} (OpenCV has no decoder "
                             "for it?); extract its frames into a folder instead")
        return capture

    def load(self, i: int) -> np.ndarray:
        if self._capture is None or i < self._next:
            self.close()
            self._capture, self._next = self._open(), 0
        while self._next < i:
            self._capture.grab()
            self._next += 1
        ok, frame = self._capture.read()
        self._next += 1
        if not ok:
            raise InputError(f"frame {i} of {self.path} cannot be decoded")
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def video_file_videos(path: str | Path) -> list[VideoRef]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"video file {file} does not exist")

    def open_video() -> Video:
        reader = _VideoFileFrames(file)
        return Video(file.stem, LazySequence(reader.count, reader.load), closers=[reader.close])
    return [VideoRef(file.stem, open_video)]


# -- bags ------------------------------------------------------------------------------------
def bag_videos(paths: Sequence[str | Path], image_topic: str | None = None,
               label_topic: str | None = None, id_map: Mapping[int, int] | None = None,
               ignore: tuple[int, ...] = (), order: str = "stamp",
               progress: bool = False) -> list[VideoRef]:
    """Each bag is one video, named after its folder (a bare .mcap after its file).

    Every bag is opened and scanned here (every frame checked as the node checks it), so a
    missing topic, a wrong label type, unmatched stamps or a truncated file raise, and bad
    frames, resolution segments and out-of-order records are known (``ref.scan``), before
    any model is loaded.
    """
    if order not in ORDERS:
        raise InputError(f"frame order {order!r} is not one of {', '.join(ORDERS)}")
    refs = []
    for path in paths:
        bag_path = Path(path)
        name = bag_name(bag_path)
        with BagSource(bag_path, image_topic, label_topic, id_map, ignore, order) as source:
            scan = _scan_with_bar(source, progress)

        def open_video(bag_path: Path = bag_path, name: str = name,
                       scan: BagScan = scan) -> Video:
            source = BagSource(bag_path, image_topic, label_topic, id_map, ignore, order)
            truth = source.ground_truth()
            if truth is not None and scan.bad_labels:
                bad, labels = scan.bad_labels, truth
                truth = LazySequence(len(source), lambda i: None if i in bad else labels[i])
            return Video(name, source.frames(), truth, source.stamps, bag=source,
                         closers=[source.close], segments=list(scan.segments), scan=scan)
        refs.append(VideoRef(name, open_video, scan))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise InputError(f"bag names must be unique (results are stored by name): {names}")
    return refs


def _scan_with_bar(source: BagSource, progress: bool) -> BagScan:
    from tqdm import tqdm

    with tqdm(total=len(source), desc=f"scan {source.path.name}", unit="frame",
              disable=not progress, leave=False) as bar:
        return scan_bag(source, lambda done, total: bar.update(done - bar.n))


def is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".db3", ".mcap")
    return (path / "metadata.yaml").is_file() or (path.is_dir() and bare_mcap(path)
                                                  is not None)


def detect_kind(path: Path) -> str:
    """bag, vspw, images or video, from what lies at ``path``."""
    if not path.exists():
        raise InputError(f"source {path} does not exist")
    if path.is_dir() and any(path.glob("*.mcap")) and not (path / "metadata.yaml").exists():
        bare_mcap(path)          # several .mcap files without metadata.yaml: an error
    if is_bag(path):
        return "bag"
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return "video"
        raise InputError(f"cannot tell what {path} is: not a bag (.db3/.mcap), nor a video "
                         f"({', '.join(VIDEO_SUFFIXES)}); pass --source-type")
    if (path / "data").is_dir():
        return "vspw"
    if path.is_dir() and any(p.suffix == ".db3" for p in path.iterdir()):
        raise InputError(f"{path} holds .db3 bag files but no metadata.yaml: the bag is "
                         "incomplete (truncated copy?); run `ros2 bag reindex` on it")
    return "images"


def shard(refs: Sequence[VideoRef], index: int, count: int) -> list[VideoRef]:
    """The deterministic slice ``index`` (0-based) of ``count``: every count-th video.

    Round-robin keeps shards balanced when video lengths drift along the sorted list.
    """
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard {index}/{count} is invalid: use K/N with 0 <= K < N")
    return list(refs[index::count])
