"""The installed package: what `pip install .` puts in site-packages is what the suite imports.

CI (``.ci/run``, the README's test command) installs mixedfx non-editably into a fresh
virtual environment and runs pytest outside the source tree's import path, so that a
module, a data file or an entry point missing from the wheel fails here rather than in a
user's hands.  In a developer's run from an uninstalled source tree these are skipped, and
the header line ``mixedfx 0.1.0: <path>`` says which mixedfx was imported.
"""

import json
from importlib import metadata
from pathlib import Path

import pytest

import mixedfx


def _distribution():
    try:
        return metadata.distribution("mixedfx")
    except metadata.PackageNotFoundError:
        return None


def _editable(distribution) -> bool:
    direct_url = distribution.read_text("direct_url.json")
    return bool(direct_url) and json.loads(direct_url).get("dir_info", {}).get("editable", False)


DISTRIBUTION = _distribution()
pytestmark = pytest.mark.skipif(
    DISTRIBUTION is None or _editable(DISTRIBUTION),
    reason="mixedfx is not installed non-editably (a source-tree run); CI installs it with pip install '.[test]'")


def test_the_suite_imports_the_installed_package():
    installed = Path(DISTRIBUTION.locate_file("mixedfx/__init__.py")).resolve()
    assert Path(mixedfx.__file__).resolve() == installed, (mixedfx.__file__, installed)
    assert DISTRIBUTION.version == mixedfx.__version__


def test_the_wheel_holds_the_package_data_and_every_subpackage():
    files = {str(path) for path in DISTRIBUTION.files}
    assert "mixedfx/datasets/data/insteval.csv.gz" in files
    for package in ("formula", "design", "model", "inference", "datasets", "examples"):
        assert f"mixedfx/{package}/__init__.py" in files, package


def test_the_console_script_entry_point():
    (entry,) = [e for e in DISTRIBUTION.entry_points if e.group == "console_scripts" and e.name == "mixedfx"]
    from mixedfx.cli import main

    assert entry.load() is main
