"""Unit tests of ditta_ros.ros.image: camera messages <-> numpy, without cv_bridge.

Answers are known by construction: a small BGR frame is encoded by hand into each encoding
(padding, byte order, YUV packing) and must come back as the same frame.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ditta_ros.errors import InputError
from ditta_ros.ros import image as im


@pytest.fixture()
def bgr() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False
               ) -> Image:
    """A raw Image message carrying ``pixels`` with ``pad`` bytes of padding per row."""
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if big_endian else "<u2")
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    msg = Image()
    msg.height, msg.width = pixels.shape[0], pixels.shape[1]
    msg.encoding, msg.is_bigendian = encoding, int(big_endian)
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("encoding, convert", [
    ("bgr8", None), ("8UC3", None), ("rgb8", cv2.COLOR_BGR2RGB),
    ("rgba8", cv2.COLOR_BGR2RGBA), ("bgra8", cv2.COLOR_BGR2BGRA), ("8UC4", cv2.COLOR_BGR2BGRA)])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_return_the_bgr_frame(bgr: np.ndarray, encoding: str,
                                                convert: int | None, pad: int) -> None:
    pixels = bgr if convert is None else cv2.cvtColor(bgr, convert)
    decoded = im.image_to_frame(make_image(pixels, encoding, pad=pad))
    assert decoded.frame.dtype == np.uint8 and decoded.frame.flags.c_contiguous
    np.testing.assert_array_equal(decoded.frame, bgr)
    np.testing.assert_array_equal(decoded.original, pixels)
    assert decoded.encoding == encoding


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_grey_8bit_is_replicated_to_three_channels(encoding: str) -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    decoded = im.image_to_frame(make_image(grey, encoding, pad=3))
    assert decoded.frame.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded.frame[:, :, c], grey)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_grey_16bit_respects_byte_order_and_scales_full_range(encoding: str,
                                                              big_endian: bool) -> None:
    grey = np.array([[0, 257, 65535, 1000], [32768, 12345, 2, 65280]], dtype=np.uint16)
    decoded = im.image_to_frame(make_image(grey, encoding, pad=2, big_endian=big_endian))
    np.testing.assert_array_equal(decoded.original, grey)
    expected = np.round(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(decoded.frame[:, :, 1], expected)
    assert decoded.frame[0, 1, 0] == 1 and decoded.frame[0, 2, 2] == 255


def _pack_yuv422(bgr: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 3) BGR -> (H, W, 2) packed 4:2:2 in ``order`` (UYVY or YUYV).

    BT.601 video range (Y 16..235), the convention of camera YUV and of OpenCV's 4:2:2 decoder.
    """
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    y = np.round(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    u = np.round((cb[:, 0::2] + cb[:, 1::2]) / 2).repeat(2, axis=1)
    v = np.round((cr[:, 0::2] + cr[:, 1::2]) / 2).repeat(2, axis=1)
    chroma = np.where(np.arange(bgr.shape[1]) % 2 == 0, u, v)
    pair = (chroma, y) if order == "UYVY" else (y, chroma)
    return np.stack(pair, axis=2).astype(np.uint8)


@pytest.mark.parametrize("encoding, order", [
    ("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
def test_yuv422_packings_decode_close_to_the_source(encoding: str, order: str) -> None:
    flat = np.zeros((4, 6, 3), np.uint8)
    flat[:, :] = (40, 120, 200)  # constant colour: chroma subsampling loses nothing
    decoded = im.image_to_frame(make_image(_pack_yuv422(flat, order), encoding, pad=4))
    assert decoded.frame.shape == (4, 6, 3)
    assert np.abs(decoded.frame.astype(int) - flat.astype(int)).max() <= 3


def test_swapping_yuv_byte_order_changes_the_colours() -> None:
    flat = np.zeros((2, 4, 3), np.uint8)
    flat[:, :] = (40, 120, 200)
    packed = _pack_yuv422(flat, "UYVY")
    right = im.image_to_frame(make_image(packed, "uyvy")).frame
    wrong = im.image_to_frame(make_image(packed, "yuyv")).frame
    assert np.abs(right.astype(int) - wrong.astype(int)).max() > 20


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: setattr(m, "step", m.step - 1), "shorter than one row"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-10]), "truncated"),
    (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), "too long"),
    (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "empty image"),
    (lambda m: (setattr(m, "width", 0)), "empty image"),
    (lambda m: setattr(m, "encoding", "bayer_rggb8"), "unsupported encoding"),
    (lambda m: setattr(m, "encoding", ""), "unsupported encoding"),
])
def test_malformed_raw_images_raise_input_error_with_reason(bgr: np.ndarray, mutate,
                                                            reason: str) -> None:
    msg = make_image(bgr, "bgr8")
    mutate(msg)
    with pytest.raises(InputError, match=reason):
        im.image_to_frame(msg)


def test_odd_width_yuv_and_odd_step_16bit_are_rejected() -> None:
    with pytest.raises(InputError, match="even width"):
        im.image_to_frame(make_image(np.zeros((2, 3, 2), np.uint8), "yuyv"))
    msg = make_image(np.zeros((2, 3), np.uint16), "mono16", pad=1)
    with pytest.raises(InputError, match="multiple"):
        im.image_to_frame(msg)


def compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage()
    msg.format = fmt
    msg.data = data
    return msg


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", ""])
def test_png_round_trip_is_exact(bgr: np.ndarray, fmt: str) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    decoded = im.compressed_to_frame(compressed(buf.tobytes(), fmt))
    np.testing.assert_array_equal(decoded.frame, bgr)


def test_jpeg_decodes_to_bgr_and_16bit_png_is_scaled() -> None:
    flat = np.full((16, 16, 3), (30, 90, 220), np.uint8)
    ok, buf = cv2.imencode(".jpg", flat, [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = im.compressed_to_frame(compressed(buf.tobytes(), "rgb8; jpeg compressed bgr8"))
    assert decoded.encoding == "jpeg"
    assert np.abs(decoded.frame.astype(int) - flat.astype(int)).max() <= 4
    grey16 = np.full((4, 4), 65535, np.uint16)
    ok, buf = cv2.imencode(".png", grey16)
    decoded = im.compressed_to_frame(compressed(buf.tobytes(), "mono16; png compressed"))
    assert decoded.frame.shape == (4, 4, 3) and int(decoded.frame.min()) == 255


@pytest.mark.parametrize("data, fmt, reason", [
    (b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20, "jpeg", "corrupt"),
    (b"", "jpeg", "empty"),
    (b"\x00" * 10, "16UC1; compressedDepth", "unsupported compressed format"),
    (b"\x00" * 10, "tiff", "unsupported compressed format"),
])
def test_bad_compressed_images_raise_input_error(data: bytes, fmt: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        im.compressed_to_frame(compressed(data, fmt))


def test_truncated_jpeg_is_rejected(bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.resize(bgr, (64, 48)))
    with pytest.raises(InputError, match="corrupt or truncated"):
        im.compressed_to_frame(compressed(buf.tobytes()[: len(buf) // 2], "jpeg"))


@pytest.mark.parametrize("encoding, pixels", [
    ("mono8", np.arange(12, dtype=np.uint8).reshape(3, 4)),
    ("mono16", np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000),
    ("rgb8", np.arange(36, dtype=np.uint8).reshape(3, 4, 3)),
    ("bgr8", np.arange(36, dtype=np.uint8).reshape(3, 4, 3)),
    ("32FC1", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)),
])
def test_array_to_image_keeps_header_and_round_trips(encoding: str, pixels: np.ndarray) -> None:
    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = im.array_to_image(pixels, encoding, header)
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    assert msg.header.frame_id == "camera_optical"
    assert (msg.height, msg.width, msg.encoding) == (3, 4, encoding)
    assert msg.step == 4 * pixels.itemsize * (3 if pixels.ndim == 3 else 1)
    assert msg.is_bigendian == int(sys.byteorder == "big")
    back = np.frombuffer(msg.data, dtype=pixels.dtype).reshape(pixels.shape)
    np.testing.assert_array_equal(back, pixels)


def test_array_to_image_rejects_wrong_dtype_shape_and_encoding() -> None:
    header = Header()
    with pytest.raises(InputError, match="uint8"):
        im.array_to_image(np.zeros((2, 2), np.int64), "mono8", header)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        im.array_to_image(np.zeros((2, 2), np.uint8), "rgb8", header)
    with pytest.raises(InputError, match="cannot publish"):
        im.array_to_image(np.zeros((2, 2), np.uint8), "yuyv", header)


def test_non_contiguous_output_arrays_are_published_correctly() -> None:
    base = np.arange(40, dtype=np.uint8).reshape(5, 8)
    view = base[:, ::2]  # a strided view
    msg = im.array_to_image(view, "mono8", Header())
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(5, 4), view)
