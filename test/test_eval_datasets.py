"""Dataset readers: VSPW layout (label convention, splits), image folders, video files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures_eval import synthetic, write_bag, write_image_folder, write_vspw

from ditta_ros.errors import InputError
from ditta_ros.tools import datasets


def test_vspw_reader_follows_the_label_convention(tmp_path: Path) -> None:
    root = write_vspw(tmp_path / "vspw", videos=2, frames=3)
    mask = root / "data" / "video_01" / "mask" / "00000001.png"
    raw = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    raw[0, :5] = 0            # "others": ignored
    raw[1, :5] = 255          # ignored
    cv2.imwrite(str(mask), raw)
    refs = datasets.vspw_videos(root, "val", num_classes=4)
    assert [r.name for r in refs] == ["video_00", "video_01"]
    video = refs[1].open()
    assert len(video) == 3 and video.frames[1].shape == (48, 64, 3)
    assert video.ground_truth is not None
    gt = video.ground_truth[1]
    expected = synthetic(seed=11).frame(1).labels.copy()
    expected[0, :5] = 255
    expected[1, :5] = 255
    np.testing.assert_array_equal(gt, expected)           # class = raw - 1
    (root / "data" / "video_00" / "mask" / "00000002.png").unlink()
    assert refs[0].open().ground_truth[2] is None          # type: ignore[index]


def test_vspw_splits_and_errors(tmp_path: Path) -> None:
    root = write_vspw(tmp_path / "vspw", videos=3, frames=1)
    (root / "mine.txt").write_text("video_02\n")
    assert [r.name for r in datasets.vspw_videos(root, str(root / "mine.txt"))] == ["video_02"]
    assert len(datasets.vspw_videos(root, "all")) == 3
    with pytest.raises(InputError, match="split file .*test.txt does not exist"):
        datasets.vspw_videos(root, "test")
    (root / "val.txt").write_text("video_00\nnope\n")
    with pytest.raises(InputError, match="missing under .*first: nope"):
        datasets.vspw_videos(root, "val")
    with pytest.raises(InputError, match="not a VSPW-layout folder"):
        datasets.vspw_videos(tmp_path, "val")


def test_image_folders_sort_naturally(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "frames", frames=12)
    refs = datasets.image_folder_videos(folder)
    video = refs[0].open()
    assert len(video) == 12 and video.ground_truth is None
    # frame_10 comes after frame_9 (natural order), and images are read as BGR unchanged
    np.testing.assert_array_equal(video.frames[10], synthetic(seed=3).frame(10).image)
    write_image_folder(tmp_path / "many" / "b", frames=2)
    write_image_folder(tmp_path / "many" / "a", frames=3)
    assert [r.name for r in datasets.image_folder_videos(tmp_path / "many")] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        datasets.image_folder_videos(tmp_path / "empty")


def test_video_file_reads_lazily_and_backwards(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    frames = [synthetic().frame(t).image for t in range(5)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    video = datasets.video_file_videos(path)[0].open()
    try:
        assert len(video) == 5
        for t in (3, 4, 1):
            assert np.abs(video.frames[t].astype(int) - frames[t]).mean() < 10
    finally:
        video.close()


def test_detect_kind(tmp_path: Path) -> None:
    assert datasets.detect_kind(write_bag(tmp_path / "bag", frames=1)) == "bag"
    assert datasets.detect_kind(write_vspw(tmp_path / "vspw", videos=1, frames=1)) == "vspw"
    assert datasets.detect_kind(write_image_folder(tmp_path / "img", frames=1)) == "images"
    (tmp_path / "x.mp4").write_bytes(b"")
    assert datasets.detect_kind(tmp_path / "x.mp4") == "video"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken_0.db3").write_bytes(b"")
    with pytest.raises(InputError, match="no metadata.yaml"):
        datasets.detect_kind(broken)
    with pytest.raises(InputError, match="does not exist"):
        datasets.detect_kind(tmp_path / "nothing")
