"""Time jumps and camera restarts over real DDS (docs/node.md, "Time jumps and resolution
changes"): a bag that loops (stamps go backwards) and a camera that changes resolution, in
the warm-up, during the adaptation and once adapted.

Documented behaviour under test: every frame is served and its outputs carry its header
unchanged, at its own resolution. A backwards stamp is processed as usual, logged
(rate-limited) and counted (/diagnostics ``stamp_jumps_back``); it neither restarts the
warm-up nor drops the adaptation. A new resolution restarts a running warm-up at the new
size, lets a running adaptation go on, and leaves an adapted model serving.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from fixtures_faults import FAST_PARAMS, one_torch_thread  # noqa: F401
from fixtures_node import Harness, harness
from fixtures_stream import OracleTeacher, make_video, tiny_model
from std_msgs.msg import Header

from ditta_ros.engine.session import Session
from ditta_ros.ros.image import array_to_image
from ditta_ros.ros.node import LoadedSession
from ditta_ros.synthetic import SyntheticVideo

SMALL = (48, 80)         # the camera's second resolution (height, width)


def factory_for(videos: list[SyntheticVideo], gate: threading.Event | None = None) -> Any:
    teacher = OracleTeacher(videos, 20, gate=gate)

    def factory(config: Any, on_status: Any) -> LoadedSession:
        model = tiny_model(config)
        return LoadedSession(Session(model, teacher, config, on_status), model.num_classes)
    return factory


def send(h: Harness, image: np.ndarray, sec: int, nanosec: int = 0) -> Header:
    """Publish ``image`` stamped (sec, nanosec) and wait for its labels; checks that they
    carry the input's header unchanged and the image's own size."""
    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    before = len(h.topics["labels"].items)
    h.image_pub.publish(array_to_image(image, "bgr8", header))
    label = h.wait_labels(before + 1)[-1]
    assert (label.header.stamp.sec, label.header.stamp.nanosec) == (sec, nanosec)
    assert label.header.frame_id == "camera_optical"
    assert (label.height, label.width) == image.shape[:2]
    return header


def one_adaptation(phases: list[str]) -> bool:
    """The phase sequence (repeats collapsed) holds one adaptation, and no failure."""
    changes = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    return changes.count("adapting") == 1 and changes[-1] == "adapted" and "failed" not in changes


def diagnostic(h: Harness, key: str, value: str) -> None:
    assert h.topics["diagnostics"].wait_for(lambda items: any(
        kv.key == key and kv.value == value for m in items for kv in m.status[0].values),
        10.0), f"/diagnostics never reported {key} = {value}"


def test_looping_bag_is_served_in_warmup_and_when_adapted(capfd) -> None:
    video = make_video()
    params = {**FAST_PARAMS, "adaptation.warmup_frames": 4}
    bag = [(video.frame(t).image, 1000 + t, 500 * t) for t in range(5)]   # a 5-frame bag
    with harness(params, factory_for([video]), video) as h:
        for image, sec, nsec in [*bag[:2], bag[0]]:       # the bag loops inside the warm-up
            send(h, image, sec, nsec)
        status = h.latest_status()
        assert (status.phase_label, status.warmup_frames_collected) == ("warmup", 3)
        assert status.frames_processed == 3
        diagnostic(h, "stamp_jumps_back", "1")
        send(h, *bag[1])                                  # 4th warm-up frame: adaptation
        h.wait_phase("adapted")
        for image, sec, nsec in [*bag[2:], bag[0], bag[1]]:    # loops again, once adapted
            send(h, image, sec, nsec)
        send(h, video.frame(5).image, 0, 0)               # a camera restarted at time zero
        status = h.latest_status()
        assert (status.phase_label, status.serving) == ("adapted", "adapted")
        assert status.adaptations_completed == 1 and status.warmup_frames_collected == 0
        assert status.frames_processed == 10 and status.frames_rejected == 0
        diagnostic(h, "stamp_jumps_back", "3")
        labels = h.topics["labels"].snapshot()
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in labels]
    assert stamps == [(1000, 0), (1001, 500), (1000, 0), (1001, 500), (1002, 1000),
                      (1003, 1500), (1004, 2000), (1000, 0), (1001, 500), (0, 0)]
    assert one_adaptation(h.phases()), h.phases()
    assert "input stamp went back by 1.000 s" in capfd.readouterr().err


def test_new_resolution_restarts_the_warmup() -> None:
    big, small = make_video(), make_video(seed=1, height=SMALL[0], width=SMALL[1])
    with harness(FAST_PARAMS, factory_for([big, small]), big) as h:
        send(h, big.frame(0).image, 10)
        send(h, big.frame(1).image, 11)
        assert h.latest_status().warmup_frames_collected == 2
        send(h, small.frame(0).image, 12)                 # the camera switches resolution
        status = h.latest_status()
        assert (status.phase_label, status.warmup_frames_collected) == ("warmup", 1)
        assert "warm-up restarted" in status.message
        diagnostic(h, "resolution_changes", "1")
        # Adapting on the three small frames works (a mixed-size warm-up could not).
        send(h, small.frame(1).image, 13)
        send(h, small.frame(2).image, 14)
        adapted = h.wait_phase("adapted")
        send(h, small.frame(3).image, 15)
        status = h.latest_status()
    assert adapted.adaptations_completed == 1 and adapted.warmup_frames_target == 3
    assert (status.serving, status.frames_processed) == ("adapted", 6)
    assert one_adaptation(h.phases()), h.phases()


def test_new_resolution_while_adapting_and_adapted_keeps_the_adaptation() -> None:
    big, small = make_video(), make_video(seed=1, height=SMALL[0], width=SMALL[1])
    gate = threading.Event()                              # holds the teacher (stage B)
    with harness(FAST_PARAMS, factory_for([big, small], gate), big) as h:
        for t in range(3):
            send(h, big.frame(t).image, 20 + t)
        h.wait_phase("adapting")
        send(h, small.frame(0).image, 23)                 # while adapting: ISS, new size
        status = h.latest_status()
        assert (status.phase_label, status.serving) == ("adapting", "iss")
        gate.set()
        h.wait_phase("adapted")                           # the adaptation went on
        for t in range(1, 3):
            send(h, small.frame(t).image, 23 + t)         # adapted, at the new size
        status = h.latest_status()
        assert (status.phase_label, status.serving) == ("adapted", "adapted")
        send(h, big.frame(3).image, 26)                   # and back to the first size
        send(h, big.frame(4).image, 27)
        status = h.latest_status()
        diagnostic(h, "resolution_changes", "2")
    assert (status.phase_label, status.serving) == ("adapted", "adapted")
    assert status.adaptations_completed == 1 and status.frames_processed == 8
    assert one_adaptation(h.phases()), h.phases()
