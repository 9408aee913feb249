"""Class names and colour palettes for label images (the node and the tools share them).

Built-in class sets (the names and colours are facts of each dataset):
- ``vspw``: the 124 VSPW classes in VSPW's order after dropping raw label 0 ("others"), so
  class id = raw label - 1 (see ``engine.metrics.vspw_ground_truth``). VSPW has no standard
  colour table; colours come from :func:`generate_palette`.
- ``cityscapes``: the 19 Cityscapes train ids with the standard Cityscapes colours.
- ``ade20k``: the 150 ADE20K (SceneParse150) classes with the standard ADE20K palette.

Or a YAML file: a list whose entries are names (``- road``) or mappings
(``- {name: road, color: [128, 64, 128]}``, RGB 0-255); a mapping ``{name: ..., classes:
[...]}`` is accepted too. Classes without a colour get the generated palette's colour for
their id.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditta_ros.errors import ConfigError

_VSPW_NAMES = """
wall ceiling door stair ladder escalator Playground_slide handrail_or_fence window rail
goal pillar pole floor ground grass sand athletic_field road path crosswalk building
house bridge tower windmill well_or_well_lid other_construction sky mountain stone wood
ice snowfield grandstand sea river lake waterfall water billboard_or_Bulletin_Board
sculpture pipeline flag parasol_or_umbrella cushion_or_carpet tent roadblock car bus
truck bicycle motorcycle wheeled_machine ship_or_boat raft airplane tyre traffic_light
lamp person cat dog horse cattle other_animal tree flower other_plant toy ball_net
backboard skateboard bat ball cupboard_or_showcase_or_storage_rack box
traveling_case_or_trolley_case basket bag_or_package trash_can cage plate
tub_or_bowl_or_pot bottle_or_cup barrel fishbowl bed pillow table_or_desk chair_or_seat
bench sofa shelf bathtub gun commode roaster other_machine refrigerator washing_machine
Microwave_oven fan curtain textiles clothes painting_or_poster mirror flower_pot_or_vase
clock book tool blackboard tissue screen_or_television computer printer Mobile_phone
keyboard other_electronic_product fruit food instrument train
"""

_CITYSCAPES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)), ("rider", (255, 0, 0)), ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
)

# Comma-separated (some names hold spaces); line breaks are insignificant.
_ADE20K_NAMES = """
wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet,
sidewalk, person, earth, door, table, mountain, plant, curtain, chair, car, water,
painting, sofa, shelf, house, sea, mirror, rug, field, armchair, seat, fence, desk,
rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column, signboard, chest of
drawers, counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path,
stairs, runway, case, pool table, pillow, screen door, stairway, river, bridge,
bookcase, blind, coffee table, toilet, flower, book, hill, bench, countertop, stove,
palm, kitchen island, computer, swivel chair, boat, bar, arcade machine, hovel, bus,
towel, light, truck, tower, chandelier, awning, streetlight, booth, television receiver,
airplane, dirt track, apparel, pole, land, bannister, escalator, ottoman, bottle,
buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything,
swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven,
ball, food, step, tank, trade name, microwave, pot, animal, bicycle, lake, dishwasher,
screen, blanket, sculpture, hood, sconce, vase, traffic light, tray, ashcan, fan, pier,
crt screen, plate, monitor, bulletin board, shower, radiator, glass, clock, flag
"""

# The ADE20K palette, RGB, two hex digits per channel, six per class, in class order.
_ADE20K_PALETTE_HEX = """
787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d787846
08ff33ff06528fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdc
ff095c7009ff08ffd607ffe0ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14
ff0829ff05990633ffeb0cffa0961400a3ff8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ff
ff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff00ff7000ff85ff0000ffa300ff6600c2ff00
008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ffff00f5ff0066ffad00ff0014
ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff00ffa3ff9900
00ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070
5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ff
ff007afff5000abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff
4700ff7a00ff00ffb8005cffb8ff000085ffffd60019c2c266ff005c00ff
"""

BUILTIN = ("vspw", "cityscapes", "ade20k")


@dataclass(frozen=True, eq=False)
class ClassSet:
    """Names and colours of C classes; ``palette`` is (C, 3) uint8 RGB, read-only."""

    name: str
    names: tuple[str, ...]
    palette: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        palette = np.array(self.palette, dtype=np.uint8)     # a private, read-only copy
        if palette.shape != (len(self.names), 3):
            raise ConfigError(f"class set {self.name!r}: palette has shape {palette.shape}, "
                              f"expected ({len(self.names)}, 3) for {len(self.names)} names")
        palette.setflags(write=False)
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        return len(self.names)


def generate_palette(num_colors: int) -> np.ndarray:
    """A deterministic (num_colors, 3) uint8 RGB palette of well-separated colours.

    Hues step by the golden-ratio fraction of a turn, so neighbouring ids differ strongly;
    saturation and value cycle through a few levels so that colours do not repeat when
    hues come close again.
    """
    golden = 0.618033988749895
    out = np.empty((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        hue = (i * golden) % 1.0
        sat = (0.95, 0.7, 0.5)[i % 3]
        val = (0.95, 0.75, 0.85, 0.6)[(i // 3) % 4]
        out[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)]
    return out


def _vspw() -> ClassSet:
    names = tuple(_VSPW_NAMES.split())
    return ClassSet("vspw", names, generate_palette(len(names)))


def _cityscapes() -> ClassSet:
    names = tuple(n for n, _ in _CITYSCAPES)
    return ClassSet("cityscapes", names, np.array([c for _, c in _CITYSCAPES], np.uint8))


def _ade20k() -> ClassSet:
    names = tuple(n.strip() for n in " ".join(_ADE20K_NAMES.split()).split(","))
    raw = bytes.fromhex("".join(_ADE20K_PALETTE_HEX.split()))
    palette = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
    return ClassSet("ade20k", names, palette)


def _parse_color(entry: Any, where: str) -> tuple[int, int, int]:
    ok = (isinstance(entry, (list, tuple)) and len(entry) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                  for v in entry))
    if not ok:
        raise ConfigError(f"{where}: color must be a list of 3 integers 0-255 (RGB), "
                          f"got {entry!r}")
    return int(entry[0]), int(entry[1]), int(entry[2])


def _classes_from_yaml(path: Path) -> ClassSet:
    import yaml  # only YAML class files need it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read class file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"class file {path} is not valid YAML: {exc}") from exc
    set_name = path.stem
    if isinstance(data, dict) and "classes" in data:
        set_name = str(data.get("name", set_name))
        data = data["classes"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"class file {path} must hold a non-empty list of class names or "
                          f"of {{name, color}} mappings, got {type(data).__name__}")
    names: list[str] = []
    colors: dict[int, tuple[int, int, int]] = {}
    for i, entry in enumerate(data):
        where = f"class file {path}, entry {i}"
        if isinstance(entry, str):
            names.append(entry)
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a name or a {{name, color}} mapping, got "
                              f"{entry!r}")
        unknown = set(entry) - {"name", "color"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: name, color)")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        names.append(name)
        if entry.get("color") is not None:
            colors[i] = _parse_color(entry["color"], where)
    palette = generate_palette(len(names))
    for i, color in colors.items():
        palette[i] = color
    return ClassSet(set_name, tuple(names), palette)


def load_classes(spec: str) -> ClassSet:
    """A built-in class set ("vspw", "cityscapes", "ade20k") or a YAML file's classes.

    Raises ConfigError naming the path and the problem for a missing or malformed file.
    """
    key = spec.strip().lower()
    if key == "vspw":
        return _vspw()
    if key == "cityscapes":
        return _cityscapes()
    if key == "ade20k":
        return _ade20k()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"classes {spec!r} is neither a built-in class set "
                          f"({', '.join(BUILTIN)}) nor an existing YAML file ({path} not found)")
    return _classes_from_yaml(path)


def colorize(labels: np.ndarray, palette: np.ndarray, unlabelled: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB image.

    Pixels equal to ``unlabelled``, negative, or >= C (the palette's length) are black.
    """
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    num = palette.shape[0]
    # One gather: the extra last row of the lookup table is black.
    lut = np.concatenate([palette, np.zeros((1, 3), np.uint8)])     # (C + 1, 3)
    valid = (labels >= 0) & (labels < num) & (labels != unlabelled)
    return lut[np.where(valid, labels, num)]
