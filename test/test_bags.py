"""Bag reading and writing with rosbags: encodings, label matching, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_eval import (
    IMAGE_TOPIC,
    LABEL_TOPIC,
    PERIOD_NS,
    T0_NS,
    as_encoding,
    synthetic,
    write_bag,
)

from ditta_ros.errors import InputError
from ditta_ros.tools import datasets
from ditta_ros.tools.bags import IGNORE, BagSource, BagWriter, make_image, read_id_map


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "jpeg"])
def test_frames_decode_to_bgr(tmp_path: Path, storage: str, encoding: str) -> None:
    bag = write_bag(tmp_path / "bag", frames=3, storage=storage, encoding=encoding)
    video = synthetic()
    with BagSource(bag) as source:
        assert len(source) == 3
        assert source.stamps == [T0_NS + t * PERIOD_NS for t in range(3)]
        for t in (0, 2, 1):      # random access, also backwards
            frame = source.frames()[t]
            assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
            expected = video.frame(t).image
            if encoding == "mono8":
                grey = as_encoding(expected, "mono8")
                np.testing.assert_array_equal(frame, np.repeat(grey[..., None], 3, axis=2))
            elif encoding == "jpeg":
                assert np.abs(frame.astype(int) - expected).mean() < 8
            else:
                np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_labels_matched_by_stamp_with_map_and_ignore(tmp_path: Path, storage: str) -> None:
    # Raw ids are class + 1 (VSPW style); the map sends raw 1..4 to classes 0..3, raw 2 is
    # ignored on top.
    bag = write_bag(tmp_path / "bag", frames=4, storage=storage, label_raw_offset=1,
                    label_encoding="mono16")
    id_map = {1: 0, 2: 1, 3: 2, 4: 3}
    with BagSource(bag, label_topic=LABEL_TOPIC, id_map=id_map, ignore=(2,)) as source:
        gt = source.ground_truth()
        assert gt is not None
        for t in (3, 0):
            truth = synthetic().frame(t).labels
            expected = np.where(truth == 1, IGNORE, truth)
            np.testing.assert_array_equal(gt[t], expected)


def test_only_labelled_frames_get_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    video = synthetic()
    with BagWriter(path, "mcap") as writer:
        for t in range(3):
            stamp = T0_NS + t * PERIOD_NS
            writer.write(IMAGE_TOPIC, make_image(video.frame(t).image, "bgr8", stamp), stamp)
            if t != 1:
                writer.write(LABEL_TOPIC, make_image(video.frame(t).labels.astype(np.uint8),
                                                     "mono8", stamp), stamp + 5)
    with BagSource(path, label_topic=LABEL_TOPIC) as source:
        gt = source.ground_truth()
        assert gt is not None
        assert gt[1] is None
        np.testing.assert_array_equal(gt[2], video.frame(2).labels)


def test_missing_image_topic_names_the_topics(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=2)
    with pytest.raises(InputError, match=r"no topic '/nope'.*/camera/image_raw"):
        BagSource(bag, image_topic="/nope")


def test_missing_label_topic(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=2, labels=False)
    with pytest.raises(InputError, match="no label topic '/camera/labels'"):
        BagSource(bag, label_topic=LABEL_TOPIC)


def test_label_topic_of_wrong_type(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=2, label_type="compressed")
    with pytest.raises(InputError, match="CompressedImage; it must be sensor_msgs/msg/Image"):
        BagSource(bag, label_topic=LABEL_TOPIC)


def test_label_topic_with_colour_encoding(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    video = synthetic()
    with BagWriter(path, "sqlite3") as writer:
        writer.write(IMAGE_TOPIC, make_image(video.frame(0).image, "bgr8", T0_NS), T0_NS)
        writer.write(LABEL_TOPIC, make_image(video.frame(0).image, "bgr8", T0_NS), T0_NS)
    with pytest.raises(InputError, match="encoding 'bgr8'; class ids need mono8"):
        BagSource(path, label_topic=LABEL_TOPIC)


def test_unmatched_stamps(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", frames=3, label_stamp_shift=7)
    with pytest.raises(InputError, match="matched to frames by exact header stamp"):
        BagSource(bag, label_topic=LABEL_TOPIC)


@pytest.mark.parametrize("storage,suffix", [("sqlite3", ".db3"), ("mcap", ".mcap")])
def test_truncated_bag(tmp_path: Path, storage: str, suffix: str) -> None:
    bag = write_bag(tmp_path / "bag", frames=6, storage=storage)
    data_file = next(bag.glob(f"*{suffix}"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        with BagSource(bag) as source:
            list(source.frames())


def test_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        BagSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no metadata.yaml"):
        BagSource(tmp_path / "empty")


def test_several_image_topics_need_a_choice(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    frame = synthetic().frame(0).image
    with BagWriter(path, "mcap") as writer:
        writer.write("/a", make_image(frame, "bgr8", T0_NS), T0_NS)
        writer.write("/b", make_image(frame, "bgr8", T0_NS), T0_NS)
    with pytest.raises(InputError, match="2 image topics; pick one with --image-topic"):
        BagSource(path)
    with BagSource(path, image_topic="/b") as source:
        np.testing.assert_array_equal(source.frames()[0], frame)


def test_bag_videos_and_detection(tmp_path: Path) -> None:
    write_bag(tmp_path / "one", frames=2, storage="mcap")
    write_bag(tmp_path / "two", frames=3, storage="sqlite3")
    assert datasets.detect_kind(tmp_path / "one") == "bag"
    refs = datasets.bag_videos([tmp_path / "one", tmp_path / "two"], label_topic=LABEL_TOPIC)
    assert [r.name for r in refs] == ["one", "two"]
    video = refs[1].open()
    try:
        assert len(video) == 3 and video.ground_truth is not None
        np.testing.assert_array_equal(video.ground_truth[2], synthetic().frame(2).labels)
    finally:
        video.close()


def test_id_map_file(tmp_path: Path) -> None:
    (tmp_path / "map.txt").write_text("# raw class\n1 0\n2, 5\n")
    assert read_id_map(tmp_path / "map.txt") == {1: 0, 2: 5}
    (tmp_path / "map.json").write_text('{"7": 3}')
    assert read_id_map(tmp_path / "map.json") == {7: 3}
    (tmp_path / "bad.txt").write_text("1\n")
    with pytest.raises(InputError, match="malformed"):
        read_id_map(tmp_path / "bad.txt")
