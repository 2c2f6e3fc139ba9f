"""The Sphinx site builds with warnings as errors."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_sphinx_build_with_warnings_as_errors(tmp_path):
    from sphinx.cmd.build import build_main

    status = build_main(["-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path / "html")])
    assert status == 0
    api = (tmp_path / "html" / "generated" / "mixedfx.MixedEffectsRegressor.html").read_text()
    assert "predict" in api and "variance_components_" in api
    assert (tmp_path / "html" / "getting_started.html").exists()
