"""ditta_node over real DDS: phases, label images, colours, services (tiny real SegFormer,
ground-truth teacher; the real SAM2 path is in test_node_sam2.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_node import TINY_PARAMS, Collector, harness, stamp_key
from rclpy.node import Node

from ditta_ros.labels import load_classes
from ditta_ros.ros.node import LATCHED_QOS

PALETTE = load_classes("vspw").palette


def image_array(msg) -> np.ndarray:
    dtype = {"mono8": np.uint8, "mono16": np.uint16, "rgb8": np.uint8, "bgr8": np.uint8,
             "32FC1": np.float32}[msg.encoding]
    channels = 3 if msg.encoding in ("rgb8", "bgr8") else 1
    pixels = np.frombuffer(msg.data, dtype=dtype).reshape(msg.height, msg.width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


def test_stream_adapts_and_publishes_aligned_labels() -> None:
    with harness(TINY_PARAMS) as h:
        headers = h.feed(range(3))
        adapted = h.wait_phase("adapted")
        headers += h.feed(range(3, 6))
        labels = h.wait_labels(6)
        assert h.topics["overlay"].wait_for(lambda items: len(items) >= 6, 10.0)
        assert h.topics["confidence"].wait_for(lambda items: len(items) >= 6, 10.0)
        assert h.topics["diagnostics"].wait_for(lambda items: len(items) >= 1, 10.0)
        status = h.latest_status()

    phases = h.phases()
    first = {p: phases.index(p) for p in ("warmup", "adapting", "adapted")}
    assert first["warmup"] < first["adapting"] < first["adapted"], phases
    assert adapted.adaptations_completed == 1 and adapted.serving == "adapted"
    assert adapted.warmup_frames_target == 3
    assert status.frames_received == status.frames_processed == 6
    assert status.frames_dropped == status.frames_rejected == 0
    assert status.latency_ms > 0 and status.inference_ms > 0

    colours = h.topics["labels_color"].snapshot()
    overlays = h.topics["overlay"].snapshot()
    confidences = h.topics["confidence"].snapshot()
    for sent, lab, col, ovl, conf in zip(headers, labels, colours, overlays, confidences):
        for msg in (lab, col, ovl, conf):  # header unchanged, camera resolution
            assert stamp_key(msg.header) == stamp_key(sent)
            assert msg.header.frame_id == "camera"
            assert (msg.height, msg.width) == (64, 96)
        assert lab.encoding == "mono8" and col.encoding == "rgb8"
        assert ovl.encoding == "rgb8" and conf.encoding == "mono8"
        ids = image_array(lab)
        assert ids.max() < 4
        np.testing.assert_array_equal(image_array(col), PALETTE[ids])
        frame = h.video.frame(sent.stamp.sec - 1000).image[:, :, ::-1].astype(np.float64)
        blend = 0.5 * PALETTE[ids].astype(np.float64) + 0.5 * frame
        assert np.abs(image_array(ovl).astype(np.float64) - blend).max() <= 1.0

    diag = h.topics["diagnostics"].snapshot()[-1].status[0]
    keys = {kv.key: kv.value for kv in diag.values}
    assert {"input_rate_hz", "output_rate_hz", "latency_ms", "frames_dropped", "phase"} <= set(keys)


def test_label_info_is_latched_for_late_subscribers() -> None:
    with harness(TINY_PARAMS) as h:
        late = Node("late_subscriber", context=h.context)
        info = Collector()
        late.create_subscription(__import__("vision_msgs.msg", fromlist=["LabelInfo"]).LabelInfo,
                                 "/ditta_node/label_info", info, LATCHED_QOS)
        h_exec_nodes = late  # spun by its own executor below
        from fixtures_node import spinning
        with spinning(h.context, h_exec_nodes, threads=2):
            assert info.wait_for(lambda items: len(items) == 1, 10.0)
        late.destroy_node()
    msg = info.snapshot()[0]
    assert [c.class_id for c in msg.class_map] == [0, 1, 2, 3]
    assert [c.class_name for c in msg.class_map] == list(load_classes("vspw").names[:4])


def test_adapt_and_reset_services_change_the_phase(tmp_path) -> None:
    with harness(TINY_PARAMS) as h:
        h.feed(range(3))
        h.wait_phase("adapted")
        seen = len(h.topics["status"].items)
        reply = h.call("adapt")
        assert reply.success, reply.message
        status = h.wait_phase("warmup", after=seen)
        assert status.serving == "adapted"        # the old adaptation serves meanwhile
        seen = len(h.topics["status"].items)
        h.feed(range(3, 6))
        h.wait_phase("adapted", after=seen)
        assert h.latest_status().adaptations_completed == 2

        path = tmp_path / "adaptation.pt"
        assert not h.call("save_adaptation").success          # adaptation_file is empty
        from rclpy.parameter import Parameter
        result = h.node.set_parameters([Parameter("adaptation_file", value=str(path))])[0]
        assert result.successful, result.reason
        reply = h.call("save_adaptation")
        assert reply.success and path.is_file(), reply.message

        seen = len(h.topics["status"].items)
        reply = h.call("reset")
        assert reply.success, reply.message
        status = h.wait_phase("warmup", after=seen)
        h.feed(range(6, 7))
        assert h.latest_status().serving == "iss"

        seen = len(h.topics["status"].items)
        reply = h.call("load_adaptation")
        assert reply.success, reply.message
        h.wait_phase("adapted", after=seen)
        h.feed(range(7, 8))
        assert h.latest_status().serving == "adapted"


@pytest.mark.parametrize("encoding", ["bgr8"])
def test_live_output_parameters_apply_at_once(encoding: str) -> None:
    from rclpy.parameter import Parameter
    params = dict(TINY_PARAMS, publish_overlay=False)
    with harness(params) as h:
        h.feed(range(1))
        assert h.topics["labels_color"].wait_for(lambda items: len(items) >= 1, 10.0)
        results = h.node.set_parameters([Parameter("color_encoding", value=encoding),
                                         Parameter("publish_overlay", value=True),
                                         Parameter("confidence_encoding", value="32FC1")])
        assert all(r.successful for r in results)
        h.feed(range(1, 2))
        assert h.topics["overlay"].wait_for(lambda items: len(items) >= 1, 10.0)
        assert h.topics["confidence"].wait_for(lambda items: len(items) >= 2, 10.0)
        colour = h.topics["labels_color"].snapshot()
        assert h.topics["labels_color"].wait_for(lambda items: len(items) >= 2, 10.0)
        colour = h.topics["labels_color"].snapshot()
    assert colour[0].encoding == "rgb8" and colour[1].encoding == encoding
    confidence = h.topics["confidence"].snapshot()[1]
    assert confidence.encoding == "32FC1"
    r = image_array(confidence)
    # reliability = 1 - E / max E over the frame: 0 at the least confident pixel, <= 1
    assert r.min() == 0.0 and 0.0 < r.max() <= 1.0
    ids = image_array(h.topics["labels"].snapshot()[1])
    np.testing.assert_array_equal(image_array(colour[1]), PALETTE[ids][:, :, ::-1])
    assert len(h.topics["overlay"].snapshot()) == 1        # off for frame 0, on for frame 1
