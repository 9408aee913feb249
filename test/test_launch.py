"""launch/ditta.launch.py, its arguments and config/ditta.rviz.

The rules of the launch file live in ``ditta_ros.ros.launch_arguments`` (pure Python), so
they are tested here without ``launch``/``launch_ros``: the arguments come from config.py's
metadata, and the three-way precedence (node default < params file < launch argument) is
checked by handing the node the parameter list the launch builds, as ``--params-file``
files in order, exactly as launch_ros passes them, to a real DittaNode. Where ``ros2
launch`` and an installed ditta_ros exist, the same is checked by running the launch file.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_node import ros_context

from ditta_ros.ros.launch_arguments import (
    LAUNCH_DEFAULTS,
    NODE_ARGUMENTS,
    NOT_GIVEN,
    launch_arguments,
    node_parameters,
    render_launch_table,
    render_rviz,
    typed_value,
    viewer_topics,
)
from ditta_ros.ros.node import DittaNode
from ditta_ros.ros.parameters import spec_by_name

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "ditta.launch.py"
RVIZ = ROOT / "config" / "ditta.rviz"


def test_node_arguments_come_from_config_metadata_and_default_to_not_given() -> None:
    specs = spec_by_name()
    arguments = {a.name: a for a in launch_arguments()}
    assert {"transport", "device", "segformer_checkpoint", "sam2_checkpoint", "sam2_config",
            "classes", "autostart", "image", "namespace", "node_name", "use_rviz",
            "params_file"} == set(arguments)
    for name, parameter in NODE_ARGUMENTS.items():
        argument = arguments[name]
        assert argument.parameter == parameter and argument.default == NOT_GIVEN
        assert specs[parameter].description in argument.description
    assert arguments["params_file"].default == ""          # no file unless the user gives one


def test_typed_values_and_unparsable_text_passes_through() -> None:
    assert typed_value("autostart", "False") is False
    assert typed_value("autostart", "true") is True
    assert typed_value("autostart", "maybe") == "maybe"    # the node names the problem
    assert typed_value("adaptation.warmup_frames", "7") == 7
    assert typed_value("fusion.tau", "0.5") == 0.5
    assert typed_value("model.device", "cuda:1") == "cuda:1"


def test_an_argument_reaches_the_node_only_when_given() -> None:
    values = {a.name: a.default for a in launch_arguments()}
    defaults = {"/**": {"ros__parameters": LAUNCH_DEFAULTS}}
    assert node_parameters(values) == [defaults]
    values.update(params_file="/tmp/mine.yaml", device="cuda", autostart="false",
                  namespace="robot1")
    given = {"ros__parameters": {"model.device": "cuda", "autostart": False}}
    assert node_parameters(values) == [defaults, "/tmp/mine.yaml",
                                       {"/**": given, "/robot1/ditta_node": given}]


def _as_ros_args(entries: list[Any], folder: Path) -> list[str]:
    """What the launch file hands the node: every entry a ``--params-file``, in order (a
    document written to a file first)."""
    args = ["--ros-args"]
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            path = folder / f"launch_params_{i}.yaml"
            path.write_text(yaml.safe_dump(entry))
            entry = str(path)
        args += ["--params-file", str(entry)]
    return args


@pytest.mark.parametrize("key", ["/**", "/ditta_node", "both"])
def test_precedence_node_default_then_params_file_then_launch_argument(tmp_path: Path,
                                                                       key: str) -> None:
    """Whatever node key the user's file uses (rcl orders entries by node key, not only by
    file: see launch_arguments.py), its values beat the launch defaults and lose to the
    arguments given."""
    mine = tmp_path / "mine.yaml"
    keys = ["/**", "/ditta_node"] if key == "both" else [key]
    mine.write_text(yaml.safe_dump({k: {"ros__parameters": {
        "transport": "compressed",                          # file only
        "classes": "cityscapes",                            # file, then argument
        "autostart": False,                                 # file beats launch's default
        "model": {"checkpoint": "/models/segformer.pt"},    # file only, nested form
        "teacher": {"sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml"},
    }} for k in keys}))
    values = {a.name: a.default for a in launch_arguments()}
    values.update(params_file=str(mine), classes="ade20k", sam2_checkpoint="/models/s.pt")
    args = _as_ros_args(node_parameters(values), tmp_path)
    with ros_context() as context:
        node = DittaNode(context=context, cli_args=args)
        try:
            got = {name: node.get_parameter(name).value for name in (
                "transport", "classes", "autostart", "model.checkpoint", "model.device",
                "teacher.sam2_config", "teacher.sam2_checkpoint")}
        finally:
            node.destroy_node()
    assert got == {
        "transport": "compressed",                          # params file over default
        "classes": "ade20k",                                # argument over params file
        "autostart": False,                                 # params file over launch default
        "model.checkpoint": "/models/segformer.pt",
        "model.device": "cpu",                              # node default: nobody set it
        "teacher.sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "teacher.sam2_checkpoint": "/models/s.pt",          # argument only
    }


def test_without_a_params_file_launch_starts_the_node_with_its_defaults(tmp_path: Path
                                                                         ) -> None:
    values = {a.name: a.default for a in launch_arguments()}
    with ros_context() as context:
        node = DittaNode(context=context,
                         cli_args=_as_ros_args(node_parameters(values), tmp_path))
        try:
            assert node.get_parameter("autostart").value is True
            assert node.get_parameter("transport").value == spec_by_name()["transport"].default
        finally:
            node.destroy_node()


def test_launch_file_uses_the_shared_rules_and_names_what_exists() -> None:
    text = LAUNCH.read_text()
    tree = ast.parse(text)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "ditta_ros.ros.launch_arguments" for alias in node.names}
    assert {"launch_arguments", "node_parameters", "render_rviz", "viewer_topics"} <= imported
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert {"ditta_node", "ditta.rviz", "config", "rviz2"} <= strings
    assert "PackageNotFoundError" in text          # a missing rviz2 is handled, not fatal
    scripts = (ROOT / "resource" / "console_scripts.txt").read_text()
    assert "ditta_node = ditta_ros.ros.node:main" in scripts
    compile(text, str(LAUNCH), "exec")


def test_rviz_template_shows_the_node_defaults_and_follows_the_launch() -> None:
    template = RVIZ.read_text()
    displays = {d["Name"]: d for d in
                yaml.safe_load(template)["Visualization Manager"]["Displays"]}
    assert {d["Class"] for d in displays.values()} == {"rviz_default_plugins/Image"}
    defaults = {a.name: a.default for a in launch_arguments()}
    for name, topic in viewer_topics(defaults["image"], defaults["namespace"],
                                     defaults["node_name"]).items():
        assert displays[name]["Topic"]["Value"] == topic
    assert displays["Labels"]["Topic"]["Reliability Policy"] == "Reliable"
    assert displays["Camera"]["Topic"]["Reliability Policy"] == "Best Effort"

    topics = viewer_topics("/front/image", "robot1", "seg")
    assert topics == {"Camera": "/front/image", "Labels": "/robot1/seg/labels_color",
                      "Overlay": "/robot1/seg/overlay"}
    assert viewer_topics("front/image", "/robot1/", "seg")["Camera"] == "/robot1/front/image"
    rendered = yaml.safe_load(render_rviz(template, topics))
    shown = {d["Name"]: d["Topic"]["Value"]
             for d in rendered["Visualization Manager"]["Displays"]}
    assert shown == topics
    with pytest.raises(ValueError, match="no display named"):
        render_rviz(template, {"Depth": "/depth"})


def test_docs_launch_table_is_current() -> None:
    doc = (ROOT / "docs" / "node.md").read_text()
    assert render_launch_table() in doc, "run python -m ditta_ros.ros.parameters --write"


def _ros2_launch_available() -> bool:
    if shutil.which("ros2") is None:
        return False
    try:
        from ament_index_python.packages import get_package_share_directory
        get_package_share_directory("ditta_ros")
        import launch_ros  # noqa: F401
    except Exception:  # noqa: BLE001 - any of the three missing: not a ROS install
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _ros2_launch_available(),
                    reason="needs `ros2 launch` and an installed ditta_ros (a ROS 2 install)")
def test_ros2_launch_applies_the_precedence_and_stops_cleanly(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "transport": "compressed", "classes": "cityscapes", "autostart": False}}}))
    command = ["ros2", "launch", "ditta_ros", "ditta.launch.py", f"params_file:={mine}",
               "classes:=ade20k", "use_rviz:=true"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    launch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        got = subprocess.run(
            [sys.executable, "-c", _PARAMETER_PROBE], env=env, capture_output=True, text=True,
            timeout=60)
        launch.send_signal(signal.SIGINT)
        output, _ = launch.communicate(timeout=60)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.communicate()
    assert got.returncode == 0, got.stderr
    assert yaml.safe_load(got.stdout) == {"transport": "compressed", "classes": "ade20k",
                                          "autostart": False, "model.device": "cpu"}
    assert launch.returncode == 0, output[-3000:]
    assert "ERROR" not in output, output[-3000:]


_PARAMETER_PROBE = """
import rclpy, yaml
from rclpy.node import Node
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python
rclpy.init()
node = Node("launch_probe")
client = node.create_client(GetParameters, "/ditta_node/get_parameters")
assert client.wait_for_service(timeout_sec=30.0), "ditta_node never came up"
names = ["transport", "classes", "autostart", "model.device"]
future = client.call_async(GetParameters.Request(names=names))
rclpy.spin_until_future_complete(node, future, timeout_sec=30.0)
values = [parameter_value_to_python(v) for v in future.result().values]
print(yaml.safe_dump(dict(zip(names, values))))
"""


def test_launch_file_with_launch_ros_wires_precedence_and_a_viewer_on_the_launch_topics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With launch and launch_ros importable: evaluate the launch file's node action for
    image:=front/image in namespace robot1 with a (stand-in) rviz2 package in the ament
    index: the node gets the parameter files in precedence order, RViz a config on this
    launch's topics."""
    pytest.importorskip("launch_ros", reason="needs launch_ros (a ROS 2 install)")
    import importlib.util

    from launch.launch_context import LaunchContext
    from launch_ros.actions import Node as RosNode

    index = tmp_path / "prefix" / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "rviz2").write_text("")
    (tmp_path / "prefix" / "share" / "rviz2").mkdir()
    monkeypatch.setenv("AMENT_PREFIX_PATH",
                       f"{tmp_path / 'prefix'}:{os.environ.get('AMENT_PREFIX_PATH', '')}")
    spec = importlib.util.spec_from_file_location("ditta_launch", LAUNCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "get_package_share_directory",
                        lambda name: str(ROOT) if name == "ditta_ros"
                        else str(tmp_path / "prefix" / "share" / name))
    context = LaunchContext()
    values = {a.name: a.default for a in launch_arguments()}
    values.update(image="front/image", namespace="robot1", use_rviz="true",
                  classes="ade20k")
    context.launch_configurations.update(values)
    node, viewer = module._node(context)
    assert isinstance(viewer, RosNode)
    files = [module._as_file(e) for e in node_parameters(values)]
    assert [yaml.safe_load(Path(f).read_text()) for f in files] == node_parameters(values)
    shown = {d["Name"]: d["Topic"]["Value"] for d in yaml.safe_load(Path(
        module._rviz_config(values)).read_text())["Visualization Manager"]["Displays"]}
    assert shown == {"Camera": "/robot1/front/image",
                     "Labels": "/robot1/ditta_node/labels_color",
                     "Overlay": "/robot1/ditta_node/overlay"}
