"""Keep DDS discovery on this machine, on every ROS 2 distribution we support.

Jazzy and later read ``ROS_AUTOMATIC_DISCOVERY_RANGE``; Humble (and Iron) only know the older
``ROS_LOCALHOST_ONLY``, which later distributions deprecate, so it is set only there. Call
before ``rclpy.init`` (the variables are read when the first context starts).
"""

from __future__ import annotations

import os

_LOCALHOST_ONLY_DISTROS = ("humble", "iron")


def keep_dds_local(environ: dict[str, str] | None = None) -> None:
    """Set the discovery variables of this process (or of ``environ``) to localhost only."""
    env = os.environ if environ is None else environ
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if env.get("ROS_DISTRO", "") in _LOCALHOST_ONLY_DISTROS:
        env["ROS_LOCALHOST_ONLY"] = "1"
