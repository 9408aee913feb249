"""The single source of the package version (setup.py, package.xml and the docs follow it)."""

__version__ = "0.1.0"
