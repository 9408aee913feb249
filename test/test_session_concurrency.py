"""One adaptation at a time: ~/adapt and ~/reset fired during stages A, B and C, many times.

The teacher is stateful, as SAM2's is: a PropagationTeacher on a propagator whose clips are
explicit handles, that counts the clips alive at once and refuses a released handle. A
second thread (the test's main thread, as a service callback would be) requests a new
adaptation or resets while the adaptation thread is inside stage A (the ISS model's
classifier runs), stage B (the propagator tracks) or stage C (the adapted copy's classifier
runs); the adaptation thread waits at that point until the request has been made, so each
request lands in the stage it targets. The run ends with exactly one completed adaptation,
equal bit for bit to an undisturbed session's. Tiny seeded SegFormer, 64 x 96 frames.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fixtures_stream import NUM_CLASSES, frames_of, make_video, sharpen, tiny_config, tiny_model
from fixtures_teacher import OracleClip, OraclePropagator

from ditta_ros.config import TeacherConfig
from ditta_ros.engine.checkpoints import load_adaptation
from ditta_ros.engine.session import Session
from ditta_ros.engine.teacher import PropagationTeacher
from ditta_ros.engine.types import ObjectMasks, Phase, Reason, SessionStatus

WAIT = 60.0
WARMUP = 3


class StatefulPropagator(OraclePropagator):
    """The oracle with clip bookkeeping: clips alive now and at most, and a hook called on
    every propagation (stage B at work on its clip)."""

    def __init__(self, instances: np.ndarray) -> None:
        super().__init__(instances)
        self.alive = 0
        self.most_alive = 0
        self.on_propagate: Any = None
        self._count = threading.Lock()

    def start(self, frames: Sequence[np.ndarray]) -> OracleClip:
        with self._count:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
        return super().start(frames)

    def propagate(self, clip: OracleClip, frame: int, reverse: bool) -> ObjectMasks:
        if self.on_propagate is not None:
            self.on_propagate()
        return super().propagate(clip, frame, reverse)   # raises on a released clip

    def release(self, clip: OracleClip) -> None:
        with self._count:
            self.alive -= 1
        super().release(clip)


class Disturber:
    """Holds the adaptation thread at the targeted stage until the main thread has fired."""

    def __init__(self, session_ref: list[Session]) -> None:
        self._session = session_ref
        self.target = ""                      # the stage to disturb in this round
        self.reached = threading.Event()      # the adaptation thread is in the target stage
        self.fired = threading.Event()        # the main thread has requested / reset
        self.seen_in: list[str] = []

    def checkpoint(self) -> None:
        """Called from model and propagator hooks; acts once per round, in the target."""
        if threading.current_thread().name != "ditta-adaptation" or not self.target:
            return
        stage = self._session[0].status().stage
        if stage != self.target:
            return
        self.seen_in.append(stage)
        self.target = ""
        self.reached.set()
        assert self.fired.wait(WAIT), "the main thread never fired"


def _teacher(video: Any) -> tuple[PropagationTeacher, StatefulPropagator]:
    instances = np.stack([video.frame(t).labels + 1 for t in range(WARMUP)])
    propagator = StatefulPropagator(instances)
    config = TeacherConfig(reliability_threshold=0.0)
    return PropagationTeacher(propagator, config, num_classes=NUM_CLASSES), propagator


def _adaptation_state(session: Session, model: Any, path: Path) -> dict[str, torch.Tensor]:
    session.save_adaptation(path)
    adapted = copy.deepcopy(model)
    load_adaptation(adapted, path)
    return adapted.adaptation_state()


def test_requests_and_resets_in_every_stage_end_in_one_adaptation_equal_to_an_undisturbed_one(
        tmp_path: Path) -> None:
    config = tiny_config(warmup_frames=WARMUP, iterations=2)
    video = make_video(7)
    warm = frames_of(video, WARMUP)

    # The undisturbed reference.
    reference_model = sharpen(tiny_model(config))
    teacher, _ = _teacher(video)
    with Session(reference_model, teacher, config) as undisturbed:
        for frame in warm:
            undisturbed.push(frame)
        assert undisturbed.wait_for_phase({Phase.ADAPTED, Phase.FAILED}, WAIT)
        assert undisturbed.status().phase is Phase.ADAPTED, undisturbed.status().message
        expected = _adaptation_state(undisturbed, reference_model, tmp_path / "ref.pt")

    model = sharpen(tiny_model(config))
    teacher, propagator = _teacher(video)
    statuses: list[SessionStatus] = []
    ref: list[Session] = []
    disturber = Disturber(ref)
    hook = model.iss.model.decode_head.classifier.register_forward_pre_hook(
        lambda *_: disturber.checkpoint())        # stage A (ISS model) and C (its copy)
    propagator.on_propagate = disturber.checkpoint                               # stage B
    session = Session(model, teacher, config, statuses.append)
    ref.append(session)
    plan = [(stage, action) for _ in range(2) for stage in ("A", "B", "C")
            for action in ("adapt", "reset")]
    try:
        for stage, action in plan:
            disturber.reached.clear()
            disturber.fired.clear()
            disturber.target = stage
            for frame in warm:                   # the same warm-up every round
                session.push(frame)
            assert disturber.reached.wait(WAIT), f"stage {stage} never ran"
            (session.request_adaptation if action == "adapt" else session.reset)()
            disturber.fired.set()
        for frame in warm:                       # the last round is left alone
            session.push(frame)
        assert session.wait_for_phase({Phase.ADAPTED, Phase.FAILED}, WAIT)
        status = session.status()
        assert status.phase is Phase.ADAPTED, status.message
        got = _adaptation_state(session, model, tmp_path / "got.pt")
    finally:
        session.close()
        hook.remove()
    assert disturber.seen_in == [stage for stage, _ in plan]     # each landed in its stage
    assert status.adaptations_done == 1
    assert status.superseded_error == ""          # cancelled runs are not failures
    assert propagator.most_alive == 1 and propagator.alive == 0
    assert set(expected) == set(got)
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    stages = [s.stage for s in statuses if s.phase is Phase.ADAPTING and s.stage]
    assert {"A", "B", "C"} <= set(stages)
    assert [s.phase for s in statuses].count(Phase.ADAPTED) == 1


def test_a_superseded_run_that_fails_is_reported() -> None:
    config = tiny_config(warmup_frames=2)
    video = make_video(8)
    frames = frames_of(video, 2)
    release = threading.Event()
    entered = threading.Event()

    class FailingAfterRequest:
        calls = 0

        def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                    reliability: np.ndarray, cancel: threading.Event | None = None) -> Any:
            FailingAfterRequest.calls += 1
            entered.set()
            assert release.wait(WAIT)
            raise RuntimeError("teacher broke while being superseded")

    seen = threading.Condition()
    statuses: list[SessionStatus] = []

    def collect(status: SessionStatus) -> None:
        with seen:
            statuses.append(status)
            seen.notify_all()

    with Session(tiny_model(config), FailingAfterRequest(), config, collect) as s:
        for frame in frames:
            s.push(frame)
        assert entered.wait(WAIT)
        s.request_adaptation()                   # supersedes the run inside stage B
        release.set()
        with seen:
            assert seen.wait_for(lambda: any(st.superseded_error for st in statuses), WAIT)
        status = s.status()
        assert "teacher broke" in status.superseded_error
        assert status.phase is Phase.WARMUP      # the new warm-up is untouched
        assert FailingAfterRequest.calls == 1


def test_cuts_in_every_stage_take_the_same_path_as_a_request(tmp_path: Path) -> None:
    """Streams (issue 13): a cut while stage A, B or C runs cancels that adaptation through
    the one worker, as ~/adapt does; the stream then returns to the first scene (a cut
    again, restarting the warm-up), and the adaptation that completes equals an undisturbed
    run, with one clip alive at a time and no failure."""
    config = tiny_config(warmup_frames=WARMUP, iterations=2).replace(
        stream={"policy": "on_scene_change", "cooldown_s": 0.0})
    video, elsewhere = make_video(7), make_video(12)
    warm = frames_of(video, WARMUP)
    cut_to = elsewhere.frame(0).image            # another scene (appearance distance 0.76)

    reference_model = sharpen(tiny_model(config))
    teacher, _ = _teacher(video)
    with Session(reference_model, teacher, config) as undisturbed:
        for frame in warm:
            undisturbed.push(frame)
        assert undisturbed.wait_for_phase({Phase.ADAPTED, Phase.FAILED}, WAIT)
        expected = _adaptation_state(undisturbed, reference_model, tmp_path / "ref.pt")

    model = sharpen(tiny_model(config))
    teacher, propagator = _teacher(video)
    ref: list[Session] = []
    disturber = Disturber(ref)
    hook = model.iss.model.decode_head.classifier.register_forward_pre_hook(
        lambda *_: disturber.checkpoint())
    propagator.on_propagate = disturber.checkpoint
    session = Session(model, teacher, config)
    ref.append(session)
    stamp = 0.0
    try:
        for stage in ("A", "B", "C"):
            disturber.reached.clear()
            disturber.fired.clear()
            disturber.target = stage
            for frame in warm:                   # (after a round: a cut back, warm-up anew)
                stamp += 1.0
                session.push(frame, stamp=stamp)
            assert disturber.reached.wait(WAIT), f"stage {stage} never ran"
            stamp += 1.0
            result = session.push(cut_to, stamp=stamp)      # the cut, during the stage
            assert result.phase is Phase.WARMUP
            disturber.fired.set()
        for frame in warm:
            stamp += 1.0
            session.push(frame, stamp=stamp)
        assert session.wait_for_phase({Phase.ADAPTED, Phase.FAILED}, WAIT)
        status = session.status()
        assert status.phase is Phase.ADAPTED, status.message
        got = _adaptation_state(session, model, tmp_path / "got.pt")
    finally:
        session.close()
        hook.remove()
    assert disturber.seen_in == ["A", "B", "C"]
    assert (status.adaptations_done, status.adaptations_started) == (1, 4)
    assert (status.cuts, status.adaptation_reason) == (6, Reason.CUT)
    assert status.superseded_error == "" and status.consecutive_failures == 0
    assert propagator.most_alive == 1 and propagator.alive == 0
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
