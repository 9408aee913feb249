"""StreamHealth (ros/stream_health.py): what the node counts and logs about its input, with a
fake clock; no ROS graph."""

from __future__ import annotations

from ditta_ros.ros.stream_health import StreamHealth


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_size_changes_are_counted_and_logged_rate_limited() -> None:
    clock = FakeClock()
    health = StreamHealth(log_period=5.0, clock=clock)
    assert health.note_size(640, 480, "cam") is None          # the first size is no change
    assert health.note_size(640, 480, "cam") is None
    line = health.note_size(320, 240, "cam")
    assert line is not None and "from 640x480 to 320x240" in line and "'cam'" in line
    assert health.note_size(640, 480, "cam") is None          # held back: within 5 s
    clock.now = 6.0
    line = health.note_size(320, 240, "cam")
    assert line is not None and "(1 more since the last report)" in line
    assert health.resolution_changes == 3
    assert ("resolution_changes", "3") in health.diagnostic_values()


def test_stamps_going_back_are_jumps_equal_stamps_are_not() -> None:
    clock = FakeClock()
    health = StreamHealth(clock=clock)
    assert health.note_stamp(10, 0, "cam") == (False, None, 10.0)
    assert health.note_stamp(10, 0, "cam") == (False, None, 10.0)
    jumped, line, seconds = health.note_stamp(9, 500_000_000, "cam")
    assert jumped and line is not None and "went back by 0.500 s" in line
    assert seconds == 9.5                                      # the policy's clock
    assert health.note_stamp(0, 0, "cam").jumped_back          # counted, line held back
    check = health.note_stamp(0, 0, "cam")
    assert check.warning is None and check.seconds is None     # unstamped: node clock
    assert health.stamp_jumps_back == 2


def test_rejections_count_every_frame_and_log_one_line_per_kind_and_period() -> None:
    clock = FakeClock()
    health = StreamHealth(clock=clock)
    first = health.rejected("unsupported encoding 'yuv420'", "cam")
    assert first is not None and "1 rejected so far" in first
    assert health.rejected("unsupported encoding 'nv12'", "cam") is None   # same kind
    other = health.rejected("truncated data: 10 of 20 bytes", "cam")
    assert other is not None                                   # another kind: logged
    clock.now = 10.0
    again = health.rejected("unsupported encoding 'x'", "cam")
    assert again is not None and "(1 more like it" in again
    counts = health.counts()
    assert counts.rejected == 4 and counts.last_rejection == "unsupported encoding 'x'"
    assert health.rejected_since_last_report() and not health.rejected_since_last_report()
    assert health.internal_error(RuntimeError("bug")) is not None
    assert health.counts().rejected == 5 and health.rejected_since_last_report()


def test_reset_forgets_everything() -> None:
    health = StreamHealth()
    health.stats.received()
    health.note_size(1, 1, "")
    health.note_size(2, 2, "")
    health.note_stamp(5, 0, "")
    health.reset()
    assert health.counts().received == 0 and health.resolution_changes == 0
    assert health.note_size(3, 3, "") is None                  # no previous size any more
    assert health.note_stamp(1, 0, "") == (False, None, 1.0)   # no previous stamp any more
