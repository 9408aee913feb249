"""Launch ditta_node (and optionally RViz) for one camera.

    ros2 launch ditta_ros ditta.launch.py image:=/camera/image_raw
    ros2 launch ditta_ros ditta.launch.py image:=/camera/image_raw transport:=compressed \\
        params_file:=/path/to/my_ditta.yaml device:=cuda use_rviz:=true

Arguments, their descriptions and what they default to come from ditta_ros/config.py through
``ditta_ros.ros.launch_arguments`` (the table is in docs/node.md). Precedence, lowest first:
the node's defaults, autostart true (this launch starts the node), your ``params_file``, the
arguments you give. An argument you do not give is not passed, so it never replaces a value
of your parameter file.

With ``autostart:=false`` the node waits in the unconfigured state for a lifecycle manager
(nav2_lifecycle_manager needs ``bond_timeout: 0.0`` for Python lifecycle nodes).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

import launch
from ditta_ros.ros.launch_arguments import (
    launch_arguments,
    node_parameters,
    render_rviz,
    viewer_topics,
)
from launch import LaunchDescription

PACKAGE = "ditta_ros"


def _values(context: LaunchContext) -> dict[str, str]:
    return {a.name: LaunchConfiguration(a.name).perform(context) for a in launch_arguments()}


def _node(context: LaunchContext) -> list[launch.Action]:
    values = _values(context)
    image = values["image"]
    node = LifecycleNode(
        package=PACKAGE,
        executable="ditta_node",
        name=values["node_name"],
        namespace=values["namespace"],
        output="screen",
        emulate_tty=True,
        parameters=[_as_file(entry) for entry in node_parameters(values)],
        remappings=[("image", image), ("image/compressed", f"{image}/compressed")],
    )
    return [node, *_viewer(values)]


def _as_file(entry: str | dict[str, Any]) -> str:
    """A parameter-file document written to a file of its own (launch_ros would rewrite a
    dict under the node's name; the keys chosen in launch_arguments.py matter)."""
    if isinstance(entry, str):
        return entry
    with tempfile.NamedTemporaryFile("w", prefix="ditta_params_", suffix=".yaml",
                                     delete=False, encoding="utf-8") as out:
        yaml.safe_dump(entry, out)
    return out.name


def _viewer(values: dict[str, str]) -> list[launch.Action]:
    """RViz on this launch's topics, or a warning (and no viewer) when rviz2 is missing."""
    if values["use_rviz"].strip().lower() not in ("true", "1", "yes"):
        return []
    log = launch.logging.get_logger("ditta.launch")
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        log.warning("use_rviz:=true but rviz2 is not installed: starting ditta_node without "
                    "the viewer (install ros-$ROS_DISTRO-rviz2, or view the topics elsewhere)")
        return []
    return [Node(package="rviz2", executable="rviz2", name="ditta_rviz",
                 namespace=values["namespace"], arguments=["-d", _rviz_config(values)],
                 output="screen")]


def _rviz_config(values: dict[str, str]) -> str:
    """config/ditta.rviz with this launch's topics, written to a file of its own."""
    template = os.path.join(get_package_share_directory(PACKAGE), "config", "ditta.rviz")
    with open(template, encoding="utf-8") as file:
        text = render_rviz(file.read(), viewer_topics(values["image"], values["namespace"],
                                                      values["node_name"]))
    with tempfile.NamedTemporaryFile("w", prefix="ditta_", suffix=".rviz", delete=False,
                                     encoding="utf-8") as out:
        out.write(text)
    return out.name


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(a.name, default_value=a.default,
                                       description=a.description)
                 for a in launch_arguments()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
