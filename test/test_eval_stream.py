"""``ditta-eval --as-stream`` (ditta_ros.tools.streams) end to end: three generated VSPW
videos joined into one stream; real tiny SegFormer, real random SAM2 (image size 64)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from fixtures_eval import NUM_CLASSES, write_vspw

from ditta_ros.tools.eval import main

FRAMES = 16
SMALL = ["--num-classes", str(NUM_CLASSES), "--iterations", "1", "--sam2-image-size", "64",
         "--set", "model.fit_long=64", "--set", "model.fit_short=48",
         "--set", "teacher.reliability_threshold=0.0", "--set", "teacher.max_objects=2",
         "--warmup-frames", "3", "--stream-fps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """As in test_learning: intra-op threads only slow tiny models on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_as_stream_compares_the_policies_per_scene(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = write_vspw(tmp_path / "vspw", videos=3, frames=FRAMES)
    out = tmp_path / "out"
    code = main([str(root), "-o", str(out), "--as-stream", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "# Stream evaluation: 3 videos as one stream" in captured.out
    report = json.loads((out / "stream_report.json").read_text())
    assert (out / "stream_timeline.png").stat().st_size > 0
    assert report["scene_starts"] == [0, FRAMES, 2 * FRAMES]
    runs = {m["method"]: m for m in report["methods"]}
    assert list(runs) == ["iss", "once", "on_scene_change"]
    for run in runs.values():
        assert len(run["scenes"]) == 3
        assert run["overall"]["pixels"] == 3 * FRAMES * 48 * 64
        assert sum(s["pixels"] for s in run["scenes"]) == run["overall"]["pixels"]
        assert all(s["after_warmup"]["pixels"] == (FRAMES - 3) * 48 * 64
                   for s in run["scenes"])
    assert runs["iss"]["adaptations"] == []
    assert [(a["start_frame"], a["reason"]) for a in runs["once"]["adaptations"]] == \
        [(0, "startup")]
    changes = runs["on_scene_change"]["adaptations"]
    assert [(a["start_frame"], a["scene"], a["reason"]) for a in changes] == \
        [(0, 0, "startup"), (FRAMES, 1, "cut"), (2 * FRAMES, 2, "cut")]
    # each served from the frame after its warm-up (the stream waits for the adaptation)
    assert [a["ready_frame"] for a in changes] == [3, FRAMES + 3, 2 * FRAMES + 3]
    # scene 0 is served identically by both DiTTA runs
    assert runs["once"]["scenes"][0]["miou"] == runs["on_scene_change"]["scenes"][0]["miou"]


def test_as_stream_refuses_shards_and_unknown_methods(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = write_vspw(tmp_path / "vspw", videos=2, frames=4)
    code = main([str(root), "-o", str(tmp_path / "o"), "--as-stream", "--shard", "0/2", *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one unit of work" in err[0]
    code = main([str(root), "-o", str(tmp_path / "o"), "--as-stream", "--methods", "ditta",
                 *SMALL])
    assert code == 2 and "must be among iss, once, on_scene_change" in capsys.readouterr().err
