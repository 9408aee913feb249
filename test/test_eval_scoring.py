"""The evaluator's scoring and report on a fixed, known prediction (hand-computed numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ditta_ros.errors import InputError
from ditta_ros.tools.datasets import VideoRef, shard
from ditta_ros.tools.evaluation import Scorer, select_videos, strip_indices
from ditta_ros.tools.report import (
    MethodResult,
    VideoResult,
    build_report,
    load_results,
    markdown,
    pool,
    save_video_result,
)

GT = np.array([[0, 0], [1, 1]])
PRED = np.array([[0, 1], [1, 1]])


def _scored(frames: int = 10) -> MethodResult:
    """GT constant over ``frames`` frames; the prediction flips pixel (1, 1) on frame 3."""
    scorer = Scorer(MethodResult.empty(2))
    for t in range(frames):
        pred = PRED.copy()
        if t == 3:
            pred[1, 1] = 0
        scorer.add(pred, GT, label_free=False, seconds=0.5)
    return scorer.finish()


def test_known_prediction_gives_hand_computed_metrics() -> None:
    res = _scored()
    # class 0: 20 GT pixels, 10 right, 1 false positive -> IoU 10 / 21
    # class 1: 20 GT pixels, 19 right, 10 false positives -> IoU 19 / 30
    iou0, iou1 = 10 / 21, 19 / 30
    s = res.summary()
    assert s["miou"] == pytest.approx(100 * (iou0 + iou1) / 2)
    assert s["wiou"] == pytest.approx(100 * (0.5 * iou0 + 0.5 * iou1))   # equal GT shares
    # mVC8: L = 10 evaluated frames, windows i < L - 8 -> i = 0, 1; both hold frame 3, where
    # 1 of the 4 (all GT-constant) pixels changes -> 3/4 each.
    assert s["mvc8"] == pytest.approx(75.0)
    assert res.window_scores == [pytest.approx(0.75), pytest.approx(0.75)]
    assert s["mvc16"] is None                       # no window of 16 in 10 frames
    assert s["fps"] == pytest.approx(2.0)           # 10 frames in 5 s
    assert res.accuracy[3] == pytest.approx(0.5) and res.accuracy[0] == pytest.approx(0.75)


def test_frames_without_ground_truth_break_windows() -> None:
    scorer = Scorer(MethodResult.empty(2))
    for t in range(20):
        scorer.add(PRED, None if t == 9 else GT, label_free=False, seconds=0.1)
    res = scorer.finish()
    # frames 0-8 (L = 9): window 0 only; frames 10-19 (L = 10): windows 0, 1; all constant.
    assert res.consistency[8].count == 3
    assert res.summary()["mvc8"] == pytest.approx(100.0)
    assert res.accuracy[9] is None and res.confusion.matrix.sum() == 19 * 4


def test_label_free_consistency_counts_every_pixel() -> None:
    scorer = Scorer(MethodResult.empty(2))
    for t in range(10):
        pred = PRED.copy()
        if t == 3:
            pred[0, 0] = 1
        scorer.add(pred, None, label_free=True, seconds=0.1)
    s = scorer.finish().summary()
    assert s["miou"] is None and s["mvc8"] == pytest.approx(75.0)


def _video(name: str, frames: int) -> VideoResult:
    return VideoResult(name, frames + 2, 2, frames, 2, 2, {"iss": _scored(frames)})


def test_report_pools_videos_and_files_round_trip(tmp_path: Path) -> None:
    a, b = _video("a", 10), _video("b", 12)
    save_video_result(tmp_path, a)
    save_video_result(tmp_path, b)
    loaded = load_results(tmp_path)
    assert [v.name for v in loaded] == ["a", "b"]
    assert loaded[0].to_dict() == a.to_dict()
    total = pool(loaded, 2)["iss"]
    # Pooled: confusion matrices add (not per-video averages), windows add: 2 + 4.
    np.testing.assert_array_equal(total.confusion.matrix,
                                  a.methods["iss"].confusion.matrix
                                  + b.methods["iss"].confusion.matrix)
    assert total.consistency[8].count == 6
    report = build_report(loaded, 2, ["zero", "one"], {"warmup": "2 frames"})
    assert report["overall"]["iss"]["frames"] == 22
    assert set(report["overall"]["iss"]["per_class_iou"]) == {"zero", "one"}
    json.dumps(report)                                   # JSON-clean (no NaN)
    text = markdown(report)
    assert "| 2 frames | ISS frame by frame |" in text and "| a | 12 | 2 | iss |" in text


def test_corrupt_result_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "x.json").write_text("{")
    with pytest.raises(InputError, match="x.json.*delete it"):
        load_results(tmp_path)


def test_shards_are_a_deterministic_partition() -> None:
    refs = [VideoRef(f"v{i}", lambda: None) for i in range(7)]  # type: ignore[arg-type]
    parts = [shard(refs, k, 3) for k in range(3)]
    names = sorted(r.name for part in parts for r in part)
    assert names == sorted(r.name for r in refs)
    assert [r.name for r in parts[1]] == ["v1", "v4"]
    assert [r.name for r in select_videos(refs, 4, (0, 2))] == ["v0", "v2"]
    with pytest.raises(InputError):
        shard(refs, 3, 3)


def teststrip_indices() -> None:
    assert strip_indices(2, 10, 3) == [2, 6, 9]
    assert strip_indices(5, 6, 4) == [5]
    assert strip_indices(2, 10, 0) == []
