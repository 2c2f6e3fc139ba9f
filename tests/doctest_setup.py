"""The doctests' shared setup: names every docstring Example may use without building them.

A pytest plugin, loaded by tests/conftest.py (``pytest_plugins``), so that it applies to the
doctests wherever pytest collects them: the installed package's (``pytest ./tests --pyargs
mixedfx``, CI and the README) or a source tree's (``pytest``).  It is not a conftest.py
inside the package: pytest would load a source tree's copy beside the installed one.
mixedfx itself never imports it.  Each doctest starts with these names in its namespace:

``mixedfx``
    The package.
``data``
    A fresh copy (doctests may change it) of 600 rows from
    ``mixedfx.datasets.make_mixed_data(600, groups={"g": 30}, fixed_effects={"Intercept": 1.0,
    "x": 0.5}, random_sd={"g": 0.8}, random_state=2)``: columns ``y``, ``x`` and ``g``
    (levels ``g00`` to ``g29``); sd(g) 0.8, residual sd 1.
``model``
    ``mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)``: one ML fit of
    ``data``, shared by every doctest that names ``model`` (fitted the first time one does);
    doctests read it and never refit or change it.
"""

from __future__ import annotations

import pytest

_SHARED: dict = {}


def _shared_data():
    """The doctests' data set (built once; each doctest gets a copy)."""
    if "data" not in _SHARED:
        import mixedfx

        _SHARED["data"] = mixedfx.datasets.make_mixed_data(
            600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5}, random_sd={"g": 0.8}, random_state=2)
    return _SHARED["data"]


def _shared_model():
    """The doctests' fitted model (fitted once, the first time a doctest names ``model``)."""
    if "model" not in _SHARED:
        import mixedfx

        _SHARED["model"] = mixedfx.lmer("y ~ x + (1 | g)", _shared_data(), random_state=0, verbose=0)
    return _SHARED["model"]


@pytest.fixture(autouse=True)
def _doctest_setup(request, doctest_namespace):
    """Put ``mixedfx``, ``data`` and (where a doctest names it) ``model`` in each doctest's namespace."""
    test = getattr(request.node, "dtest", None)
    if test is None:  # not a doctest
        return
    import mixedfx

    doctest_namespace["mixedfx"] = mixedfx
    doctest_namespace["data"] = _shared_data().copy()
    if any("model" in example.source for example in test.examples):
        doctest_namespace["model"] = _shared_model()
    else:
        doctest_namespace.pop("model", None)
