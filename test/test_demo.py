"""ditta-demo end to end, as a user runs it: real node, real DDS, real (random tiny) SegFormer
and SAM2; the outputs a person looks at exist and the summary is consistent."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from ditta_ros.tools import demo

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    "ignore:cannot import name '_C':UserWarning")]


def test_demo_writes_labels_overlays_status_and_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code = demo.main(["--out", str(out), "--frames", "6", "--warmup", "3", "--iterations", "1",
                      "--height", "48", "--width", "64", "--rate", "20", "--after", "3",
                      "--max-seconds", "120"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "DEMO WITH RANDOM WEIGHTS" in captured.err
    assert "end-to-end latency" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_weights"] is True
    phases = [p["phase"] for p in summary["phases"]]
    assert phases[0] == "warmup" and "adapting" in phases
    assert summary["final_phase"] in ("adapted", "failed")
    assert summary["frames_processed"] > 0 and summary["latency_ms"]["count"] > 0
    received = summary["frames_received"]
    assert 0 < received <= summary["frames_sent"]
    assert received == (summary["frames_processed"] + summary["frames_dropped"]
                        + summary["frames_rejected"])
    labels = sorted((out / "labels").glob("*.png"))
    overlays = sorted((out / "overlay").glob("*.png"))
    assert len(labels) == summary["labels_received"] and overlays
    assert cv2.imread(str(labels[0])).shape == (48, 64, 3)
    lines = (out / "status.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[0])["phase_label"] in ("warmup", "none")
    assert (out / "summary.md").read_text().startswith("# ditta-demo summary")


def test_demo_bad_arguments_exit_cleanly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--warmup", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    code = demo.main(["--segformer", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"),
                      "--frames", "1", "--max-seconds", "5"])
    assert code == 2
