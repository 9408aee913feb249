"""pip installation of the ditta_ros Python package (no ROS build, no generated messages).

``colcon build`` (CMakeLists.txt) is the ROS 2 way to install this package: it also generates
``ditta_ros.msg``. This file serves plain pip installs elsewhere, so the pure-Python parts
(the engine, the evaluation tools) work without ROS. Never ``pip install .`` into the
colcon-built .venv of this repository: pip would delete the generated messages
(see README, "Layout").

Single sources read here: the version (ditta_ros/_version.py), the dependencies
(requirements/base.in, requirements/dev.in) and the console scripts
(resource/console_scripts.txt, also read by CMakeLists.txt).
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    text = (HERE / "ditta_ros" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("ditta_ros/_version.py must define __version__ = \"X.Y.Z\"")
    return match.group(1)


def read_requirements(name: str) -> list[str]:
    lines = (HERE / "requirements" / name).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines
            if line.split("#", 1)[0].strip()]


def read_console_scripts() -> list[str]:
    lines = (HERE / "resource" / "console_scripts.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="ditta_ros",
    version=read_version(),
    description="DiTTA test-time adaptation of SegFormer with SAM2 distillation, for ROS 2",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["ditta_ros", "ditta_ros.*"]),
    install_requires=read_requirements("base.in"),
    extras_require={
        "dev": read_requirements("dev.in"),
        "ros-kilted": read_requirements("ros-kilted.in"),
    },
    entry_points={"console_scripts": read_console_scripts()},
    zip_safe=False,
)
