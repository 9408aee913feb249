"""Scene-change detector (ditta_ros.engine.scene): the signals, and cuts / drifts / silence
on synthetic multi-scene streams (ground-truth labels stand in for the served labels)."""

from __future__ import annotations

import numpy as np
import pytest

from ditta_ros.config import StreamConfig
from ditta_ros.engine.scene import (
    SceneDetector,
    SceneSignal,
    appearance,
    class_distribution,
    total_variation,
)
from ditta_ros.errors import InputError
from ditta_ros.synthetic import SceneStream, SyntheticVideo

H, W, C = 64, 96, 4


def _scenes(*seeds: int) -> tuple[SyntheticVideo, ...]:
    return tuple(SyntheticVideo(H, W, C, 3, seed=s) for s in seeds)


def _run(stream: SceneStream, config: StreamConfig | None = None) -> list[SceneSignal]:
    detector = SceneDetector(config or StreamConfig(), C)
    signals = []
    for item in stream:
        cut = detector.before(item.image)
        signal = detector.after(item.labels)
        assert signal.cut is cut
        signals.append(signal)
    return signals


def test_signals_are_distributions_and_distances_known_by_construction() -> None:
    black = np.zeros((48, 80, 3), np.uint8)
    white = np.full((48, 80, 3), 255, np.uint8)
    for frame in (black, white):
        look = appearance(frame)
        assert look.shape == (64,) and look.sum() == pytest.approx(1.0)
        assert look.max() == 1.0                      # one colour: one bin
    assert total_variation(appearance(black), appearance(black)) == 0.0
    assert total_variation(appearance(black), appearance(white)) == 1.0
    half = np.concatenate([black[:, :40], white[:, 40:]], axis=1)
    assert total_variation(appearance(half), appearance(black)) == pytest.approx(0.5)
    labels = np.zeros((64, 64), np.int64)
    labels[:, 48:] = 2
    labels[0, 0] = 9                                   # beyond the class count: not counted
    np.testing.assert_allclose(class_distribution(labels, 3), [0.75, 0.0, 0.25], atol=1e-3)
    with pytest.raises(InputError):
        appearance(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError):
        class_distribution(-np.ones((8, 8), np.int64), 3)


def test_every_hard_cut_is_found_on_the_first_frame_of_the_new_scene() -> None:
    stream = SceneStream(_scenes(11, 12, 13), (40, 40, 40))
    signals = _run(stream)
    found = [i for i, s in enumerate(signals) if s.cut]
    assert found == list(stream.cuts)                 # delay 0, nothing else flagged
    assert all(s.cut_distance is not None and s.cut_distance > 0.6
               for s in (signals[c] for c in stream.cuts))


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_a_long_single_scene_raises_nothing(seed: int) -> None:
    stream = SceneStream(_scenes(seed), (400,))
    signals = _run(stream)
    assert not any(s.cut or s.drift for s in signals)
    measured = [s for s in signals if s.appearance_drift is not None]
    assert len(measured) > 350                         # the drift was measured, and stayed low
    assert max(s.cut_distance or 0.0 for s in signals) < StreamConfig().cut_threshold / 2


def test_a_dissolve_is_a_drift_not_a_cut() -> None:
    stream = SceneStream(_scenes(31, 32), (40, 60), fade=30)
    signals = _run(stream)
    assert not any(s.cut for s in signals)
    drifted = [i - stream.cuts[0] for i, s in enumerate(signals) if s.drift]
    assert drifted and 0 <= drifted[0] <= 20           # within 20 frames of the fade's start
    assert not any(s.drift for s in signals[:stream.cuts[0]])


def test_rebase_makes_the_current_scene_the_reference() -> None:
    stream = SceneStream(_scenes(41, 42), (30, 60))
    detector = SceneDetector(StreamConfig(), C)
    drift_after_cut = rebased_drift = False
    for i, item in enumerate(stream):
        detector.before(item.image)
        if i == stream.cuts[0] + 20:
            detector.rebase()
        signal = detector.after(item.labels)
        if stream.cuts[0] < i < stream.cuts[0] + 20:
            drift_after_cut |= signal.drift
        if i >= stream.cuts[0] + 20:
            rebased_drift |= signal.drift
    assert drift_after_cut and not rebased_drift


def test_after_without_before_is_an_error() -> None:
    with pytest.raises(ValueError):
        SceneDetector(StreamConfig(), C).after(np.zeros((4, 4), np.int64))
