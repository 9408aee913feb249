"""The node's ``~/<name>`` services (std_srvs/Trigger): what each does with the session.

Pure Python (no rclpy): the node looks the action up in :data:`SERVICES`, calls
:func:`serve` with its session and its ``adaptation_file`` parameter, and puts the
``(success, message)`` into the Trigger reply.
"""

from __future__ import annotations

from collections.abc import Callable

from ditta_ros.errors import ConfigError, DittaError
from ditta_ros.ros.loading import StreamSession

Action = Callable[[StreamSession, str], str]


def adaptation_path(adaptation_file: str) -> str:
    """The ``adaptation_file`` parameter, or a ConfigError saying how to set it."""
    if not adaptation_file:
        raise ConfigError("parameter 'adaptation_file' is empty: set it to the file to "
                          "write or read, e.g. ros2 param set <node> adaptation_file "
                          "/tmp/ditta_adaptation.pt")
    return adaptation_file


def _adapt(session: StreamSession, adaptation_file: str) -> str:
    session.request_adaptation()
    return "adaptation requested: collecting a new warm-up"


def _reset(session: StreamSession, adaptation_file: str) -> str:
    session.reset()
    return "reset: serving the base model, warm-up restarted"


def _save(session: StreamSession, adaptation_file: str) -> str:
    path = adaptation_path(adaptation_file)
    session.save_adaptation(path)
    return f"adaptation saved to {path}"


def _load(session: StreamSession, adaptation_file: str) -> str:
    path = adaptation_path(adaptation_file)
    session.load_adaptation(path)
    return f"adaptation loaded from {path}"


# ~/<name> -> what it does with the session; the reply's message
SERVICES: dict[str, Action] = {
    "adapt": _adapt, "reset": _reset, "save_adaptation": _save, "load_adaptation": _load}


def serve(action: Action, session: StreamSession | None, lifecycle: str,
          adaptation_file: str) -> tuple[bool, str]:
    """Run ``action``; a missing session (not configured) or a DittaError is a failed reply
    with the reason, never an exception."""
    if session is None:
        return False, (f"node is {lifecycle}: configure it first "
                       "(lifecycle transition 'configure')")
    try:
        return True, action(session, adaptation_file)
    except DittaError as err:
        return False, str(err)
