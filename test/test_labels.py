"""Class sets, YAML class files and colorize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ditta_ros.errors import ConfigError
from ditta_ros.labels import ClassSet, colorize, generate_palette, load_classes


@pytest.mark.parametrize(("spec", "count"), [("vspw", 124), ("cityscapes", 19),
                                             ("ade20k", 150), ("VSPW", 124)])
def test_builtin_counts(spec: str, count: int) -> None:
    classes = load_classes(spec)
    assert classes.num_classes == count == len(classes.names)
    assert classes.palette.shape == (count, 3) and classes.palette.dtype == np.uint8
    assert len(set(classes.names)) == count


def test_known_names_at_known_ids() -> None:
    vspw = load_classes("vspw")
    # class id = VSPW raw label - 1: raw 1 "wall", raw 61 "person", raw 124 "train".
    assert vspw.names[0] == "wall"
    assert vspw.names[6] == "Playground_slide"
    assert vspw.names[48] == "car"
    assert vspw.names[60] == "person"
    assert vspw.names[123] == "train"
    city = load_classes("cityscapes")
    assert city.names[0] == "road" and city.names[13] == "car" and city.names[18] == "bicycle"
    assert city.palette[0].tolist() == [128, 64, 128]
    assert city.palette[11].tolist() == [220, 20, 60]     # person
    ade = load_classes("ade20k")
    assert ade.names[0] == "wall" and ade.names[12] == "person"
    assert ade.names[44] == "chest of drawers" and ade.names[149] == "flag"
    assert ade.palette[0].tolist() == [120, 120, 120]
    assert ade.palette[149].tolist() == [92, 0, 255]


def test_generated_palette_is_deterministic_and_distinct() -> None:
    a, b = generate_palette(150), generate_palette(150)
    np.testing.assert_array_equal(a, b)
    assert len({tuple(c) for c in a.tolist()}) == 150
    np.testing.assert_array_equal(generate_palette(10), a[:10])   # prefix-stable


def test_palette_is_read_only() -> None:
    classes = load_classes("cityscapes")
    with pytest.raises(ValueError):
        classes.palette[0, 0] = 1
    with pytest.raises(ConfigError, match="palette"):
        ClassSet("x", ("a", "b"), np.zeros((3, 3), np.uint8))


def test_yaml_list_of_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("- ground\n- robot\n- person\n")
    classes = load_classes(str(path))
    assert classes.name == "mine" and classes.names == ("ground", "robot", "person")
    np.testing.assert_array_equal(classes.palette, generate_palette(3))


def test_yaml_mappings_with_and_without_colour(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: lab\nclasses:\n"
                    "  - {name: floor, color: [10, 20, 30]}\n"
                    "  - shelf\n"
                    "  - name: robot\n")
    classes = load_classes(str(path))
    assert classes.name == "lab" and classes.names == ("floor", "shelf", "robot")
    assert classes.palette[0].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(classes.palette[1:], generate_palette(3)[1:])


@pytest.mark.parametrize(("text", "problem"), [
    ("[unclosed", "not valid YAML"),
    ("", "non-empty list"),
    ("a: 1\n", "non-empty list"),
    ("- 3\n", "entry 0"),
    ("- a\n- {name: b, color: [1, 2]}\n", "color"),
    ("- {name: b, color: [1, 2, 300]}\n", "color"),
    ("- {color: [1, 2, 3]}\n", "'name'"),
    ("- {name: b, colour: [1, 2, 3]}\n", "unknown keys"),
])
def test_bad_yaml_is_a_config_error_naming_the_path(tmp_path: Path, text: str,
                                                    problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_classes(str(path))
    assert str(path) in str(info.value) and problem in str(info.value)


def test_unknown_spec_names_the_choices(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="vspw, cityscapes, ade20k") as info:
        load_classes(str(missing))
    assert str(missing) in str(info.value)


def test_colorize() -> None:
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    labels = np.array([[0, 1, 2], [255, -1, 3]])
    out = colorize(labels, palette)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0].tolist() == palette.tolist()
    assert out[1].tolist() == [[0, 0, 0]] * 3        # unlabelled and out of range: black
    # A custom unlabelled value inside the class range is black too.
    assert colorize(np.array([[0, 1]]), palette, unlabelled=0)[0].tolist() == [[0, 0, 0],
                                                                             [0, 255, 0]]
    big = np.random.default_rng(0).integers(0, 19, size=(64, 96))
    city = load_classes("cityscapes").palette
    np.testing.assert_array_equal(colorize(big, city), city[big])
