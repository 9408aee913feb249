"""ditta-eval on recordings as they come: bad frames, a resolution change, frames recorded out
of stamp order, a bare .mcap from another writer, and command-line mistakes.

Every bag is written here (fixtures_eval); the models are the tiny seeded SegFormer and the
random SAM2 of test_eval. Each case must evaluate what is evaluable, count the rest with the
node's reasons, and never print a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fixtures_eval import (
    BAD_FRAMES,
    FLAWED_FRAMES,
    IMAGE_TOPIC,
    LABEL_TOPIC,
    NUM_CLASSES,
    PERIOD_NS,
    RESOLUTION_CHANGE,
    SMALL_HEIGHT,
    SMALL_WIDTH,
    T0_NS,
    flawed_frame,
    flawed_record_times,
    synthetic,
    write_bag,
    write_bare_mcap,
    write_flawed_bag,
    write_resolution_bag,
)

from ditta_ros.config import DittaConfig
from ditta_ros.engine.metrics import ConfusionMatrix
from ditta_ros.engine.runner import run_w2f
from ditta_ros.labels import load_classes
from ditta_ros.tools import datasets
from ditta_ros.tools.bags import IMAGE_TYPE, BagSource, BagWriter, make_image, out_of_order
from ditta_ros.tools.bagscan import Segment, scan_bag
from ditta_ros.tools.eval import Models, build_config, build_models, main, run_parser
from ditta_ros.tools.evaluation import EvalOptions, evaluate, evaluate_video
from ditta_ros.tools.replay import bag_items

SMALL = ["--num-classes", str(NUM_CLASSES), "--iterations", "1", "--sam2-image-size", "64",
         "--set", "model.fit_long=64", "--set", "model.fit_short=48",
         "--set", "teacher.reliability_threshold=0.0", "--set", "teacher.max_objects=2",
         "--no-progress", "--no-plots"]
GOOD = [t for t in range(FLAWED_FRAMES) if t not in BAD_FRAMES]


def _late_records() -> int:
    """Records of the shuffled bag whose stamp is older than an earlier record's."""
    times = flawed_record_times(True)
    return out_of_order(sorted(range(FLAWED_FRAMES), key=lambda t: times[t]))


def _config() -> DittaConfig:
    return build_config(run_parser().parse_args(["unused", "-o", "unused", *SMALL]),
                        NUM_CLASSES)


@pytest.fixture(scope="module")
def iss_models() -> Models:
    return build_models(_config(), ("iss",), lambda text: None)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# -- the scan ----------------------------------------------------------------------------------
def test_scan_finds_every_problem_before_any_model(tmp_path: Path) -> None:
    bag = write_flawed_bag(tmp_path / "bag", "sqlite3", shuffle=True)
    with BagSource(bag, label_topic=LABEL_TOPIC) as source:
        scan = scan_bag(source)
    assert scan.frames == FLAWED_FRAMES
    assert scan.out_of_order == _late_records() > 0
    # The node's reasons, one per bad frame, at the bad frames' stamps.
    reasons = {(r.stamp - T0_NS) // PERIOD_NS: r.reason for r in scan.rejected}
    assert sorted(reasons) == sorted(BAD_FRAMES)
    assert reasons[3].startswith("empty image")
    assert "shorter than one row" in reasons[6]
    assert reasons[9].startswith("data truncated")
    assert "unsupported encoding 'bayer_rggb8'" in reasons[12]
    assert len(scan.rejected_by_reason()) == 4
    # Two segments of good frames, in stamp order: the resolution change splits them.
    assert [(s.height, s.width) for s in scan.segments] == [(48, 64),
                                                             (SMALL_HEIGHT, SMALL_WIDTH)]
    assert [list(s.frames) for s in scan.segments] == [
        [t for t in GOOD if t < RESOLUTION_CHANGE], [t for t in GOOD if t >= RESOLUTION_CHANGE]]
    assert scan.labelled == len(GOOD) and scan.label_size_mismatch == 0
    assert scan.evaluated_frames(lambda n: 2) == len(GOOD) - 4
    assert scan.encodings["bayer_rggb8"] == 1
    text = "\n".join(scan.lines(lambda n: 2))
    assert "segment 1: 32x24, 6 frames" in text and "out of stamp order" in text


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_frames_are_read_in_stamp_order(tmp_path: Path, storage: str) -> None:
    bag = write_flawed_bag(tmp_path / "bag", storage, shuffle=True)
    record_times = flawed_record_times(True)
    with BagSource(bag) as source:
        assert source.stamps == [T0_NS + t * PERIOD_NS for t in range(FLAWED_FRAMES)]
        for t in (13, 0, 19, 5):                       # random access over the shuffle
            np.testing.assert_array_equal(source.frames()[t], flawed_frame(t)[0])
    with BagSource(bag, order="record") as source:
        by_record = sorted(range(FLAWED_FRAMES), key=lambda t: record_times[t])
        assert source.stamps == [T0_NS + t * PERIOD_NS for t in by_record]
        np.testing.assert_array_equal(source.frames()[0], flawed_frame(by_record[0])[0])


# -- evaluation --------------------------------------------------------------------------------
def test_bad_frames_and_resolution_change_are_evaluated_not_fatal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], iss_models: Models) -> None:
    bag = write_flawed_bag(tmp_path / "flawed", "mcap")
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, str(bag), "-o", str(out), "--label-topic", LABEL_TOPIC,
                             "--methods", "iss", "--warmup-frames", "2", *SMALL)
    assert code == 0, err
    assert "4 of 20 frames rejected" in err and "2 segments (64x48 -> 32x24)" in err
    assert "4 rejected" in stdout and "x data truncated" in stdout
    assert ("2 segments: 64x48 10 frames (warm-up 2, 8 evaluated), 32x24 6 frames (warm-up 2, "
            "4 evaluated)") in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == FLAWED_FRAMES and report["frames_rejected"] == 4
    assert report["frames_evaluated"] == len(GOOD) - 4 == report["overall"]["iss"]["frames"]
    video = report["videos"]["flawed"]
    assert [(s["width"], s["height"], s["frames"], s["warmup"], s["evaluated"])
            for s in video["segments"]] == [(64, 48, 10, 2, 8), (32, 24, 6, 2, 4)]
    # The pooled confusion is exactly that of the ISS model on each segment on its own.
    config = _config()
    expected = ConfusionMatrix(NUM_CLASSES)
    for part in ([t for t in GOOD if t < RESOLUTION_CHANGE],
                 [t for t in GOOD if t >= RESOLUTION_CHANGE]):
        frames = [flawed_frame(t)[0] for t in part]
        for f in run_w2f(iss_models.model, None, frames, config, warmup=2, iss_only=True):
            expected.update(f.labels, flawed_frame(part[f.index])[1])
    saved = json.loads((out / "videos" / "flawed.json").read_text())
    np.testing.assert_array_equal(np.array(saved["methods"]["iss"]["confusion"]["matrix"]),
                                  expected.matrix)


def test_shuffled_record_order_gives_the_stamp_order_result(tmp_path: Path,
                                                            iss_models: Models) -> None:
    results = {}
    for name, shuffle in (("ordered", False), ("shuffled", True)):
        bag = write_flawed_bag(tmp_path / name, "sqlite3", shuffle=shuffle)
        said: list[str] = []
        refs = datasets.bag_videos([bag], label_topic=LABEL_TOPIC)
        evaluate(refs, _config(), EvalOptions(output=tmp_path / f"out_{name}",
                                              methods=("iss",), warmup_frames=2, plots=False,
                                              progress=False), iss_models, said.append)
        warned = [s for s in said if "out of stamp order" in s]
        assert len(warned) == shuffle, said
        results[name] = json.loads((tmp_path / f"out_{name}" / "videos" / f"{name}.json")
                                   .read_text())
    assert "frames are read in stamp order" in warned[0]
    ordered, shuffled = results["ordered"], results["shuffled"]
    assert ordered["out_of_order"] == 0 and shuffled["out_of_order"] == _late_records()
    assert (ordered["methods"]["iss"]["confusion"] == shuffled["methods"]["iss"]["confusion"])
    assert ordered["methods"]["iss"]["accuracy"] == shuffled["methods"]["iss"]["accuracy"]
    # Record order (the option) keeps the shuffle: other warm-up frames, more segments.
    scan = datasets.bag_videos([tmp_path / "shuffled"], order="record")[0].scan
    assert scan is not None and scan.order == "record" and len(scan.segments) > 2
    assert "read in record order (--record-order)" in scan.warnings()[0]


def test_mvc_windows_never_cross_a_segment_boundary(tmp_path: Path,
                                                    iss_models: Models) -> None:
    video = synthetic(seed=4)
    frames = [video.frame(t) for t in range(24)]
    segments = [Segment(0, 48, 64, tuple(range(12))), Segment(1, 48, 64, tuple(range(12, 24)))]

    def open_video() -> datasets.Video:
        return datasets.Video("two", [f.image for f in frames], [f.labels for f in frames],
                              segments=segments)
    options = EvalOptions(output=tmp_path, methods=("iss",), warmup_frames=2, plots=False,
                          progress=False)
    result = evaluate_video(datasets.VideoRef("two", open_video), iss_models, _config(),
                            options, load_classes("vspw"))
    iss = result.methods["iss"]
    assert iss.frames == 20 and result.evaluated == 20 and result.warmup == 4
    # 10 evaluated frames per segment: windows start at 0, 1 of each (i < L - 8), 4 in all;
    # windows over the boundary would make it 12.
    assert iss.consistency[8].count == 4 and iss.consistency[16].count == 0


@pytest.mark.slow
def test_every_method_follows_a_resolution_change(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """ISS, DiTTA and sam2-refine each start afresh on each segment (the old evaluator
    stopped with "frame size changed within a video"). Three frames per size, warm-up 1."""
    bag = write_resolution_bag(tmp_path / "resized")
    code, stdout, err = _run(capsys, str(bag), "-o", str(tmp_path / "out"), "--label-topic",
                             LABEL_TOPIC, "--warmup-frames", "1", *SMALL)
    assert code == 0, err
    assert "2 segments (64x48 -> 32x24)" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for method in ("iss", "ditta", "sam2-refine"):
        assert report["overall"][method]["frames"] == 4, method
        assert report["overall"][method]["miou"] is not None, method
    notes = report["videos"]["resized"]["methods"]["ditta"]["notes"]
    assert any(n.startswith("segment 0:") for n in notes)
    assert any(n.startswith("segment 1:") for n in notes)


# -- bare .mcap from another writer ------------------------------------------------------------
def test_bare_mcap_from_another_writer(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bare_mcap(tmp_path / "drive.mcap", frames=8, bad=(3,))
    assert not (tmp_path / "metadata.yaml").exists()
    assert datasets.detect_kind(path) == "bag" and datasets.detect_kind(tmp_path) == "bag"
    with BagSource(path, label_topic=LABEL_TOPIC) as source:
        assert source.storage == "bare mcap" and source.image_topic == IMAGE_TOPIC
        assert source.stamps == [T0_NS + t * PERIOD_NS for t in range(8)]
        np.testing.assert_array_equal(source.frames()[5], synthetic().frame(5).image)
        np.testing.assert_array_equal(source.labels(6), synthetic().frame(6).labels)
        scan = scan_bag(source)
    assert [r.frame for r in scan.rejected] == [3]
    code, stdout, err = _run(capsys, str(path), "-o", str(tmp_path / "out"), "--label-topic",
                             LABEL_TOPIC, "--methods", "iss", "--warmup-frames", "2", *SMALL)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["videos"]["drive"]["evaluated"] == 5
    assert report["overall"]["iss"]["miou"] is not None


# -- --check-only and command-line mistakes ----------------------------------------------------
def test_check_only_prints_the_scan_and_loads_no_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_flawed_bag(tmp_path / "flawed", "mcap", shuffle=True)
    code, stdout, err = _run(capsys, str(bag), "--check-only", "--label-topic", LABEL_TOPIC,
                             "--warmup-frames", "2", "--no-progress")
    assert code == 0, err
    assert "RANDOM" not in err                            # no model was built
    for expected in ("topics: /camera/image_raw (sensor_msgs/msg/Image, 20 messages)",
                     "sizes: 64x48 (10), 32x24 (6)", "rejected: 4 frames",
                     "1 x empty image", "segments: 2", "evaluable: 12 frames in 2 segments",
                     "records out of stamp order", "check: 1 of 1 videos evaluable"):
        assert expected in stdout, expected
    code, stdout, _ = _run(capsys, str(bag), "--check-only", "--record-order",
                           "--warmup-frames", "2", "--no-progress")
    assert code == 0 and "order: read in record order" in stdout
    # Nothing evaluable (every frame too few for the warm-up): exit 2, the scan still shown.
    code, stdout, err = _run(capsys, str(bag), "--check-only", "--warmup-frames", "11",
                             "--no-progress")
    assert code == 2 and "evaluable: NOTHING" in stdout and "nothing is evaluable" in err
    # A real run skips such a bag before any model loads, with one line.
    code, _, err = _run(capsys, str(bag), "-o", str(tmp_path / "out"), "--warmup-frames", "11",
                        *SMALL)
    assert code == 2 and "RANDOM" not in err
    assert err.strip().splitlines()[-1].startswith("ditta-eval: error: nothing to evaluate")


def _two_line_usage_error(err: str, flag: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: ditta-eval"), err
    assert lines[1].startswith("ditta-eval: error:") and flag in lines[1], err
    return lines[1]


def test_command_line_mistakes_are_one_line_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_bag(tmp_path / "bag", frames=3)
    out = str(tmp_path / "out")
    code, _, err = _run(capsys, str(bag), "-o", out, "--shard", "3/2")
    assert code == 2
    assert "need 0 <= K < N" in _two_line_usage_error(err, "--shard")
    code, _, err = _run(capsys, str(bag), "-o", out, "--segformer", str(tmp_path / "no.pt"))
    assert code == 2 and "no such file" in _two_line_usage_error(err, "--segformer")
    code, _, err = _run(capsys, str(bag), "-o", out, "--sam2-checkpoint", "missing.pt")
    assert code == 2 and "missing.pt" in _two_line_usage_error(err, "--sam2-checkpoint")
    code, _, err = _run(capsys, str(bag), "-o", out, "--methods", "iss,magic")
    assert code == 2 and "magic" in _two_line_usage_error(err, "--methods")
    code, _, err = _run(capsys, str(bag))
    assert code == 2 and _two_line_usage_error(err, "--output")
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("not a recording")
    code, _, err = _run(capsys, str(empty), "-o", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "is not a bag" in lines[0] and "holds no images" in lines[0]


def test_replay_cli_mistakes_are_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from ditta_ros.tools.replay import main as replay_main

    bag = write_bag(tmp_path / "bag", frames=2)
    cases: list[tuple[list[str], str]] = [
        ([str(bag), "--rate", "0"], "--rate"),
        ([str(bag), "--wait-subscribers", "-1"], "--wait-subscribers"),
        ([str(bag), "--label-out", "/x"], "--label-out")]
    for argv, flag in cases:
        assert replay_main(argv) == 2
        err: Any = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and err[0].startswith("usage: ditta-replay"), err
        assert flag in err[1] and "Traceback" not in "".join(err)


def test_undeserialisable_message_is_a_rejected_frame(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    with BagWriter(path, "sqlite3") as writer:
        for t in range(4):
            stamp = T0_NS + t * PERIOD_NS
            if t == 2:       # a CDR header, then bytes that are no Image
                writer.write_raw(IMAGE_TOPIC, IMAGE_TYPE, b"\x00\x01\x00\x00\xff\xff", stamp)
            else:
                writer.write(IMAGE_TOPIC, make_image(synthetic().frame(t).image, "bgr8",
                                                     stamp), stamp)
    with BagSource(path) as source:
        scan = scan_bag(source)
    assert [r.frame for r in scan.rejected] == [2]
    assert "cannot be deserialised" in scan.rejected[0].reason
    assert [list(s.frames) for s in scan.segments] == [[0, 1, 3]]


def test_replay_keeps_the_recorded_order(tmp_path: Path) -> None:
    """ditta-replay and --live publish as recorded (like ros2 bag play), also when the
    evaluator reads the same bag in stamp order."""
    bag = write_flawed_bag(tmp_path / "bag", "mcap", shuffle=True)
    times = flawed_record_times(True)
    with BagSource(bag) as source:
        items = bag_items(source, "/image")
        assert [i.log_time for i in items] == sorted(times)
        assert [source.stamps[i.frame] for i in items] == [
            T0_NS + t * PERIOD_NS for t in sorted(range(FLAWED_FRAMES), key=lambda t: times[t])]


def test_image_folder_with_a_size_change_and_a_broken_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Folders get segments too (from the files' headers): 5 frames at 48 x 64, a file that
    is no image, 4 frames at 24 x 32."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(10):
        path = folder / f"frame_{t}.png"
        if t == 5:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), flawed_frame(t if t < 5 else RESOLUTION_CHANGE + t)[0])
    code, stdout, err = _run(capsys, str(folder), "--check-only", "--warmup-frames", "2",
                             "--no-progress")
    assert code == 0, err
    assert ("video frames: 10 frames; 1 x unreadable image file; 2 segment(s): 64x48 (5), "
            "32x24 (4); 5 evaluated") in stdout
    code, stdout, err = _run(capsys, str(folder), "-o", str(tmp_path / "out"), "--methods",
                             "iss", "--warmup-frames", "2", *SMALL)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    video = report["videos"]["frames"]
    assert video["evaluated"] == 5 and video["rejected"] == {"unreadable image file": 1}
    assert [(s["width"], s["evaluated"]) for s in video["segments"]] == [(64, 3), (32, 2)]
