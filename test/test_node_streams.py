"""Streams through the node (issue 13): a cut in the camera stream starts a second adaptation
on its own; ~/status says why and counts, and labels keep flowing while it runs.

Real rclpy and DDS, the tiny SegFormer, the oracle teacher (gated, so that the second
adaptation can be held in stage B while frames go on), two synthetic scenes joined by a
hard cut, frames stamped one second apart (the policy's cooldown runs on those stamps).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from fixtures_node import TINY_PARAMS, harness
from fixtures_stream import OracleTeacher, tiny_model

from ditta_ros.engine.session import Session
from ditta_ros.engine.types import Targets
from ditta_ros.ros.node import LoadedSession
from ditta_ros.synthetic import SceneStream, SyntheticVideo

H, W, C = 64, 96, 4
FIRST_SCENE = 15          # frames; the cut is at frame 15, stamp 1015 s (cooldown 10 s)
WAIT = 60.0


class GatedOracle(OracleTeacher):
    """The oracle teacher, held in stage B while its gate is clear; ``entered[i]`` is set
    when call i (0-based) reaches stage B."""

    def __init__(self, frames: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.hold = threading.Event()
        super().__init__([], 0, frames=frames, gate=self.hold)
        self.entered = [threading.Event() for _ in range(4)]

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray, cancel: threading.Event | None = None) -> Targets:
        self.entered[min(self.calls, 3)].set()
        return super().targets(frames, labels, reliability, cancel)


def test_a_cut_re_adapts_and_status_follows_while_labels_flow() -> None:
    scenes = tuple(SyntheticVideo(H, W, C, 3, seed=s) for s in (11, 12))
    stream = SceneStream(scenes, (FIRST_SCENE, 20))
    teacher = GatedOracle([(f.image, f.labels) for f in stream])
    teacher.hold.set()

    def factory(config: Any, on_status: Any) -> LoadedSession:
        model = tiny_model(config)
        return LoadedSession(Session(model, teacher, config, on_status), model.num_classes)

    params = dict(TINY_PARAMS, **{"stream.policy": "on_scene_change"})
    with harness(params, factory=factory) as h:
        def feed(frames: range) -> None:
            for t in frames:
                before = len(h.topics["labels"].items)
                h.send(t, image=stream.frame(t).image)
                h.wait_labels(before + 1, WAIT)

        feed(range(3))                                   # the start-up warm-up
        h.wait_phase("adapted", WAIT)
        first = h.latest_status()
        assert (first.adaptation_reason, first.adaptations_started,
                first.adaptations_completed, first.scene_cuts) == ("startup", 1, 1, 0)
        teacher.hold.clear()                              # hold the next adaptation in B
        feed(range(3, FIRST_SCENE))
        assert h.latest_status().scene_cuts == 0         # no false cut in the first scene

        seen = len(h.topics["status"].items)
        feed(range(FIRST_SCENE, FIRST_SCENE + 3))        # the cut, then a new warm-up
        warmup = h.wait_phase("warmup", WAIT, after=seen)
        assert (warmup.adaptation_reason, warmup.scene_cuts) == ("cut", 1)
        assert warmup.serving == "adapted"               # the first adaptation serves on
        assert teacher.entered[1].wait(WAIT), "the second adaptation never reached stage B"

        labels_before = len(h.topics["labels"].items)
        feed(range(FIRST_SCENE + 3, FIRST_SCENE + 8))    # labels flow during stage B
        assert len(h.topics["labels"].items) == labels_before + 5
        running = h.latest_status()
        assert (running.phase_label, running.stage, running.serving) == ("adapting", "B",
                                                                          "adapted")
        assert (running.adaptation_reason, running.adaptations_started,
                running.adaptations_completed, running.scene_cuts) == ("cut", 2, 1, 1)

        seen = len(h.topics["status"].items)
        teacher.hold.set()
        h.wait_phase("adapted", WAIT, after=seen)
        feed(range(FIRST_SCENE + 8, FIRST_SCENE + 10))
        done = h.latest_status()
        assert (done.adaptation_reason, done.adaptations_started, done.adaptations_completed,
                done.scene_cuts, done.consecutive_failures) == ("cut", 2, 2, 1, 0)
        assert done.frames_processed == FIRST_SCENE + 10 and done.frames_dropped == 0

        def reports_both(items: list[Any]) -> bool:
            values = [{kv.key: kv.value for kv in m.status[0].values} for m in items if m.status]
            return any(v.get("adaptations_started") == "2" and v.get("scene_cuts") == "1"
                       for v in values)
        assert h.topics["diagnostics"].wait_for(reports_both, WAIT), "/diagnostics lags"
