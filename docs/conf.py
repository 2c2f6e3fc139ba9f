"""Sphinx configuration for the mixedfx documentation.

Build locally with::

    pip install ".[docs]"
    sphinx-build -W -b html docs docs/_build/html

The build runs the worked example (``_ext/worked_example.py``): it fits InstEval,
about a minute on 2 CPU cores, and caches its figures and numbers in
``docs/_generated/``, keyed on what they depend on (not on docstrings: editing the
documentation does not refit).  ``_ext/zero_inflation_example.py`` does the same for
the zero-inflation check of ``families.rst`` (two small fits to Salamanders), in
``docs/_generated/zero_inflation/``.
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# autosummary's stubs are rewritten on every build; stale ones (of renamed or removed
# names) would fail the build as pages outside every toctree.
shutil.rmtree(DOCS / "generated", ignore_errors=True)
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

project = "mixedfx"
author = "mixedfx developers"
copyright = "2026, mixedfx developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "worked_example",
    "zero_inflation_example",
]
# reStructuredText pages, and Markdown ones (scaling.md) through MyST
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
autosummary_generate = True
autodoc_default_options = {
    "members": True,
    # The estimators' shared methods (fit, summary, confint, ...) live on a private base
    # class: document inherited members, except those of scikit-learn's, TFP's and Python's bases.
    "inherited-members": ",".join(
        ["BaseEstimator", "RegressorMixin", "ClassifierMixin", "TransitionKernel", "BaseException", "tuple", "dict",
         "object"]
    ),
    "show-inheritance": False,
}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path = []
exclude_patterns = ["_build", "_generated", "_ext"]
html_theme = "alabaster"
html_theme_options = {
    "description": "lme4-style mixed models on TensorFlow Probability",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path = []


def _skip_metadata_routing(app, what, name, obj, skip, options):
    """scikit-learn's generated metadata-routing methods are scikit-learn's to document."""
    if name == "get_metadata_routing" or (name.startswith("set_") and name.endswith("_request")):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_routing)
