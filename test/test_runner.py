"""Offline W2F runner (ditta_ros.engine.runner): warm-up length, adaptation on the prefix,
stage D on the rest with the cache primed by frame W_n - 1, and the no-object and ISS-only
paths. Tiny seeded SegFormer, oracle teacher, 64 x 96 synthetic frames."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
from fixtures_stream import OracleTeacher, frames_of, make_video, tiny_config, tiny_model

from ditta_ros.engine.fusion import clip_output
from ditta_ros.engine.reliability import iss_labels
from ditta_ros.engine.runner import run_w2f, warmup_length
from ditta_ros.engine.types import Source, StepLosses
from ditta_ros.errors import ConfigError, InputError


@pytest.mark.parametrize(("frames", "ratio", "expected"), [
    (100, 10, 10), (343, 10, 34), (19, 10, 1), (20, 10, 2), (5, 10, 1), (1, 50, 1),
    (7, 50, 3), (8, 25, 2), (10, 100, 10),
])
def test_warmup_length_is_integer_percent_at_least_one(frames: int, ratio: int,
                                                       expected: int) -> None:
    assert warmup_length(frames, ratio) == expected


def test_warmup_length_rejects_nonsense() -> None:
    with pytest.raises(InputError, match="at least one frame"):
        warmup_length(0, 10)
    with pytest.raises(ConfigError, match="percentage"):
        warmup_length(10, 0)


class CountingFrames(Sequence[np.ndarray]):
    """A lazily generated video that counts how often each frame is read."""

    def __init__(self, count: int, seed: int) -> None:
        self.video, self.count = make_video(seed), count
        self.reads = [0] * count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            raise TypeError("the runner must not slice a lazy video")
        self.reads[index] += 1
        return self.video.frame(index).image


def test_w2f_adapts_on_the_prefix_and_streams_the_rest_primed_by_the_last_warmup_frame(
) -> None:
    config = tiny_config(iterations=2).replace(adaptation={"warmup_ratio": 25})
    model = tiny_model(config)
    frames = CountingFrames(8, seed=1)
    teacher = OracleTeacher([frames.video], 8)
    steps: list[StepLosses] = []
    progress: list[tuple[str, int, int]] = []
    run = run_w2f(model, teacher, frames, config, on_step=steps.append,
                  progress=lambda *a: progress.append(a))
    s = run.summary
    assert (s.warmup, s.mode, s.adapted, s.fused, s.num_objects) == (2, "ditta", True, True, 4)
    assert len(steps) == 2 * 2 and [p for p in progress if p[0] == "C"][-1] == ("C", 4, 4)
    assert run.model is not model                # an adapted copy serves
    results = list(run)
    assert [r.index for r in results] == list(range(2, 8))
    assert all(r.source is Source.ADAPTED and r.fused for r in results)
    video = frames_of(frames.video, 8)
    for r in results:                            # frame 2's previous frame is warm-up frame 1
        clip = clip_output(run.model, video[r.index - 1], video[r.index], config.model,
                           config.fusion, "cpu", with_probs=True)
        expected = clip.labels.numpy()
        # Cached and pair evaluation agree up to float rounding (ALGORITHM.md, stage D; the
        # clip runs the network on a batch of 2; this random tiny model is nearly uniform, so
        # rounding also moves its fusion weights): labels may differ only at near ties.
        differ = r.labels != expected
        assert differ.mean() <= 0.001
        assert clip.probs is not None
        top2 = clip.probs.topk(2, dim=0).values.numpy()                    # (2, H, W)
        assert (top2[0] - top2[1])[differ].max(initial=0.0) < 1e-3
        assert r.labels.shape == (64, 96) and r.inference_s > 0
    assert frames.reads[2:] == [1] * 6           # each evaluated frame is loaded once
    assert set(s.stage_seconds) == {"A", "B", "C", "D"} and s.evaluated == 6
    assert s.inference_fps > 0 and progress[-1] == ("D", 6, 6)
    assert teacher.calls == 1


def test_w2f_without_any_object_serves_the_iss_model_unfused_and_says_why() -> None:
    config = tiny_config().replace(adaptation={"warmup_ratio": 25})
    model = tiny_model(config)
    video = frames_of(make_video(2), 8)
    run = run_w2f(model, OracleTeacher([make_video(2)], 8, empty=True), video, config)
    assert not run.summary.adapted and "no object" in run.summary.reason
    results = list(run)
    assert all(r.source is Source.ISS and not r.fused for r in results)
    baseline = list(run_w2f(model, None, video, config, iss_only=True))
    for got, want in zip(results, baseline):
        np.testing.assert_array_equal(got.labels, want.labels)


def test_w2f_iss_only_is_stage_a_on_the_evaluated_frames() -> None:
    config = tiny_config()
    model = tiny_model(config)
    video = frames_of(make_video(3), 5)
    run = run_w2f(model, None, video, config, warmup=2, iss_only=True)
    assert run.summary.mode == "iss_only" and not run.summary.adapted
    labels, _ = iss_labels(model, video[2:], config.model, "cpu")
    got = np.stack([r.labels for r in run])
    np.testing.assert_array_equal(got, labels)


def test_w2f_with_one_warmup_frame_fuses_the_untrained_addon_as_the_reference() -> None:
    config = tiny_config()
    model = tiny_model(config)
    video = frames_of(make_video(4), 3)
    run = run_w2f(model, OracleTeacher([make_video(4)], 3), video, config, warmup=1)
    assert run.summary.adapted and run.summary.fused and "W_n = 1" in run.summary.reason
    # MLP_q / MLP_k get no gradient on frame-0 steps: unchanged from the base model
    for p_adapted, p_base in zip(run.model.addon.parameters(), model.addon.parameters()):
        assert p_adapted.data.equal(p_base.data)
    results = list(run)
    assert [r.index for r in results] == [1, 2] and all(r.fused for r in results)


def test_w2f_rejects_bad_warmup_and_a_missing_teacher() -> None:
    config = tiny_config()
    model = tiny_model(config)
    video = frames_of(make_video(5), 3)
    with pytest.raises(InputError, match="warm-up length"):
        run_w2f(model, None, video, config, warmup=4, iss_only=True)
    with pytest.raises(ConfigError, match="teacher"):
        run_w2f(model, None, video, config)
