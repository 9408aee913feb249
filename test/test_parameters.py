"""ditta_ros.ros.parameters: descriptors, config building, the committed YAML and docs table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from fixtures_node import ros_context
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node

from ditta_ros.config import DittaConfig, NodeConfig, settings_of
from ditta_ros.errors import ConfigError
from ditta_ros.ros import parameters as params
from ditta_ros.ros.launch_arguments import LAUNCH_BEGIN, LAUNCH_END

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_becomes_one_uniquely_named_parameter() -> None:
    specs = params.parameter_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    expected = sum(len(settings_of(section)) for _, section in params.SECTIONS)
    assert len(specs) == expected
    assert "model.checkpoint" in names and "teacher.sam2_checkpoint" in names
    assert "adaptation.warmup_frames" in names and "fusion.tau" in names
    assert "transport" in names and "autostart" in names  # node settings are top-level


def test_descriptors_carry_type_range_choices_and_description() -> None:
    by_name = params.spec_by_name()
    d = params.descriptor(by_name["model.num_classes"])
    assert d.type == ParameterType.PARAMETER_INTEGER
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 65535)
    assert "applied at configure" in d.additional_constraints
    d = params.descriptor(by_name["fusion.tau"])
    assert d.type == ParameterType.PARAMETER_DOUBLE
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0, 1)
    assert "reliability" in d.description
    d = params.descriptor(by_name["transport"])
    assert d.type == ParameterType.PARAMETER_STRING
    assert "raw, compressed" in d.additional_constraints
    assert params.descriptor(by_name["autostart"]).type == ParameterType.PARAMETER_BOOL
    assert not d.read_only  # see the module docstring: enforced by lifecycle state instead


def test_defaults_build_the_default_configs() -> None:
    engine, node = params.build_configs(params.default_values())
    assert engine == DittaConfig()
    assert node == NodeConfig()
    engine, node = params.build_configs({})
    assert engine == DittaConfig() and node == NodeConfig()


def test_values_reach_the_right_section() -> None:
    engine, node = params.build_configs({"model.num_classes": 7, "fusion.tau": 0.5,
                                         "adaptation.warmup_frames": 3, "transport": "compressed"})
    assert engine.model.num_classes == 7 and engine.fusion.tau == 0.5
    assert engine.adaptation.warmup_frames == 3 and node.transport == "compressed"


@pytest.mark.parametrize("values, named", [
    ({"fusion.tau": 1.5}, "parameter 'fusion.tau'"),
    ({"transport": "theora"}, "parameter 'transport'"),
    ({"model.fit_long": 100, "model.fit_short": 200}, "parameter 'model.fit_long'"),
    ({"adaptation.warmup_frames": 1}, "parameter 'adaptation.warmup_frames'"),
    ({"model.checkpointt": "x"}, "unknown parameter"),
])
def test_invalid_values_raise_config_error_naming_the_parameter(values, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        params.build_configs(values)


@pytest.mark.parametrize("value, text", [
    (1e-8, "1.0e-08"), (0.001, "0.001"), (1.0, "1.0"), (5, "5"), (True, "true"),
    ("configs/x.yaml", '"configs/x.yaml"'), ("", '""')])
def test_format_value_keeps_types_for_yaml(value, text: str) -> None:
    assert params.format_value(value) == text
    assert type(yaml.safe_load(text)) is type(value)


def test_rendered_yaml_holds_every_default_with_its_type() -> None:
    tree = yaml.safe_load(params.render_yaml())["/**"]["ros__parameters"]
    for spec in params.parameter_specs():
        value = tree[spec.section][spec.field] if spec.section else tree[spec.field]
        assert value == spec.default and type(value) is type(spec.default), spec.name


def test_committed_yaml_and_docs_table_are_up_to_date() -> None:
    assert (ROOT / "config" / "ditta.yaml").read_text() == params.render_yaml(), \
        "run: python -m ditta_ros.ros.parameters --write"
    assert params.render_markdown_table() in (ROOT / "docs" / "node.md").read_text(), \
        "run: python -m ditta_ros.ros.parameters --write"
    assert params.main(["--check", "--root", str(ROOT)]) == 0


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "config" / "ditta.yaml").write_text("old\n")
    (tmp_path / "docs" / "node.md").write_text(
        f"# x\n{params.DOC_BEGIN}\nold\n{params.DOC_END}\n{LAUNCH_BEGIN}\nold\n{LAUNCH_END}\n")
    assert params.main(["--check", "--root", str(tmp_path)]) == 1
    assert params.main(["--write", "--root", str(tmp_path)]) == 0
    assert params.main(["--check", "--root", str(tmp_path)]) == 0
    written = (tmp_path / "docs" / "node.md").read_text()
    assert written.startswith("# x\n") and "| `device` |" in written   # both tables


def test_ros_parses_the_committed_yaml_for_any_node_name() -> None:
    path = ROOT / "config" / "ditta.yaml"
    with ros_context(["--ros-args", "--params-file", str(path)]) as context:
        node = Node("some_other_name", namespace="/robot1", context=context)
        try:
            assert params.declare_parameters(node) == {}
            values = params.read_values(node)
        finally:
            node.destroy_node()
    assert values == params.default_values()
    assert all(type(values[k]) is type(v) for k, v in params.default_values().items())


def test_declare_reports_bad_overrides_and_keeps_good_ones() -> None:
    args = ["--ros-args", "-p", "overlay_alpha:=1", "-p", "model.num_classes:=70000",
            "-p", "adaptation.warmup_frames:=3", "-p", "model.checkpoint:=/x/y.pt"]
    with ros_context(args) as context:
        node = Node("ditta_params_test", context=context)
        try:
            problems = params.declare_parameters(node)
            values = params.read_values(node)
        finally:
            node.destroy_node()
    assert set(problems) == {"overlay_alpha", "model.num_classes"}
    assert "decimal point" in problems["overlay_alpha"]
    assert "[1, 65535]" in problems["model.num_classes"]
    assert values["overlay_alpha"] == 0.5 and values["model.num_classes"] == 124
    assert values["adaptation.warmup_frames"] == 3 and values["model.checkpoint"] == "/x/y.pt"


def test_changed_fields() -> None:
    a = NodeConfig()
    b = dataclasses.replace(a, overlay_alpha=0.2)
    assert params.changed_fields(a, b) == ["overlay_alpha"]
