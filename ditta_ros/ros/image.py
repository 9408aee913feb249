"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge.

Camera messages come in many encodings; the engine wants one thing: an (H, W, 3) uint8 BGR
frame (ALGORITHM.md decodes frames as 8-bit BGR). :func:`image_to_frame` and
:func:`compressed_to_frame` return that frame together with the decoded array in its own
encoding. Every malformed message raises :class:`~ditta_ros.errors.InputError` with the
reason, so the node can count and log it and go on with the next frame.

Outputs (labels, colours, confidence) go the other way with :func:`array_to_image`.

cv_bridge is not installable on this project's machine (no ROS 2 build of it on PyPI). Where a
ROS install has it, :func:`image_to_frame` checks the message geometry itself first (cv_bridge
would read past a short buffer), then lets cv_bridge wrap the buffer ("passthrough") and applies
the same colour conversion as the numpy path, so both paths give the same frame.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ditta_ros.errors import InputError

if TYPE_CHECKING:  # decoding needs only the message fields: bags are read without ROS
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

try:  # pragma: no cover - only on a ROS install with cv_bridge (not installable here)
    from cv_bridge import CvBridge as _CvBridge

    _BRIDGE: Any = _CvBridge()
except Exception:  # noqa: BLE001 - any failure (missing, ROS 1 copy, numpy 2) means no bridge
    _BRIDGE = None


@dataclass(frozen=True)
class _Layout:
    """How one raw encoding is stored: numpy dtype and channels per pixel."""

    dtype: type
    channels: int


# sensor_msgs/image_encodings names. "yuv422" is UYVY byte order; "yuv422_yuy2" is YUYV.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(np.uint8, 3),
    "bgr8": _Layout(np.uint8, 3),
    "rgba8": _Layout(np.uint8, 4),
    "bgra8": _Layout(np.uint8, 4),
    "mono8": _Layout(np.uint8, 1),
    "8UC1": _Layout(np.uint8, 1),
    "8UC3": _Layout(np.uint8, 3),
    "8UC4": _Layout(np.uint8, 4),
    "mono16": _Layout(np.uint16, 1),
    "16UC1": _Layout(np.uint16, 1),
    "yuv422": _Layout(np.uint8, 2),
    "uyvy": _Layout(np.uint8, 2),
    "yuv422_yuy2": _Layout(np.uint8, 2),
    "yuyv": _Layout(np.uint8, 2),
}

_TO_BGR: dict[str, int] = {
    "rgb8": cv2.COLOR_RGB2BGR,
    "rgba8": cv2.COLOR_RGBA2BGR,
    "bgra8": cv2.COLOR_BGRA2BGR,
    "8UC4": cv2.COLOR_BGRA2BGR,
    "yuv422": cv2.COLOR_YUV2BGR_UYVY,
    "uyvy": cv2.COLOR_YUV2BGR_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUYV,
    "yuyv": cv2.COLOR_YUV2BGR_YUYV,
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)

# Largest frame accepted, in pixels: 2^25 = 33,554,432 (8K UHD, 7680 x 4320, fits). A message
# may claim any size up to 2^32 x 2^32 in a few bytes (a JPEG or PNG header); decoding it would
# allocate the claimed size first (a 600-byte JPEG claiming 30000 x 30000 makes OpenCV take
# 2.7 GB and 8 s), and the label, colour and overlay images would follow at that size.
MAX_PIXELS = 1 << 25
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): they carry the frame's size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                       0xCD, 0xCE, 0xCF})
OUTPUT_ENCODINGS: dict[str, tuple[type, int]] = {
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "32FC1": (np.float32, 1),
}


@dataclass(frozen=True)
class Decoded:
    """One decoded camera frame.

    frame: (H, W, 3) uint8 BGR, contiguous: what the engine and the overlay use.
    original: the message's pixels in their own encoding, (H, W) or (H, W, channels).
    encoding: the message's encoding ("jpeg"/"png" for compressed input).
    """

    frame: np.ndarray
    original: np.ndarray
    encoding: str


def raw_to_array(data: bytes | bytearray | memoryview | array.array, height: int, width: int,
                 encoding: str, step: int, is_bigendian: bool) -> np.ndarray:
    """The pixels of a raw image buffer, (H, W) or (H, W, channels), in native byte order.

    Checks what sensor_msgs/Image promises: a known encoding, a non-empty size, a row step at
    least one row of pixels long, and exactly ``step * height`` bytes of data.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise InputError(f"unsupported encoding {encoding!r}: use one of "
                         f"{', '.join(SUPPORTED_ENCODINGS)} (or a jpeg/png CompressedImage)")
    if height <= 0 or width <= 0:
        raise InputError(f"empty image: {width} x {height} pixels; the camera sent no pixels")
    _check_pixels(width, height, encoding)
    itemsize = np.dtype(layout.dtype).itemsize
    row_bytes = width * layout.channels * itemsize
    if step < row_bytes:
        raise InputError(f"step {step} is shorter than one row ({width} px x "
                         f"{layout.channels * itemsize} bytes = {row_bytes}) for {encoding}")
    if step % itemsize:
        raise InputError(f"step {step} is not a multiple of the {itemsize}-byte {encoding} "
                         "sample size")
    size = len(data) if not isinstance(data, array.array) else len(data) * data.itemsize
    if size != step * height:
        what = "truncated" if size < step * height else "too long"
        raise InputError(f"data {what}: {size} bytes, expected step x height = "
                         f"{step} x {height} = {step * height}")
    if layout.channels == 2 and width % 2:
        raise InputError(f"{encoding} needs an even width (2 pixels share U and V), got {width}")
    dtype = np.dtype(layout.dtype).newbyteorder(">" if is_bigendian else "<")
    flat = np.frombuffer(data, dtype=np.uint8)
    # Rows may be padded: view each row through its step, then cut the padding off.
    rows = flat.reshape(height, step)[:, :row_bytes]                  # (H, row_bytes) uint8
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, layout.channels)
    if pixels.dtype.byteorder in ("<", ">"):  # only ever the non-native order
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels[:, :, 0] if layout.channels == 1 else pixels


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"image too large: {what} of {width} x {height} = {width * height} "
                         f"pixels, more than the {MAX_PIXELS} accepted (8K UHD fits); "
                         "downscale at the camera driver")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first JPEG frame header (SOF), None when there is none.

    Walks the marker segments from the start as a JPEG decoder does, skipping fill bytes and
    stray bytes between segments (libjpeg tolerates them too), up to the first SOF; stops at
    the start of scan or the end of image, which come after the frame header in a valid file.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:                                  # stray byte: find the next marker
            i = data.find(b"\xff", i)
            if i < 0:
                return None
            continue
        marker = data[i + 1]
        if marker == 0xFF:                                   # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:       # markers without a length
            i += 2
        elif marker in (0xD9, 0xDA):                         # end of image, start of scan
            return None
        elif marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _claimed_size(data: bytes, fmt: str) -> tuple[str, int, int]:
    """The container and the (width, height) its header claims, before anything is decoded;
    InputError when the data is neither a JPEG nor a PNG stream or has no readable header."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InputError(f"corrupt or truncated png image ({len(data)} bytes): no IHDR "
                             "header after the signature")
        return "png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(_JPEG_SOI):
        size = _jpeg_size(data)
        if size is None:
            raise InputError(f"corrupt or truncated jpeg image ({len(data)} bytes): no frame "
                             "header (SOF) before the image data")
        return "jpeg", size[0], size[1]
    raise InputError(f"corrupt compressed image ({len(data)} bytes, format {fmt!r}): the data "
                     "starts with neither the JPEG nor the PNG signature; send jpeg or png")


def array_to_bgr(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W[, C]) pixels of a raw encoding -> (H, W, 3) uint8 BGR.

    16-bit grey is scaled linearly from the full 0..65535 range to 0..255 (x 255 / 65535,
    rounded), the documented choice for cameras that fill the 16-bit range.
    """
    if pixels.dtype == np.uint16:
        pixels = _scale_16_to_8(pixels)
    if pixels.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2BGR)
    code = _TO_BGR.get(encoding)
    if code is None:  # bgr8, 8UC3: already BGR
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def _scale_16_to_8(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8, linear over the full range, rounded to nearest."""
    return np.round(pixels.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)


def image_to_frame(msg: Image) -> Decoded:
    """sensor_msgs/Image -> :class:`Decoded`; raises InputError for a malformed message."""
    pixels = raw_to_array(msg.data, msg.height, msg.width, msg.encoding, msg.step,
                          bool(msg.is_bigendian))
    if _BRIDGE is not None:  # pragma: no cover - cv_bridge only exists on a ROS install
        pixels = np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    return Decoded(array_to_bgr(pixels, msg.encoding), pixels, msg.encoding)


def compressed_to_frame(msg: CompressedImage) -> Decoded:
    """sensor_msgs/CompressedImage (jpeg or png) -> :class:`Decoded`.

    ``format`` follows image_transport ("jpeg", "png", "rgb8; jpeg compressed bgr8"); the
    compressed bytes are BGR for colour images either way, as cv2.imdecode returns them.
    """
    fmt = msg.format.lower()
    if "compresseddepth" in fmt or (fmt and not any(k in fmt for k in ("jpeg", "jpg", "png"))):
        raise InputError(f"unsupported compressed format {msg.format!r}: send jpeg or png "
                         "(compressedDepth and other formats are not handled)")
    if len(msg.data) == 0:
        raise InputError("empty CompressedImage: no data")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    # Only JPEG and PNG reach the decoder (cv2.imdecode would also take TIFF, EXR, ...), and
    # only with a header size the node accepts: the decoder allocates what the header claims.
    container, width, height = _claimed_size(buffer.tobytes(), msg.format)
    if width <= 0 or height <= 0:
        raise InputError(f"empty image: the {container} header says {width} x {height} pixels")
    _check_pixels(width, height, f"{container} header")
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "cv2.error"
        raise InputError(f"corrupt or truncated {container} image ({len(msg.data)} bytes): "
                         f"the decoder failed: {first}") from err
    if pixels is None or pixels.size == 0:
        raise InputError(f"corrupt or truncated {container} image ({len(msg.data)} bytes): "
                         "the decoder could not read it")
    encoding = container                   # what the data is, whatever `format` says
    if pixels.dtype == np.uint16:
        eight = _scale_16_to_8(pixels)
    elif pixels.dtype == np.uint8:
        eight = pixels
    else:
        raise InputError(f"unsupported {encoding} sample type {pixels.dtype}: send 8 or 16 bit")
    if eight.ndim == 2:
        frame = cv2.cvtColor(eight, cv2.COLOR_GRAY2BGR)
    elif eight.shape[2] == 4:
        frame = cv2.cvtColor(eight, cv2.COLOR_BGRA2BGR)
    else:
        frame = eight
    return Decoded(np.ascontiguousarray(frame), pixels, encoding)


def array_to_image(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """(H, W[, C]) array -> sensor_msgs/Image with ``header`` unchanged (same stamp/frame_id).

    encoding: mono8 / mono16 / 16UC1 (uint16), rgb8 / bgr8 ((H, W, 3) uint8), 32FC1 (float32).
    The data is written in this machine's byte order and ``is_bigendian`` says which.
    """
    spec = OUTPUT_ENCODINGS.get(encoding)
    if spec is None:
        raise InputError(f"cannot publish encoding {encoding!r}: use one of "
                         f"{', '.join(OUTPUT_ENCODINGS)}")
    dtype, channels = spec
    shape_ok = pixels.ndim == 2 if channels == 1 else (
        pixels.ndim == 3 and pixels.shape[2] == channels)
    if not shape_ok or pixels.dtype != np.dtype(dtype):
        raise InputError(f"{encoding} needs a {np.dtype(dtype).name} array of "
                         f"{'(H, W)' if channels == 1 else f'(H, W, {channels})'}, got "
                         f"{pixels.dtype.name} {pixels.shape}")
    contiguous = np.ascontiguousarray(pixels)
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(contiguous.shape[0]), int(contiguous.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(msg.width * channels * contiguous.dtype.itemsize)
    # array.array('B', bytes) copies in one go; the message's own setter would check every byte.
    msg.data = array.array("B", contiguous.tobytes())
    return msg
