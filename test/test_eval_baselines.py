"""The sam2-refine baseline (engine/baselines.py) with a ground-truth oracle tracker.

The oracle (fixtures_teacher.OraclePropagator) stands in for SAM2: a point selects the true
region under it and every frame returns that region, so what the baseline does with the
masks (prompt on frame 0, propagate, vote, render, fill with ISS) can be checked exactly.
The real-SAM2 path runs in test_eval.py.
"""

from __future__ import annotations

import numpy as np
from fixtures_stream import make_video, sharpen, tiny_config, tiny_model
from fixtures_teacher import OraclePropagator

from ditta_ros.engine.baselines import sam2_refine
from ditta_ros.engine.reliability import iss_labels

FRAMES, WARMUP = 6, 2


def _setup(threshold: float):  # type: ignore[no-untyped-def]
    video = make_video(seed=3)
    frames = [video.frame(t).image for t in range(FRAMES)]
    truth = np.stack([video.frame(t).labels for t in range(FRAMES)])
    config = tiny_config().replace(teacher={"reliability_threshold": threshold})
    model = sharpen(tiny_model(config))
    return video, frames, truth, config, model


def test_objects_from_frame_zero_fill_their_regions() -> None:
    _, frames, truth, config, model = _setup(threshold=0.0)
    oracle = OraclePropagator(truth + 1)            # one instance per true class region
    run = sam2_refine(model, oracle, frames, config, WARMUP)
    out = {f.index: f.labels for f in run}
    assert sorted(out) == list(range(WARMUP, FRAMES))
    # The call sequence: the whole video, points on frame 0 only, one forward step per frame.
    assert oracle.calls[0] == ("start", FRAMES)
    points = [c for c in oracle.calls if c[0] == "point"]
    assert points and all(c[1] == 0 for c in points)
    assert [c for c in oracle.calls if c[0] == "propagate"] == [
        ("propagate", t, False) for t in range(FRAMES - 1)]
    assert oracle.calls[-1] == ("release",) and ("reset",) not in oracle.calls
    assert run.summary.num_objects == len(points)
    iss, _ = iss_labels(model, frames, config.model, "cpu")
    tracked = {oracle._objects[c[2]] for c in points} - {0}     # instances = class + 1
    for t in range(WARMUP, FRAMES):
        covered = np.isin(truth[t] + 1, list(tracked))
        # outside every object: the ISS label, untouched
        np.testing.assert_array_equal(out[t][~covered], iss[t][~covered])
        # inside an object: one voted class for the whole region, the same on every frame
        for inst in tracked:
            region = truth[t] + 1 == inst
            if region.any():
                assert len(np.unique(out[t][region])) == 1
                assert out[t][region][0] == out[FRAMES - 1][truth[FRAMES - 1] + 1 == inst][0]
    assert run.summary.seconds > 0 and all(f >= 0 for f in run.summary.stage_seconds.values())


def test_no_prompt_keeps_iss_labels() -> None:
    _, frames, truth, config, model = _setup(threshold=1.0)
    oracle = OraclePropagator(truth + 1)
    run = sam2_refine(model, oracle, frames, config, WARMUP)
    iss, _ = iss_labels(model, frames, config.model, "cpu")
    for f in run:
        np.testing.assert_array_equal(f.labels, iss[f.index])
    assert "reliability threshold" in run.summary.reason
    assert oracle.calls == []                        # SAM2 never started
