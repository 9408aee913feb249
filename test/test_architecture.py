"""docs/ARCHITECTURE.md's signatures are the code's: every ``def`` in a module section's code
block names the parameters of the real function or method, in order ("..." ends a list that
is shortened on purpose), and every name it places in a module exists there."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
SECTION = re.compile(r"^## (\S+\.py)\b", re.M)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
DEF = re.compile(r"^( *)def (\w+)\((.*?)\)", re.S | re.M)
CLASS = re.compile(r"^class (\w+)", re.M)


def _module_name(path: str) -> str:
    path = path if path.startswith("ditta_ros/") else f"ditta_ros/{path}"
    return path.removesuffix(".py").replace("/", ".")


def _names(params: str) -> list[str]:
    """Parameter names of a documented parameter list ('...' kept as a marker)."""
    flat = params
    while re.search(r"\[[^\[\]]*\]", flat):
        flat = re.sub(r"\[[^\[\]]*\]", "", flat)       # drop subscripts: tuple[int, int]
    names = []
    for part in flat.split(","):
        part = part.strip()
        if part == "...":
            names.append("...")
        elif part and part not in ("*", "/", "self", "cls"):
            names.append(re.split(r"[:=\s]", part.lstrip("*"), maxsplit=1)[0])
    return names


def _documented() -> list[tuple[str, str, str, list[str]]]:
    """(module, class or '', function, parameter names) for every documented def."""
    text = DOC.read_text()
    found = []
    sections = list(SECTION.finditer(text))
    for i, match in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(text)
        module = _module_name(match.group(1))
        for block in BLOCK.findall(text[match.end():end]):
            classes = [(m.start(), m.group(1)) for m in CLASS.finditer(block)]
            for d in DEF.finditer(block):
                owner = ""
                if d.group(1):                             # indented: a method
                    owner = max((c for c in classes if c[0] < d.start()), default=(0, ""))[1]
                found.append((module, owner, d.group(2), _names(d.group(3))))
    return found


DOCUMENTED = _documented()


def test_the_document_has_signatures_to_check() -> None:
    modules = {m for m, *_ in DOCUMENTED}
    assert {"ditta_ros.engine.session", "ditta_ros.engine.warmup",
            "ditta_ros.engine.sam2_teacher", "ditta_ros.engine.runner"} <= modules
    assert len(DOCUMENTED) > 30


@pytest.mark.parametrize(("module", "owner", "function", "names"), DOCUMENTED,
                         ids=[f"{m.split('.')[-1]}.{o + '.' if o else ''}{f}"
                              for m, o, f, _ in DOCUMENTED])
def test_documented_signature_matches_the_code(module: str, owner: str, function: str,
                                               names: list[str]) -> None:
    target: Any = importlib.import_module(module)
    if owner:
        target = getattr(target, owner)
    assert hasattr(target, function), f"{module} {owner} has no {function}"
    actual = [p for p in inspect.signature(getattr(target, function)).parameters
              if p not in ("self", "cls")]
    if "..." in names:
        prefix = names[:names.index("...")]
        assert actual[:len(prefix)] == prefix, f"documented {names}, code {actual}"
    else:
        assert actual == names, f"documented {names}, code {actual}"


def test_a_public_engine_name_means_one_thing_whatever_was_imported_first() -> None:
    """No re-exported name equals a submodule's name: after importing every submodule (as
    ``from ditta_ros.engine import run_w2f`` does for adapt.py), each exported name is still
    what it was, and ``ditta_ros.engine.adapt`` is the module."""
    import pkgutil
    import types

    import ditta_ros.engine as engine

    submodules = {m.name for m in pkgutil.iter_modules(engine.__path__)}
    assert not submodules & set(engine.__all__)
    before = {name: getattr(engine, name) for name in engine.__all__}
    for name in submodules:
        importlib.import_module(f"ditta_ros.engine.{name}")
    for name, value in before.items():
        assert getattr(engine, name) is value, name
        assert not isinstance(value, types.ModuleType), name
    from ditta_ros.engine import adapt
    assert isinstance(adapt, types.ModuleType) and callable(adapt.adapt)


def test_config_and_labels_import_the_errors_leaf_without_the_engine() -> None:
    import subprocess
    import sys

    code = ("import sys, ditta_ros.config, ditta_ros.labels\n"
            "print(sorted(m for m in sys.modules if m.startswith('ditta_ros.engine')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=DOC.parents[1], check=True)
    assert out.stdout.strip() == "[]", out.stdout
