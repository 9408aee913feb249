"""Launch ditta_node (and optionally RViz) for one camera.

    ros2 launch ditta_ros ditta.launch.py image:=/camera/image_raw
    ros2 launch ditta_ros ditta.launch.py image:=/camera/image_raw transport:=compressed \\
        segformer_checkpoint:=/models/segformer_b5_vspw.pt \\
        sam2_checkpoint:=/models/sam2_hiera_large.pt device:=cuda use_rviz:=true

Every launch argument that reaches the node maps to one parameter it declares (see
``NODE_PARAMETERS``; test/test_launch.py checks the mapping against ditta_ros/config.py).
Other settings: pass your own ``params_file`` (start from config/ditta.yaml).

With ``autostart:=false`` the node waits in the unconfigured state for a lifecycle manager
(nav2_lifecycle_manager needs ``bond_timeout: 0.0`` for Python lifecycle nodes).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, TextSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

PACKAGE = "ditta_ros"

# launch argument -> (node parameter, type, default, description)
NODE_PARAMETERS: dict[str, tuple[str, type, str, str]] = {
    "transport": ("transport", str, "raw",
                  "raw (sensor_msgs/Image on <image>) or compressed (CompressedImage on "
                  "<image>/compressed)"),
    "device": ("model.device", str, "cpu", "Torch device: cpu, cuda or cuda:N"),
    "segformer_checkpoint": ("model.checkpoint", str, "",
                             "ISS model: ditta_ros .pt or Hugging Face SegFormer directory "
                             "('' = random tiny model, demo only)"),
    "sam2_checkpoint": ("teacher.sam2_checkpoint", str, "",
                        "SAM2 .pt checkpoint ('' = random weights, demo only)"),
    "sam2_config": ("teacher.sam2_config", str, "configs/sam2/sam2_hiera_l.yaml",
                    "SAM2 config name inside the sam2 package"),
    "classes": ("classes", str, "vspw", "vspw, cityscapes, ade20k or a YAML class list"),
    "autostart": ("autostart", bool, "true",
                  "configure and activate at start (false: wait for a lifecycle manager)"),
}

# Launch arguments that do not become node parameters.
OTHER_ARGUMENTS: dict[str, tuple[str, str]] = {
    "image": ("/camera/image_raw", "Camera image topic (base topic for compressed)"),
    "namespace": ("", "Namespace of the node"),
    "node_name": ("ditta_node", "Name of the node"),
    "use_rviz": ("false", "Start RViz with config/ditta.rviz"),
}


def _params_file_default() -> str:
    return os.path.join(get_package_share_directory(PACKAGE), "config", "ditta.yaml")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    arguments = [DeclareLaunchArgument("params_file", default_value=_params_file_default(),
                                       description="Parameter file (all settings)")]
    for name, (default, description) in OTHER_ARGUMENTS.items():
        arguments.append(DeclareLaunchArgument(name, default_value=default,
                                               description=description))
    for name, (_, _, default, description) in NODE_PARAMETERS.items():
        arguments.append(DeclareLaunchArgument(name, default_value=default,
                                               description=description))

    overrides = {parameter: ParameterValue(LaunchConfiguration(name), value_type=value_type)
                 for name, (parameter, value_type, _, _) in NODE_PARAMETERS.items()}
    image = LaunchConfiguration("image")
    node = LifecycleNode(
        package=PACKAGE,
        executable="ditta_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("image", image),
            ("image/compressed", [image, TextSubstitution(text="/compressed")]),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="ditta_rviz",
        arguments=["-d", PathJoinSubstitution([share, "config", "ditta.rviz"])],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
        output="screen",
    )
    return LaunchDescription([*arguments, node, rviz])
