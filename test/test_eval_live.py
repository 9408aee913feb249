"""ditta-eval --live: a bag replayed into a real ditta_node over DDS, scored by header stamp.

The node runs in this process with the tiny seeded SegFormer of fixtures_stream and a warm-up
longer than the bag, so it serves its ISS labels on every frame; the offline ISS method with
the same seeded model must give the same labels for the same frames.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from fixtures_eval import (
    BAD_FRAMES,
    FLAWED_FRAMES,
    LABEL_TOPIC,
    RESOLUTION_CHANGE,
    SMALL_HEIGHT,
    SMALL_WIDTH,
    write_bag,
    write_flawed_bag,
)
from fixtures_node import TINY_PARAMS, harness
from fixtures_stream import make_video, tiny_config, tiny_model

from ditta_ros.engine.runner import run_w2f
from ditta_ros.tools.eval import EvalOptions
from ditta_ros.tools.live import (
    LIVE_METHOD,
    LiveRun,
    live_summary,
    replay_into_node,
    score_live,
)
from ditta_ros.tools.replay import replay

FRAMES, WARMUP = 8, 2


def test_live_replay_matches_offline_labels(tmp_path: Path) -> None:
    video = make_video(seed=5)
    bag = write_bag(tmp_path / "bag", frames=FRAMES, storage="mcap", encoding="rgb8",
                    video=video)
    params = {**TINY_PARAMS, "adaptation.warmup_frames": 10000}
    with harness(params, video=video):
        run = replay_into_node(bag, "/image", "/ditta_node/labels", label_topic=LABEL_TOPIC,
                               rate=0.5, quiet=3.0, discovery_timeout=20.0)
    # The node keeps only the latest frame while busy: how many it answers depends on the
    # machine's load, but the first and the last frame are always answered.
    assert {run.stamps[0], run.stamps[-1]} <= set(run.labels), sorted(run.labels)
    config = tiny_config()
    frames = [video.frame(t).image for t in range(FRAMES)]
    offline = {f.index: f.labels for f in run_w2f(tiny_model(config), None, frames, config,
                                                 warmup=WARMUP, iss_only=True)}
    compared = 0
    for t in range(WARMUP, FRAMES):
        live = run.labels.get(run.stamps[t])
        if live is not None:
            np.testing.assert_array_equal(live, offline[t], err_msg=f"frame {t}")
            compared += 1
    assert compared >= 1
    options = EvalOptions(output=tmp_path / "out", warmup_frames=WARMUP, progress=False)
    report = score_live(run, config, options, num_classes=4)
    s = report["overall"][LIVE_METHOD]
    assert s["frames"] + s["dropped"] == FRAMES - WARMUP
    assert s["miou"] is not None and s["latency_mean_ms"] > 0
    assert "latency mean ms" in (tmp_path / "out" / "report.md").read_text()


def test_external_player_like_ros2_bag_play(tmp_path: Path) -> None:
    """--live-player external: another process plays the bag (here ditta-replay, which
    publishes the recorded bytes at the recorded times, as ``ros2 bag play`` does)."""
    video = make_video(seed=6)
    bag = write_bag(tmp_path / "bag", frames=6, storage="sqlite3", encoding="bgr8",
                    labels=False, video=video)
    params = {**TINY_PARAMS, "adaptation.warmup_frames": 10000}
    ready = threading.Event()
    runs: list[LiveRun] = []
    with harness(params, video=video):
        listener = threading.Thread(target=lambda: runs.append(replay_into_node(
            bag, "/image", "/ditta_node/labels", quiet=3.0, discovery_timeout=20.0,
            external_player=True, ready=ready)))
        listener.start()
        assert ready.wait(30.0), "the live scorer did not find the node"
        replay(bag, "/image", rate=0.5, wait_subscribers=2, wait_timeout=20.0)
        listener.join(timeout=60.0)
    assert runs and {runs[0].stamps[0], runs[0].stamps[-1]} <= set(runs[0].labels)
    config = tiny_config()
    frames = [video.frame(t).image for t in range(6)]
    offline = {f.index: f.labels for f in run_w2f(tiny_model(config), None, frames, config,
                                                 warmup=1, iss_only=True)}
    for t in range(1, 6):
        live = runs[0].labels.get(runs[0].stamps[t])
        if live is not None:
            np.testing.assert_array_equal(live, offline[t], err_msg=f"frame {t}")
    assert all(v >= 0 for v in runs[0].latency.values()) and runs[0].latency


def test_live_keeps_processed_dropped_rejected_apart_with_wall_throughput(
        tmp_path: Path) -> None:
    """10 frames, warm-up 2: frames 3 and 6 are bad (the node rejects them), frame 8 got no
    labels (dropped); 5 answered in 2.5 s of wall clock -> 2 frames/s, whatever the stamps."""
    stamps = [1_000_000_000 * t for t in range(10)]        # 1 s apart: a 9 s stamp span
    labels = {stamps[t]: np.zeros((4, 4), np.int64) for t in (0, 1, 2, 4, 5, 7, 9)}
    run = LiveRun(tmp_path / "bag", stamps, None, labels, {s: 0.1 for s in labels}, 4, 4,
                  rejected=frozenset({stamps[3], stamps[6]}), wall_s=2.5)
    options = EvalOptions(output=tmp_path / "out", warmup_frames=2, progress=False,
                          plots=False)
    report = score_live(run, tiny_config(), options, num_classes=4)
    s = report["overall"][LIVE_METHOD]
    assert (s["processed"], s["dropped"], s["rejected"]) == (5, 1, 2)
    assert s["fps"] == 5 / 2.5 and s["wall_s"] == 2.5
    text = (tmp_path / "out" / "report.md").read_text()
    assert "processed | dropped | rejected" in text and "| 5 | 1 (16.7 %) | 2 |" in text
    assert live_summary(report) == ("live: 5 processed, 1 dropped, 2 rejected; throughput "
                                    "2.00 frames/s over 2.5 s wall clock; mean latency "
                                    "100.0 ms")


def test_live_counts_the_bags_bad_frames_as_rejected(tmp_path: Path) -> None:
    """The flawed recording (4 bad frames, a resolution change) replayed into a real node:
    the node answers no bad frame, follows the resolution change, and the scorer counts the
    bad frames as rejected, not dropped."""
    bag = write_flawed_bag(tmp_path / "flawed", "mcap")
    params = {**TINY_PARAMS, "adaptation.warmup_frames": 10000}
    with harness(params):
        run = replay_into_node(bag, "/image", "/ditta_node/labels", label_topic=LABEL_TOPIC,
                               rate=1.0, quiet=3.0, discovery_timeout=20.0)
    bad = {run.stamps[t] for t in BAD_FRAMES}
    assert run.rejected == bad and not bad & set(run.labels)
    small = [s for s in run.labels if s >= run.stamps[RESOLUTION_CHANGE]]
    assert small and all(run.labels[s].shape == (SMALL_HEIGHT, SMALL_WIDTH) for s in small)
    options = EvalOptions(output=tmp_path / "out", warmup_frames=2, progress=False,
                          plots=False)
    s = score_live(run, tiny_config(), options, num_classes=4)["overall"][LIVE_METHOD]
    assert s["rejected"] == len(BAD_FRAMES)
    assert s["processed"] + s["dropped"] + s["rejected"] == FLAWED_FRAMES - 2
    assert s["processed"] >= 1 and s["miou"] is not None and s["fps"] > 0


def test_live_scoring_follows_a_resolution_change(tmp_path: Path) -> None:
    """Answers of two sizes on consecutive frames: no mVC window spans the change (the
    metric would refuse frames of two sizes)."""
    stamps = list(range(24))
    labels = {s: np.zeros((4, 4) if s < 12 else (2, 2), np.int64) for s in stamps}
    run = LiveRun(tmp_path / "bag", stamps, None, labels, {}, 4, 4, wall_s=1.0)
    options = EvalOptions(output=tmp_path / "out", warmup_frames=2, progress=False,
                          plots=False)
    report = score_live(run, tiny_config(), options, num_classes=4)
    result = json.loads((tmp_path / "out" / "videos" / "bag.json").read_text())
    # 10 + 12 frames: windows of 8 start at 0..1 and 0..3 -> 2 + 4, not 22 - 8 = 14.
    assert result["methods"][LIVE_METHOD]["consistency"]["8"]["count"] == 6
    assert report["overall"][LIVE_METHOD]["processed"] == 22
