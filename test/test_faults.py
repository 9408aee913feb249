"""Adaptation faults over real DDS: a teacher that raises, targets that make stage C fail, an
optimiser step that raises, and out-of-memory errors (torch's and the host's). Each time the
node reports FAILED on ~/status with the reason in ``message`` (and WARN on /diagnostics),
keeps serving ISS labels for new frames, and a later ~/adapt with a working teacher adapts.

Tiny real SegFormer, ground-truth teacher wrapped to fail on demand; the optimiser failure
goes through torch's documented global hook (``register_optimizer_step_pre_hook``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from fixtures_faults import FAST_PARAMS, one_torch_thread  # noqa: F401
from fixtures_node import Harness, harness, ros_args, ros_context, stamp_key
from fixtures_stream import NUM_CLASSES, OracleTeacher, make_video, tiny_model
from rclpy.executors import MultiThreadedExecutor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ditta_ros.engine.session import Session
from ditta_ros.engine.types import Targets
from ditta_ros.ros.node import DittaNode, LoadedSession, run


class FaultyTeacher:
    """The ground-truth teacher, but each queued fault is played once, one per call:
    an exception to raise, or a function that spoils the oracle's targets."""

    def __init__(self, oracle: OracleTeacher) -> None:
        self.oracle = oracle
        self.faults: list[BaseException | Callable[[Targets], Targets]] = []
        self.calls = 0

    def targets(self, frames: Sequence[np.ndarray], labels: np.ndarray,
                reliability: np.ndarray, cancel: threading.Event | None = None) -> Targets:
        self.calls += 1
        fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, BaseException):
            raise fault
        targets = self.oracle.targets(frames, labels, reliability, cancel)
        return fault(targets) if fault is not None else targets


def faulty_factory(teacher: FaultyTeacher) -> Any:
    def factory(config: Any, on_status: Any) -> LoadedSession:
        model = tiny_model(config)
        return LoadedSession(Session(model, teacher, config, on_status), model.num_classes)
    return factory


def classes_out_of_range(targets: Targets) -> Targets:
    """Targets whose voted classes the model does not have: stage C refuses them."""
    return Targets(targets.object_ids, targets.ids, targets.classes + NUM_CLASSES + 100,
                   targets.scores)


@contextmanager
def no_fault() -> Iterator[None]:
    yield


@contextmanager
def optimiser_step_fails_once() -> Iterator[None]:
    """Every torch optimiser's next step() raises once (a global hook, removed afterwards)."""
    armed = [True]

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise RuntimeError("injected optimiser step failure")

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def label_pixels(msg: Any) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


FAULTS = [
    pytest.param(RuntimeError("injected teacher failure"), no_fault,
                 "RuntimeError: injected teacher failure", id="teacher-raises"),
    pytest.param(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                 no_fault, "OutOfMemoryError: CUDA out of memory", id="torch-out-of-memory"),
    pytest.param(MemoryError("injected host out of memory"), no_fault,
                 "MemoryError: injected host out of memory", id="host-out-of-memory"),
    pytest.param(classes_out_of_range, no_fault, "InputError: labels must lie in [0, 4)",
                 id="stage-c-rejects-targets"),
    pytest.param(None, optimiser_step_fails_once, "RuntimeError: injected optimiser step failure",
                 id="optimiser-step-raises"),
]


def check_serves_iss_after_failure(h: Harness, reason: str, first_labels: np.ndarray) -> None:
    """FAILED with the reason, WARN on /diagnostics, ISS labels for new frames."""
    failed = h.wait_phase("failed")
    assert reason in failed.message, failed.message
    assert failed.serving == "iss" and failed.adaptations_completed == 0
    headers = h.feed(range(3, 5))                        # new frames still get labels
    before = len(h.topics["labels"].items)
    again = h.send(50, image=h.video.frame(0).image)     # frame 0 again, a new stamp
    labels = h.wait_labels(before + 1)
    assert [stamp_key(m.header) for m in labels[-3:]] == [stamp_key(x) for x in
                                                          (*headers, again)]
    # the base model serves: the same labels as frame 0 got during the warm-up
    np.testing.assert_array_equal(label_pixels(labels[-1]), first_labels)
    status = h.latest_status()
    assert (status.phase_label, status.serving) == ("failed", "iss")
    assert reason in status.message
    assert h.topics["diagnostics"].wait_for(lambda items: any(
        m.status[0].level == DiagnosticStatus.WARN and reason in m.status[0].message
        for m in items), 10.0)


def adapt_again(h: Harness, frames: range) -> None:
    """~/adapt, then a new warm-up of working-teacher frames ends in ADAPTED."""
    seen = len(h.topics["status"].items)
    reply = h.call("adapt")
    assert reply.success, reply.message
    h.wait_phase("warmup", after=seen)
    h.feed(frames)
    h.wait_phase("adapted", after=seen)
    h.feed(range(frames.stop, frames.stop + 1))
    status = h.latest_status()
    assert (status.phase_label, status.serving) == ("adapted", "adapted")
    assert status.adaptations_completed >= 1 and status.frames_rejected == 0


@pytest.mark.parametrize("fault, context, reason", FAULTS)
def test_failed_adaptation_serves_iss_and_adapt_recovers(
        fault: Any, context: Callable[[], Any], reason: str) -> None:
    video = make_video()
    teacher = FaultyTeacher(OracleTeacher([video], 60))
    if fault is not None:
        teacher.faults.append(fault)
    with context(), harness(FAST_PARAMS, faulty_factory(teacher), video) as h:
        h.feed(range(3))                                 # the warm-up: adaptation starts
        first = label_pixels(h.topics["labels"].snapshot()[0])
        check_serves_iss_after_failure(h, reason, first)
        assert teacher.calls == 1                        # FAILED does not retry by itself
        adapt_again(h, range(5, 8))
    assert teacher.calls == 2
    phases = h.phases()
    assert phases.index("failed") < len(phases) - 1 - phases[::-1].index("adapted")


def test_failed_re_adaptation_drops_the_old_adaptation_for_iss() -> None:
    """Adapted, then ~/adapt whose adaptation runs out of memory: the ISS model serves (not
    the previous adaptation), and the next ~/adapt adapts again."""
    video = make_video()
    teacher = FaultyTeacher(OracleTeacher([video], 60))
    with harness(FAST_PARAMS, faulty_factory(teacher), video) as h:
        h.feed(range(3))
        first = label_pixels(h.topics["labels"].snapshot()[0])
        h.wait_phase("adapted")
        teacher.faults.append(torch.OutOfMemoryError("CUDA out of memory (re-adaptation)"))
        seen = len(h.topics["status"].items)
        assert h.call("adapt").success
        h.wait_phase("warmup", after=seen)
        h.feed(range(8, 10))
        assert h.latest_status().serving == "adapted"    # the old adaptation serves meanwhile
        h.feed(range(10, 11))                            # warm-up complete: adaptation fails
        h.wait_phase("failed", after=seen)
        status = h.latest_status()
        assert status.adaptations_completed == 1 and status.serving == "iss"
        before = len(h.topics["labels"].items)
        h.send(51, image=h.video.frame(0).image)
        np.testing.assert_array_equal(label_pixels(h.wait_labels(before + 1)[-1]), first)
        adapt_again(h, range(12, 15))
        assert h.latest_status().adaptations_completed == 2
    assert teacher.calls == 3


class InterruptedNode(DittaNode):
    """A node whose activation is cut short by Ctrl-C, as when SIGINT arrives while
    autostart activates it: the lifecycle state machine stays mid-transition."""

    def on_activate(self, state: Any) -> Any:
        super().on_activate(state)
        raise KeyboardInterrupt


def test_ctrl_c_during_autostart_activation_exits_cleanly() -> None:
    """run() must not raise when shutdown is refused mid-transition (rclpy raises RCLError
    'Shutdown transtion not possible'); everything configure loaded is released."""
    video = make_video()
    teacher = FaultyTeacher(OracleTeacher([video], 5))
    with ros_context(ros_args({**FAST_PARAMS, "autostart": True})) as context:
        node = InterruptedNode(session_factory=faulty_factory(teacher), context=context)
        run(node, MultiThreadedExecutor(context=context))   # returns: no exception escapes
        assert node._session is None and not node._data_path.running and not node._out_pubs


def test_a_failed_adaptation_is_one_warn_line_in_rosout_without_traceback(capfd: Any) -> None:
    """An expected failure (stage C refuses the targets: an InputError) is one WARN line with
    the reason, on /rosout too; its traceback only at DEBUG (not shown by default). Every
    phase change is one INFO line."""
    from fixtures_node import RELIABLE, Collector
    from rcl_interfaces.msg import Log

    video = make_video()
    teacher = FaultyTeacher(OracleTeacher([video], 60))
    teacher.faults.append(classes_out_of_range)
    with harness(FAST_PARAMS, faulty_factory(teacher), video) as h:
        rosout = Collector()
        h.client.create_subscription(Log, "/rosout", rosout, RELIABLE)
        h.feed(range(3))
        h.wait_phase("failed")
        assert rosout.wait_for(lambda items: any(
            m.name == "ditta_node" and m.level == Log.WARN
            and "phase ADAPTING -> FAILED: adaptation failed: InputError" in m.msg
            for m in items), 10.0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "ditta_node" in line]
    assert sum("-> FAILED" in line for line in lines) == 1
    assert any("[INFO]" in line and "phase WARMUP -> ADAPTING" in line for line in lines)
    assert "Traceback" not in err and "[ERROR]" not in err
