"""Malformed camera messages over real DDS: a few hundred seeded, randomly corrupted
sensor_msgs/Image and CompressedImage messages (unknown encodings, wrong steps, zero and huge
claimed sizes, random bytes, truncated and bit-flipped JPEG/PNG, headers claiming gigapixels)
interleaved with valid frames of random sizes.

Messages go one at a time first (each dealt with before the next): every one must be
processed or rejected as its construction says (valid frames labelled at their own size,
nothing published for an invalid one). Then a burst back to back: the slot drops some, and
received = processed + dropped + rejected once the node settles. The node must not crash or
hang (it labels a final good frame and answers ~/adapt), and its log stays rate-limited with
no internal errors (every bad message is a clean rejection).
"""

from __future__ import annotations

import array
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pytest
from fixtures_faults import FAST_PARAMS, one_torch_thread  # noqa: F401
from fixtures_node import Harness, harness, stamp_key, wait_matched
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ditta_ros.ros.image import SUPPORTED_ENCODINGS
from ditta_ros.ros.worker import reason_kind

# Reliable in and out, every message kept in the DDS histories (nothing lost in transit), a
# status message 100 times a second to watch the counters, and no adaptation (ISS only).
FUZZ_PARAMS: dict[str, object] = {
    **FAST_PARAMS, "adaptation.warmup_frames": 10000, "input_depth": 1000,
    "status_rate": 100.0, "publish_overlay": False, "publish_confidence": False,
}
DEEP = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
BURST = 40
RATE_LIMIT_PERIOD = 5.0   # the node's log period per kind of rejection
MAX_KINDS = 40            # rejection reason templates x the encodings some of them name

_BYTES = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3,
          "8UC4": 4, "mono16": 2, "16UC1": 2, "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2,
          "yuyv": 2}
assert set(_BYTES) == set(SUPPORTED_ENCODINGS)


@dataclass
class Sent:
    """One fuzz message and what it must lead to."""

    msg: Any
    kind: str
    verdict: str                       # "valid", "invalid" or "maybe" (decoder decides)
    size: tuple[int, int] | None       # (height, width) of a valid frame's labels


def header(i: int, rng: np.random.Generator) -> Header:
    h = Header(frame_id=str(rng.choice(["camera", "", "cam/ü", "x" * 300])))
    h.stamp.sec, h.stamp.nanosec = 2000 + i, i
    return h


def random_bytes(rng: np.random.Generator, size: int) -> bytes:
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def random_name(rng: np.random.Generator) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789_;: ABCUY"
    return "".join(rng.choice(list(letters), int(rng.integers(0, 16))))


def raw(h: Header, height: int, width: int, encoding: str, step: int, data: bytes,
        bigendian: int = 0) -> Image:
    msg = Image(header=h, height=height, width=width, encoding=encoding, step=step,
                is_bigendian=bigendian)
    msg.data = array.array("B", data)
    return msg


def valid_geometry(rng: np.random.Generator) -> tuple[str, int, int, int]:
    encoding = str(rng.choice(SUPPORTED_ENCODINGS))
    height, width = int(rng.integers(1, 90)), int(rng.integers(1, 130))
    if _BYTES[encoding] == 2 and encoding not in ("mono16", "16UC1"):
        width += width % 2                                         # yuv422: even widths
    step = width * _BYTES[encoding] + int(rng.choice([0, 0, 2, 8]))  # some padded rows
    return encoding, height, width, step


def raw_message(i: int, rng: np.random.Generator, good: np.ndarray) -> Sent:
    h = header(i, rng)
    kind = str(rng.choice(["good", "good", "random_valid", "random_valid", "unknown_encoding",
                           "short_step", "odd_step", "zero_size", "huge_claim",
                           "random_data", "truncated", "too_long", "odd_yuv"]))
    if kind == "good":
        data = np.ascontiguousarray(good).tobytes()
        return Sent(raw(h, 64, 96, "bgr8", 288, data), kind, "valid", (64, 96))
    encoding, height, width, step = valid_geometry(rng)
    exact = random_bytes(rng, step * height)
    if kind == "random_valid":
        big = int(rng.integers(0, 2)) if _BYTES[encoding] == 2 else 0
        return Sent(raw(h, height, width, encoding, step, exact, big), kind, "valid",
                    (height, width))
    if kind == "unknown_encoding":
        name = random_name(rng)
        name = name if name not in _BYTES else name + "?"
        msg = raw(h, height, width, name, step, exact)
    elif kind == "short_step":
        msg = raw(h, height, width, encoding, int(rng.integers(0, width * _BYTES[encoding])),
                  exact)
    elif kind == "odd_step":
        encoding = str(rng.choice(["mono16", "16UC1"]))
        step = width * 2 + 1
        msg = raw(h, height, width, encoding, step, random_bytes(rng, step * height))
    elif kind == "zero_size":
        zero_h = bool(rng.integers(0, 2))
        msg = raw(h, 0 if zero_h else height, width if zero_h else 0, encoding, step,
                  exact[: int(rng.integers(0, 64))])
    elif kind == "huge_claim":
        big_h = int(rng.choice([2**31, 2**32 - 1, 100_000]))
        big_w = int(rng.choice([2**31, 2**32 - 1, 100_000, width]))
        msg = raw(h, big_h, big_w, encoding, int(rng.choice([step, 2**32 - 1])),
                  random_bytes(rng, int(rng.integers(0, 4096))))
    elif kind == "random_data":
        size = int(rng.integers(0, 6000))
        size += int(size == step * height)
        msg = raw(h, height, width, encoding, step, random_bytes(rng, size))
    elif kind == "truncated":
        msg = raw(h, height, width, encoding, step, exact[: int(rng.integers(0, len(exact)))])
    elif kind == "too_long":
        msg = raw(h, height, width, encoding, step, exact + random_bytes(rng, 1 + i % 7))
    else:  # odd_yuv
        encoding, width = str(rng.choice(["yuyv", "uyvy", "yuv422", "yuv422_yuy2"])), width | 1
        msg = raw(h, height, width, encoding, width * 2, random_bytes(rng, width * 2 * height))
    return Sent(msg, kind, "invalid", None)


def png_header_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


def jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = jpeg.find(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, height, width)
    return bytes(jpeg)


def compressed(h: Header, fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(header=h, format=fmt)
    msg.data = array.array("B", data)
    return msg


def compressed_message(i: int, rng: np.random.Generator, good: np.ndarray) -> Sent:
    h = header(i, rng)
    kind = str(rng.choice(["good_png", "good_png", "random_jpeg", "random_png16",
                           "random_bytes", "empty", "unsupported_format", "truncated",
                           "bit_flips", "huge_claim", "signature_garbage"]))
    if kind == "good_png":
        data = cv2.imencode(".png", good)[1].tobytes()
        return Sent(compressed(h, str(rng.choice(["png", "bgr8; png compressed bgr8", ""])),
                               data), kind, "valid", (64, 96))
    height, width = int(rng.integers(1, 90)), int(rng.integers(1, 130))
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()
    if kind == "random_jpeg":
        return Sent(compressed(h, "rgb8; jpeg compressed bgr8", jpeg), kind, "valid",
                    (height, width))
    if kind == "random_png16":
        grey = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Sent(compressed(h, "mono16; png compressed", cv2.imencode(".png", grey)[1]
                               .tobytes()), kind, "valid", (height, width))
    fmt = str(rng.choice(["jpeg", "png", "", "JPEG", "bgr8; jpeg compressed bgr8"]))
    verdict = "invalid"
    if kind == "random_bytes":
        data = bytes([int(rng.integers(0, 0x89))]) + random_bytes(rng, int(rng.integers(0, 4000)))
    elif kind == "empty":
        data = b""
    elif kind == "unsupported_format":
        fmt = str(rng.choice(["16UC1; compressedDepth", "tiff", "bmp", random_name(rng) + "x"]))
        if "compresseddepth" not in fmt.lower() and any(k in fmt.lower()
                                                        for k in ("jpeg", "jpg", "png")):
            fmt = "bmp"                               # by chance a supported one: not this case
        data = jpeg
    elif kind == "truncated":
        source = jpeg if rng.integers(0, 2) else cv2.imencode(".png", noise)[1].tobytes()
        data, verdict = source[: int(rng.integers(0, len(source)))], "maybe"
    elif kind == "bit_flips":
        flipped = bytearray(jpeg)
        for pos in rng.integers(0, len(flipped), int(rng.integers(1, 20))):
            flipped[int(pos)] ^= 1 << int(rng.integers(0, 8))
        data, verdict = bytes(flipped), "maybe"
    elif kind == "huge_claim":
        side = int(rng.choice([30000, 65535, 2**31, 2**32 - 1]))
        data = (png_header_claiming(side, side) + random_bytes(rng, 200)
                if rng.integers(0, 2) or side > 65535 else jpeg_claiming(side, side))
    else:  # signature_garbage
        signature = b"\x89PNG\r\n\x1a\n" if rng.integers(0, 2) else b"\xff\xd8\xff"
        data = signature + random_bytes(rng, int(rng.integers(0, 3000)))
        verdict = "maybe"
    return Sent(compressed(h, fmt, data), kind, verdict, None)


def settled(status: Any, sent: int) -> bool:
    """Every sent message arrived and the worker has dealt with all of them."""
    return (status.frames_received == sent and status.frames_received
            == status.frames_processed + status.frames_dropped + status.frames_rejected)


def wait_settled(h: Harness, sent: int) -> Any:
    """The first ~/status (100 Hz) showing ``sent`` messages received and all dealt with."""
    topic = h.topics["status"]
    assert topic.wait_for(lambda items: bool(items) and settled(items[-1], sent), 30.0), (
        f"after {sent} messages the node did not settle: {topic.snapshot()[-1]}")
    return topic.snapshot()[-1]


def run_paced(h: Harness, messages: list[Sent], publisher: Any) -> dict[tuple[int, int], str]:
    """One message at a time, each dealt with before the next: no drops, and each message's
    outcome ("processed" or "rejected") read off the counters."""
    outcomes: dict[tuple[int, int], str] = {}
    before = wait_settled(h, 0)
    for n, item in enumerate(messages, start=1):
        publisher.publish(item.msg)
        now = wait_settled(h, n)
        processed = now.frames_processed - before.frames_processed
        rejected = now.frames_rejected - before.frames_rejected
        assert (processed, rejected, now.frames_dropped) in ((1, 0, 0), (0, 1, 0)), (
            f"message {n} ({item.kind}): {processed} processed, {rejected} rejected")
        outcome = "processed" if processed else "rejected"
        if item.verdict != "maybe":
            expected = "processed" if item.verdict == "valid" else "rejected"
            assert outcome == expected, (
                f"message {n} ({item.kind}) was {outcome}: {now.last_rejection!r}")
        outcomes[stamp_key(item.msg.header)] = outcome
        before = now
    return outcomes


def check_labels(h: Harness, messages: list[Sent], outcomes: dict[tuple[int, int], str],
                 processed: int) -> None:
    """A label image per processed frame, each with a sent message's header, at its size."""
    labels = h.wait_labels(processed, timeout=30.0)
    assert len(labels) == processed
    by_stamp = {stamp_key(m.msg.header): m for m in messages}
    for label in labels:
        item = by_stamp[stamp_key(label.header)]          # each label is one sent message's
        assert item.verdict != "invalid", f"labels published for a bad {item.kind} message"
        assert outcomes.get(stamp_key(label.header), "processed") == "processed"
        assert label.header.frame_id == item.msg.header.frame_id
        if item.size is not None:
            assert (label.height, label.width) == item.size, item.kind


def check_log(err: str, elapsed: float) -> None:
    """A clean rejection for every bad message, never an internal error, and at most one log
    line per kind of rejection per RATE_LIMIT_PERIOD."""
    assert "frame processing failed" not in err and "internal error" not in err
    lines = re.findall(r"rejected frame \(frame_id '.*?', \d+ rejected so far\): (.*?)"
                       r"(?: \(\d+ more like it since the last report\))?$", err, re.MULTILINE)
    assert lines, "no rejection was logged"
    per_kind: dict[str, int] = {}
    for reason in lines:
        per_kind[reason_kind(reason)] = per_kind.get(reason_kind(reason), 0) + 1
    bound = int(elapsed / RATE_LIMIT_PERIOD) + 2
    assert max(per_kind.values()) <= bound, per_kind
    # the reasons are a few templates (some name one of the supported encodings): random
    # encoding names, formats or sizes must not make new kinds
    assert len(per_kind) <= MAX_KINDS, sorted(per_kind)
    for template in ("unsupported encoding", "corrupt compressed image",
                     "unsupported compressed format"):
        assert sum(kind.startswith(template) for kind in per_kind) <= 1, sorted(per_kind)


@pytest.mark.slow
@pytest.mark.parametrize("transport, count, seed", [("raw", 160, 7), ("compressed", 140, 11)])
def test_fuzzed_messages_are_all_accounted_for(transport: str, count: int, seed: int,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(seed)
    make = raw_message if transport == "raw" else compressed_message
    with harness({**FUZZ_PARAMS, "transport": transport}) as h:
        paced = [make(i, rng, h.video.frame(i % 20).image) for i in range(count)]
        burst = [make(i, rng, h.video.frame(i % 20).image) for i in range(count, count + BURST)]
        assert {m.verdict for m in paced} >= {"valid", "invalid"}
        msg_type, topic = ((CompressedImage, "/image/compressed") if transport == "compressed"
                           else (Image, "/image"))
        publisher = h.client.create_publisher(msg_type, topic, DEEP)
        wait_matched(publisher, 1, 10.0)
        start = time.monotonic()
        outcomes = run_paced(h, paced, publisher)

        for item in burst:                                # back to back: the slot drops some
            publisher.publish(item.msg)
        after_burst = wait_settled(h, count + BURST)
        good = h.video.frame(0).image
        final = (compressed(header(10**6, rng), "png", cv2.imencode(".png", good)[1].tobytes())
                 if transport == "compressed" else
                 raw(header(10**6, rng), 64, 96, "bgr8", 288, good.tobytes()))
        publisher.publish(final)                          # a final good frame is labelled
        assert h.topics["labels"].wait_for(
            lambda items: bool(items) and stamp_key(items[-1].header) == stamp_key(final.header),
            30.0)
        reply = h.call("adapt")                           # and a service still answers
        assert reply.success, reply.message
        status = h.latest_status()
        elapsed = time.monotonic() - start
        check_labels(h, [*paced, *burst, Sent(final, "final", "valid", (64, 96))], outcomes,
                     status.frames_processed)

    sent = count + BURST + 1
    assert status.frames_received == sent
    assert sent == status.frames_processed + status.frames_dropped + status.frames_rejected
    assert sum(o == "rejected" for o in outcomes.values()) >= sum(
        m.verdict == "invalid" for m in paced)
    assert after_burst.frames_received == count + BURST      # settled: all accounted for
    check_log(capfd.readouterr().err, elapsed)


# --- the header checks behind the fuzz results, without DDS ---------------------------------

def test_compressed_headers_are_checked_before_decoding() -> None:
    from ditta_ros.errors import InputError
    from ditta_ros.ros.image import compressed_to_frame

    def decode(data: bytes, fmt: str = "jpeg") -> Any:
        return compressed_to_frame(compressed(Header(), fmt, data))

    # 30000 x 30000 would make OpenCV allocate 2.7 GB; 65535 x 65535 made it raise cv2.error
    for side in (30000, 65535):
        with pytest.raises(InputError, match="image too large: jpeg header"):
            decode(jpeg_claiming(side, side))
    with pytest.raises(InputError, match="image too large: png header"):
        decode(png_header_claiming(2**31, 2**31), "png")
    with pytest.raises(InputError, match="empty image"):
        decode(jpeg_claiming(0, 16))
    bmp = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    with pytest.raises(InputError, match="neither the JPEG nor the PNG signature"):
        decode(bmp, "")                                   # OpenCV would decode it
    with pytest.raises(InputError, match="no frame header"):
        decode(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02")
    # A valid JPEG with an application segment whose payload looks like markers: the walk
    # follows segment lengths, finds the real frame header and the image decodes.
    side = 24
    jpeg = cv2.imencode(".jpg", np.zeros((side, 2 * side, 3), np.uint8))[1].tobytes()
    payload = b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    decoded = decode(jpeg[:2] + app1 + jpeg[2:])
    assert decoded.frame.shape == (side, 2 * side, 3)


def test_rejection_kinds_ignore_quoted_values_and_numbers() -> None:
    assert reason_kind("unsupported encoding 'abc': use one of ...") == \
        reason_kind("unsupported encoding 'x:y;z': use one of ...")
    assert reason_kind("data truncated: 10 bytes") == reason_kind("data truncated: 99 bytes")
    assert reason_kind("unsupported encoding 'a'") != reason_kind("empty image: 0 x 4")
