"""The adaptation worker on its own (ditta_ros.engine.adaptation_worker): the queue of length
one, dropped generations that never reach the session, one run at a time, the lock each hook
is called under, and the progress bookkeeping. Tiny seeded SegFormer, oracle teacher, 64 x 96
synthetic frames; the session's side (phases, serving) is in test_session*.py."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from fixtures_stream import OracleTeacher, frames_of, make_video, tiny_config, tiny_model

from ditta_ros.engine.adaptation_worker import AdaptationProgress, AdaptationWorker, WorkerHooks
from ditta_ros.engine.types import StepLosses, Targets
from ditta_ros.engine.warmup import NO_OBJECT, StageStart

WAIT = 60.0


class OwnedLock:
    """A plain Lock that remembers which thread holds it (threading.Condition works on it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking, timeout):
            self.owner = threading.get_ident()
            return True
        return False

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Recorder:
    """The session's side of the hooks: records every call and whether the calling thread
    held the state lock, as WorkerHooks documents it must (or must not)."""

    def __init__(self, lock: OwnedLock) -> None:
        self._lock = lock
        self.messages: list[str | None] = []
        self.adapted: list[int] = []
        self.failures: list[str] = []
        self.wrong_lock: list[str] = []
        self.done = threading.Event()              # a job was handed over or failed
        self.fail_hand_over: Exception | None = None

    def _held(self, hook: str, expected: bool) -> None:
        if (self._lock.owner == threading.get_ident()) != expected:
            self.wrong_lock.append(hook)

    def progress_locked(self, message: str | None) -> None:
        self._held("progress_locked", True)
        self.messages.append(message)

    def on_adapted(self, generation: int, model: Any) -> None:
        self._held("adapted", False)
        if self.fail_hand_over is not None:
            raise self.fail_hand_over
        self.adapted.append(generation)
        self.done.set()

    def failed_locked(self, reason: str) -> None:
        self._held("failed_locked", True)
        self.failures.append(reason)
        self.done.set()

    def flush(self) -> None:
        self._held("flush", False)

    def hooks(self) -> WorkerHooks:
        return WorkerHooks(self.progress_locked, self.on_adapted, self.failed_locked,
                           self.flush)


class CountingTeacher(OracleTeacher):
    """The oracle that counts the runs inside stage B at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside = 0
        self.most_inside = 0
        self._count = threading.Lock()

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray, cancel: threading.Event | None = None) -> Targets:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            return super().targets(frames, labels, reliability, cancel)
        finally:
            with self._count:
                self.inside -= 1


def _worker(teacher: OracleTeacher, warmup: int = 3
            ) -> tuple[AdaptationWorker, Recorder, threading.Condition]:
    config = tiny_config(warmup_frames=warmup)
    lock = OwnedLock()
    cond = threading.Condition(lock)   # type: ignore[arg-type]  # a Lock with an owner
    recorder = Recorder(lock)
    return AdaptationWorker(tiny_model(config), teacher, config, cond, recorder.hooks()), \
        recorder, cond


def _close(worker: AdaptationWorker, cond: threading.Condition) -> None:
    with cond:
        worker.drop_locked()
        thread = worker.close_locked()
    if thread is not None:
        thread.join(WAIT)
        assert not thread.is_alive()


def test_a_job_hands_over_its_model_with_progress_reported_under_the_lock() -> None:
    video = make_video(11)
    worker, recorder, cond = _worker(OracleTeacher([video], 3))
    try:
        with cond:
            worker.submit_locked(frames_of(video, 3))
            assert (worker.progress.steps_total, worker.progress.steps_done) == (3, 0)
        assert recorder.done.wait(WAIT)
        assert recorder.adapted == [1] and recorder.failures == []
        assert recorder.messages[:3] == ["stage A: ISS labels on the warm-up",
                                         "stage B: running the teacher",
                                         "stage C: adapting with 4 objects"]
        assert [m.split(",")[0] for m in recorder.messages[3:] if m] == \
            [f"adapting: step {i}/3" for i in (1, 2, 3)]
        with cond:
            fields = worker.progress.status_fields()
        assert fields["steps_done"] == 3 and fields["num_objects"] == 4
        assert set(fields["stage_seconds"]) == {"A", "B", "C"}
        assert fields["stage"] == "C"      # until the session's swap calls progress.ended()
    finally:
        _close(worker, cond)
    assert recorder.wrong_lock == []


def test_a_newer_job_replaces_a_queued_one_and_a_dropped_run_never_reaches_the_session(
        ) -> None:
    video = make_video(12)
    teacher = CountingTeacher([video], 6, gate=threading.Event())
    worker, recorder, cond = _worker(teacher)
    try:
        with cond:                         # two submits before the thread can take one
            worker.submit_locked(frames_of(video, 3))
            worker.submit_locked(frames_of(video, 3, start=3))
        assert teacher.started.wait(WAIT)  # generation 2 is inside stage B, at the gate
        teacher.started.clear()
        with cond:                         # drop it and queue generation 4 at once
            worker.drop_locked()
            assert worker.progress.steps_total == 0 and worker.progress.stage == ""
            worker.submit_locked(frames_of(video, 3))
        assert teacher.started.wait(WAIT)  # 4 starts only after the cancelled 2 returned
        assert teacher.gate is not None
        teacher.gate.set()
        assert recorder.done.wait(WAIT)
        assert recorder.adapted == [4] and recorder.failures == []
        assert teacher.calls == 2 and teacher.most_inside == 1
        with cond:
            assert worker.current_locked(4) and not worker.current_locked(2)
            assert worker.progress.superseded_error == ""     # a cancel is no failure
    finally:
        _close(worker, cond)
    assert recorder.wrong_lock == []


def test_failures_of_the_current_run_and_of_the_hand_over_reach_failed_locked() -> None:
    video = make_video(13)
    worker, recorder, cond = _worker(OracleTeacher([video], 3, empty=True))
    try:
        with cond:
            worker.submit_locked(frames_of(video, 3))
        assert recorder.done.wait(WAIT)
        assert recorder.failures == [f"AdaptationError: {NO_OBJECT}"]
        with cond:
            assert worker.progress.stage == "" and set(worker.progress.stage_seconds) == \
                {"A", "B"}
    finally:
        _close(worker, cond)

    worker, recorder, cond = _worker(OracleTeacher([video], 3))
    recorder.fail_hand_over = MemoryError("no room for the predictor")
    try:
        with cond:
            worker.submit_locked(frames_of(video, 3))
        assert recorder.done.wait(WAIT)
        assert recorder.adapted == []
        assert recorder.failures == ["MemoryError: no room for the predictor"]
    finally:
        _close(worker, cond)
    assert recorder.wrong_lock == []


def test_after_close_the_thread_ends_and_nothing_more_is_queued() -> None:
    video = make_video(14)
    teacher = OracleTeacher([video], 3, gate=threading.Event())   # never opened
    worker, recorder, cond = _worker(teacher)
    with cond:
        assert worker.close_locked() is None   # no job yet: no thread to join
    _close(worker, cond)
    with cond:
        worker.submit_locked(frames_of(video, 3))
        assert worker.close_locked() is None   # ignored once closed
    assert teacher.calls == 0 and recorder.messages == []


def _losses(step: int, total: float) -> StepLosses:
    return StepLosses(iteration=0, frame=step, step=step, total_steps=4, distill=total,
                      distill_addon=None, contrastive=None, total=total)


def test_progress_counts_from_start_and_clear_keeps_objects_and_times() -> None:
    progress = AdaptationProgress()
    progress.start(total_steps=4)
    assert progress.stage_started(StageStart("A", {}, None)) == \
        "stage A: ISS labels on the warm-up"
    assert progress.stage_started(StageStart("C", {"A": 1.0, "B": 2.0}, 5)) == \
        "stage C: adapting with 5 objects"
    assert progress.step(_losses(1, 0.25)) == "adapting: step 2/4, loss 0.2500"
    fields = progress.status_fields()
    assert (fields["stage"], fields["steps_done"], fields["steps_total"]) == ("C", 2, 4)
    assert fields["num_objects"] == 5 and fields["last_losses"].total == 0.25
    fields["stage_seconds"]["A"] = -1.0                # a snapshot, not the live dict
    assert progress.stage_seconds == {"A": 1.0, "B": 2.0}
    progress.clear()
    fields = progress.status_fields()
    assert (fields["stage"], fields["steps_done"], fields["steps_total"]) == ("", 0, 0)
    assert fields["last_losses"] is None
    assert fields["num_objects"] == 5 and fields["stage_seconds"] == {"A": 1.0, "B": 2.0}
    progress.start(total_steps=6)
    assert (progress.num_objects, progress.stage_seconds, progress.steps_total) == (0, {}, 6)
