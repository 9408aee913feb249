"""The up-front bag scan: every problem of a bag found before any model loads.

:func:`scan_bag` reads every image of a bag once, with the node's own validation
(:func:`ditta_ros.tools.bags.decode_frame`, i.e. :mod:`ditta_ros.ros.image`, then the engine's
``check_frame``), and reports what a user needs to know to trust an evaluation of it:

- topics, message counts, image encodings and frame sizes;
- records out of stamp order (frames are read in stamp order unless ``--record-order``);
- bad frames, each rejected with the reason the node gives (never fatal), counted per kind;
- segments: a resolution change starts a new segment of the stream, whose state is reset
  (every method starts afresh on it, with its own warm-up);
- ground truth: frames with a label, labels whose size differs from their frame.

Nothing here loads a model. :meth:`BagScan.lines` is what ``ditta-eval --check-only`` prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ditta_ros.engine.preprocess import check_frame
from ditta_ros.errors import InputError
from ditta_ros.ros.worker import reason_kind  # pure Python; the node's grouping of reasons
from ditta_ros.tools.bags import COMPRESSED_TYPE, BagSource, bag_name

WarmupFn = Callable[[int], int]          # frames of a segment -> its warm-up length


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class Segment:
    """A run of good frames of one size, in reading order (rejected frames left out)."""

    index: int
    height: int
    width: int
    frames: tuple[int, ...]              # reading positions of its frames

    def __len__(self) -> int:
        return len(self.frames)

    def describe(self) -> str:
        first, last = self.frames[0], self.frames[-1]
        return (f"segment {self.index}: {self.width}x{self.height}, {len(self)} frames "
                f"(positions {first}-{last})")


@dataclass(frozen=True)
class Rejection:
    """A frame the node would reject: where it is and why."""

    frame: int           # reading position
    record: int          # position in record order
    stamp: int
    reason: str


def split_segments(sizes: Mapping[int, tuple[int, int]], count: int) -> list[Segment]:
    """Segments of the good frames: ``sizes`` maps reading position -> (H, W) for every good
    frame among positions 0..count-1; a size change starts a new segment."""
    segments: list[Segment] = []
    current: list[int] = []
    size: tuple[int, int] | None = None
    for pos in range(count):
        hw = sizes.get(pos)
        if hw is None:
            continue
        if size is not None and hw != size:
            segments.append(Segment(len(segments), size[0], size[1], tuple(current)))
            current = []
        size = hw
        current.append(pos)
    if current and size is not None:
        segments.append(Segment(len(segments), size[0], size[1], tuple(current)))
    return segments


@dataclass
class BagScan:
    """What :func:`scan_bag` found in one bag."""

    path: Path
    storage: str                                  # "rosbag2 mcap", "bare mcap", ...
    topics: dict[str, tuple[str, int]]            # topic -> (message type, messages)
    image_topic: str
    image_type: str
    frames: int                                   # image messages
    order: str                                    # "stamp" or "record"
    out_of_order: int                             # records older than an earlier record
    duplicate_stamps: int                         # images sharing a stamp with another
    encodings: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)    # (W, H) -> frames
    rejected: list[Rejection] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    label_topic: str | None = None
    labelled: int = 0                             # good frames with a usable label
    label_size_mismatch: int = 0                  # labels of another size than their frame
    bad_labels: frozenset[int] = frozenset()      # positions whose label is unusable

    @property
    def name(self) -> str:
        return bag_name(self.path)

    def rejected_by_reason(self) -> dict[str, int]:
        """Reason kind (the node's grouping) -> frames, most frequent first."""
        kinds = Counter(reason_kind(r.reason) for r in self.rejected)
        return dict(kinds.most_common())

    def evaluable(self, warmup_of: WarmupFn) -> list[tuple[Segment, int]]:
        """(segment, warm-up) of every segment that keeps frames after its warm-up."""
        return [(s, warmup_of(len(s))) for s in self.segments if warmup_of(len(s)) < len(s)]

    def evaluated_frames(self, warmup_of: WarmupFn) -> int:
        return sum(len(s) - w for s, w in self.evaluable(warmup_of))

    def warnings(self) -> list[str]:
        """One line per problem worth a warning when an evaluation starts."""
        out = []
        if self.out_of_order:
            if self.order == "stamp":
                out.append(f"{self.out_of_order} of {self.frames} image records are out of "
                           "stamp order (recorded late): frames are read in stamp order "
                           "(--record-order keeps the record order)")
            else:
                out.append(f"{self.out_of_order} of {self.frames} image records are out of "
                           "stamp order and are read in record order (--record-order)")
        if self.rejected:
            kinds = ", ".join(f"{k} ({n})" for k, n in self.rejected_by_reason().items())
            out.append(f"{len(self.rejected)} of {self.frames} frames rejected: {kinds}")
        if len(self.segments) > 1:
            sizes = " -> ".join(f"{s.width}x{s.height}" for s in self.segments)
            out.append(f"resolution changes: {len(self.segments)} segments ({sizes}); each "
                       "is evaluated as a fresh stream with its own warm-up")
        if self.label_size_mismatch:
            out.append(f"{self.label_size_mismatch} labels differ in size from their frame "
                       "and are not scored")
        return out

    def lines(self, warmup_of: WarmupFn) -> list[str]:
        """The scan as text (``ditta-eval --check-only``)."""
        topics = ", ".join(f"{t} ({k}, {n} messages)" for t, (k, n) in
                           sorted(self.topics.items()))
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common())
        encodings = ", ".join(f"{e} ({n})" for e, n in self.encodings.most_common())
        lines = [f"bag {self.path} ({self.storage})",
                 f"  topics: {topics}",
                 f"  images: {self.image_topic} ({self.image_type}), {self.frames} frames; "
                 f"encodings: {encodings or 'none'}; sizes: {sizes or 'none'}",
                 f"  order: read in {self.order} order; {self.out_of_order} records out of "
                 f"stamp order; {self.duplicate_stamps} frames share a stamp"]
        if self.rejected:
            lines.append(f"  rejected: {_n(len(self.rejected), 'frame')}")
            for kind, n in self.rejected_by_reason().items():
                first = next(r for r in self.rejected if reason_kind(r.reason) == kind)
                where = f"frame {first.frame}, record {first.record}"
                lines.append(f"    1 x {first.reason} ({where})" if n == 1 else
                             f"    {n} x {kind} (first: {where}: {first.reason})")
        else:
            lines.append("  rejected: none")
        lines.append(f"  segments: {len(self.segments)}")
        for segment in self.segments:
            warmup = warmup_of(len(segment))
            tail = (f"warm-up {warmup}, {len(segment) - warmup} evaluated"
                    if warmup < len(segment) else
                    f"too short for a warm-up of {warmup}: not evaluated")
            lines.append(f"    {segment.describe()}: {tail}")
        if self.label_topic is not None:
            good = sum(len(s) for s in self.segments)
            lines.append(f"  labels: {self.label_topic}, {self.labelled} of {good} good "
                         f"frames have one; {self.label_size_mismatch} differ in size from "
                         "their frame (not scored)")
        evaluated = self.evaluated_frames(warmup_of)
        if evaluated:
            lines.append(f"  evaluable: {_n(evaluated, 'frame')} in "
                         f"{_n(len(self.evaluable(warmup_of)), 'segment')}")
        else:
            lines.append("  evaluable: NOTHING (no segment is longer than its warm-up)")
        return lines


def check_frame_message(source: BagSource, i: int) -> tuple[tuple[int, int] | None, str, str]:
    """((H, W) or None, encoding, rejection reason or "") of frame ``i``: the node's checks."""
    try:
        msg = source.message(i)
    except InputError as exc:
        return None, "?", str(exc)
    encoding = str(msg.format if source.image_type == COMPRESSED_TYPE else msg.encoding)
    try:
        frame = source.frame(i)
        check_frame(frame)
    except InputError as exc:
        return None, encoding or "?", str(exc)
    return (int(frame.shape[0]), int(frame.shape[1])), encoding, ""


def scan_bag(source: BagSource, progress: Callable[[int, int], None] | None = None) -> BagScan:
    """Read and check every frame of an open bag once; see the module docstring."""
    topics = {t: (k, source.message_counts.get(t, 0)) for t, k in source.topics.items()}
    stamps = Counter(f.stamp for f in source.index)
    scan = BagScan(source.path, source.storage, topics, source.image_topic, source.image_type,
                   len(source), source.order, source.out_of_order,
                   sum(n for n in stamps.values() if n > 1), label_topic=source.label_topic)
    sizes: dict[int, tuple[int, int]] = {}
    for i, entry in enumerate(source.index):
        hw, encoding, reason = check_frame_message(source, i)
        scan.encodings[encoding] += 1
        if hw is None:
            scan.rejected.append(Rejection(i, entry.record, entry.stamp, reason))
        else:
            sizes[i] = hw
            scan.sizes[(hw[1], hw[0])] += 1
        if progress is not None:
            progress(i + 1, len(source))
    scan.segments = split_segments(sizes, len(source))
    if source.label_topic is not None:
        bad = set()
        for i, hw in sizes.items():
            label_hw = source.label_sizes.get(source.index[i].stamp)
            if label_hw is None:
                continue
            if label_hw != hw:
                bad.add(i)
            else:
                scan.labelled += 1
        scan.label_size_mismatch = len(bad)
        scan.bad_labels = frozenset(bad)
    return scan
