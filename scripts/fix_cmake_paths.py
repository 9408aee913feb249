"""Rewrite the build-machine paths hard-coded in the ROS 2 wheels' CMake export files.

The ros-<distro>-* wheels on PyPI were built under /opt/python/cp311-cp311; their
``share/**/*.cmake`` files name that interpreter's include directory and numpy's include
directory, which do not exist here. Run with the virtual environment's Python:
``.venv/bin/python scripts/fix_cmake_paths.py .venv``. Idempotent; prints what it changed.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

_BUILD_PREFIX = "/opt/python/cp311-cp311"


def replacements() -> list[tuple[str, str]]:
    """(old, new) pairs, most specific first."""
    import numpy

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    return [
        (f"{_BUILD_PREFIX}/lib/python{version}/site-packages/numpy/_core/include", numpy_include),
        (f"{_BUILD_PREFIX}/include/python{version}", include),
    ]


def fix_tree(prefix: Path) -> int:
    """Rewrite every ``*.cmake`` under ``prefix/share``; return how many files changed."""
    pairs = replacements()
    changed = 0
    for path in sorted((prefix / "share").rglob("*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if _BUILD_PREFIX not in text:
            continue
        new = text
        for old, repl in pairs:
            new = new.replace(old, repl)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    prefix = Path(args[0] if args else sys.prefix)
    if not (prefix / "share").is_dir():
        print(f"fix_cmake_paths: {prefix}/share does not exist; nothing to fix", file=sys.stderr)
        return 0
    count = fix_tree(prefix)
    print(f"fix_cmake_paths: rewrote {count} CMake file(s) under {prefix}/share")
    leftover = [p for p in (prefix / "share").rglob("*.cmake")
                if _BUILD_PREFIX in p.read_text(encoding="utf-8", errors="surrogateescape")]
    if leftover:
        print(f"fix_cmake_paths: {_BUILD_PREFIX} still named in {leftover[0]} (and "
              f"{len(leftover) - 1} more): a new wheel layout? Extend replacements().",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
