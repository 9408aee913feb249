"""The node's Trigger services as pure functions (ros/services.py): replies, never raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from ditta_ros.ros.loading import StreamSession
from ditta_ros.ros.services import SERVICES, serve


class _Recorder:
    """Records what the services asked of the session."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def request_adaptation(self) -> None:
        self.calls.append(("adapt", None))

    def reset(self) -> None:
        self.calls.append(("reset", None))

    def save_adaptation(self, path: str) -> None:
        self.calls.append(("save", path))

    def load_adaptation(self, path: str) -> None:
        self.calls.append(("load", path))


def test_each_service_calls_its_session_method(tmp_path: Path) -> None:
    session = _Recorder()
    target = str(tmp_path / "a.pt")
    replies = {name: serve(action, cast(StreamSession, session), "active", target)
               for name, action in SERVICES.items()}
    assert all(ok for ok, _ in replies.values())
    assert session.calls == [("adapt", None), ("reset", None), ("save", target),
                             ("load", target)]
    assert replies["save_adaptation"][1] == f"adaptation saved to {target}"


def test_failures_are_replies_with_the_fix() -> None:
    ok, message = serve(SERVICES["adapt"], None, "unconfigured", "")
    assert not ok and "node is unconfigured: configure it first" in message
    session = _Recorder()
    ok, message = serve(SERVICES["save_adaptation"], cast(StreamSession, session), "active", "")
    assert not ok and "parameter 'adaptation_file' is empty" in message
    assert session.calls == []
