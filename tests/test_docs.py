"""The documentation: every public name in the API reference with a runnable example, the
README's pointers, and the Sphinx site built with warnings as errors, its worked example's
figures and tables included."""

from __future__ import annotations

import doctest
import functools
import importlib
import inspect
import json
import pkgutil
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Modules whose ``__all__`` must be documented in docs/api.rst, name by name.
PUBLIC_MODULES = (
    "mixedfx",
    "mixedfx.formula",
    "mixedfx.design",
    "mixedfx.model",
    "mixedfx.model.separation",
    "mixedfx.inference",
    "mixedfx.results",
    "mixedfx.plotting",
    "mixedfx.datasets",
    "mixedfx.examples.tutorial",
    "mixedfx.examples.zero_inflation",
    "mixedfx.marginal_means",
    "mixedfx.explained_variance",
    "mixedfx.profile",
)

_DOCUMENTING = re.compile(
    r"^\.\.\s+(?:py:)?(?:auto)?(?:module|class|function|data|exception|attribute)::\s*([\w.]+)\s*$"
)
_AUTOSUMMARY_ENTRY = re.compile(r"^\s{3}(mixedfx(?:\.\w+)+)\s*$")


def _documented_names(text: str) -> set[str]:
    """Dotted names that docs/api.rst documents: autosummary entries and directives."""
    names = set()
    for line in text.splitlines():
        match = _DOCUMENTING.match(line.strip()) or _AUTOSUMMARY_ENTRY.match(line)
        if match:
            names.add(match.group(1))
    return names


def _resolve(dotted: str):
    """The object a dotted name refers to (a module, or an attribute of one)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def test_every_public_name_is_in_the_api_reference():
    documented = _documented_names((DOCS / "api.rst").read_text())
    documented_objects = [_resolve(name) for name in sorted(documented)]
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            qualified = f"{module_name}.{name}"
            obj = getattr(module, name)
            if qualified in documented or any(obj is other for other in documented_objects):
                continue
            missing.append(qualified)
    assert not missing, "public names missing from docs/api.rst: " + ", ".join(missing)


# -- every public name has a runnable example -------------------------------------------------
def _public_names() -> dict[str, object]:
    """Every public name: the ``__all__`` of :data:`PUBLIC_MODULES` and every class, function
    and constant docs/api.rst documents, each once (under the first name it is found by)."""
    candidates = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        candidates += [(f"{module_name}.{name}", getattr(module, name)) for name in module.__all__]
    for dotted in sorted(_documented_names((DOCS / "api.rst").read_text())):
        obj = _resolve(dotted)
        if not inspect.ismodule(obj):  # api.rst's module directives only set the current module
            candidates.append((dotted, obj))
    unique: dict[object, tuple[str, object]] = {}
    for dotted, obj in candidates:
        # A constant is identified by where it is defined (equal strings or ints may be
        # one object), anything else by identity.
        key = _data_documentation(dotted)[0] if _is_data(obj) else id(obj)
        unique.setdefault(key, (dotted, obj))
    return dict(unique.values())


@functools.lru_cache(maxsize=1)
def _package_modules() -> tuple[str, ...]:
    package = importlib.import_module("mixedfx")
    names = ["mixedfx"] + [info.name for info in pkgutil.walk_packages(package.__path__, "mixedfx.")]
    return tuple(name for name in names if not name.endswith("__main__"))


def _is_data(obj) -> bool:
    """A constant (a dict, tuple, str, int ...): it cannot carry a docstring of its own."""
    return not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj))


def _data_documentation(dotted: str) -> tuple[str, str]:
    """Where a constant is documented, and the text: the ``#:`` comment (or string) at its
    assignment in the module that defines it, which is what Sphinx's ``autodata`` shows."""
    from sphinx.pycode import ModuleAnalyzer

    name = dotted.rsplit(".", 1)[1]
    obj = _resolve(dotted)
    for module_name in _package_modules():
        module = importlib.import_module(module_name)
        if getattr(module, name, None) is not obj:
            continue
        documented = ModuleAnalyzer.for_module(module_name).find_attr_docs().get(("", name))
        if documented:
            return f"{module_name}.{name}", "\n".join(documented)
    return dotted, ""


def _documentation(dotted: str, obj) -> tuple[str, str]:
    if _is_data(obj):
        return _data_documentation(dotted)
    return dotted, inspect.getdoc(obj) or ""


def _runnable_examples(text: str) -> list[doctest.Example]:
    """The doctest examples of ``text`` that run (those not marked ``+SKIP``)."""
    examples = doctest.DocTestParser().get_examples(text)
    return [example for example in examples if not example.options.get(doctest.SKIP)]


def test_every_public_name_has_a_runnable_example():
    """Each public name's docstring (a constant's documentation comment) holds at least one
    doctest example that runs: pytest's ``--doctest-modules`` runs the docstrings, and
    :func:`test_examples_of_constants_run` the comments."""
    missing = []
    for dotted, obj in _public_names().items():
        where, text = _documentation(dotted, obj)
        if not _runnable_examples(text):
            missing.append(where)
    assert not missing, "public names without a runnable example (a '>>>' line): " + ", ".join(sorted(missing))


_CONSTANTS = sorted(dotted for dotted, obj in _public_names().items() if _is_data(obj))


def test_constants_are_found():
    documented = {_data_documentation(dotted)[0] for dotted in _CONSTANTS}
    assert documented == {
        "mixedfx.__version__", "mixedfx.design.fixed.EVALUATION_CONTEXT", "mixedfx.design.random.NEW_LEVEL_POLICIES",
        "mixedfx.design.frame.MISSING_POLICIES",
        "mixedfx.model.families.FAMILIES", "mixedfx.model.joint.RESPONSE", "mixedfx.examples.tutorial.FIGURES",
        "mixedfx.examples.tutorial.N_ORDINAL_STUDENTS", "mixedfx.examples.tutorial.PARTS",
        "mixedfx.examples.zero_inflation.FIGURE", "mixedfx.examples.zero_inflation.N_SIMULATIONS",
        "mixedfx.marginal_means.DF_METHODS", "mixedfx.lmertest.DDF_METHODS",
    }
    assert len(_CONSTANTS) == len(documented)  # each once


def test_the_example_rule_can_fail():
    """The checks above see a missing or skipped example, in a docstring or a comment."""
    assert not _runnable_examples("No example.\n\n    >>> run()  # doctest: +SKIP\n")
    assert len(_runnable_examples("Example.\n\n>>> 1 + 1\n2\n")) == 1
    assert _data_documentation("mixedfx.model.FAMILIES")[0] == "mixedfx.model.families.FAMILIES"
    assert ">>> " in _data_documentation("mixedfx.model.FAMILIES")[1]


@pytest.mark.parametrize("dotted", _CONSTANTS)
def test_examples_of_constants_run(dotted):
    """A constant's example lives in its documentation comment, which doctest does not
    collect: run it here, as pytest runs the docstrings."""
    where, text = _data_documentation(dotted)
    test = doctest.DocTestParser().get_doctest(text, {}, where, where, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    runner.run(test, out=report.append)
    assert runner.tries > 0, f"{where} has no example in its documentation comment"
    assert runner.failures == 0, "".join(report)


def test_lme4_fixture_of_the_worked_example_fits_its_training_rows():
    """lme4 was fitted to the rows the worked example's split keeps (the fixture records a
    digest of their positions; tests/fixtures/make_tutorial_fixture.py remakes it)."""
    import hashlib

    import mixedfx
    from mixedfx.examples.insteval import split

    fixture = json.loads((ROOT / "tests" / "fixtures" / "lme4_insteval_train.json").read_text())
    data = mixedfx.datasets.load_insteval()
    train, _ = split(data, train_fraction=fixture["split"]["train_fraction"],
                     random_state=fixture["split"]["random_state"])
    rows = sorted(int(r) for r in train.index)
    assert len(rows) == fixture["split"]["n_rows"] == fixture["ml"]["n_obs"] == fixture["reml"]["n_obs"]
    assert hashlib.sha256("".join(f"{r}\n" for r in rows).encode()).hexdigest() == fixture["split"]["rows_sha256"]
    assert fixture["ml"]["method"] == "ML" and fixture["reml"]["method"] == "REML"
    assert fixture["ml"]["n_levels"] == {"s": train["s"].nunique(), "d": train["d"].nunique(), "dept": 14}


def test_worked_example_cache_key_ignores_docstrings_and_comments(tmp_path, monkeypatch):
    """The worked example's cache key reads code, not prose: editing a docstring or a
    comment keeps the cached fits, editing code does not."""
    monkeypatch.syspath_prepend(str(DOCS / "_ext"))
    from worked_example import _code_only

    versions = {
        "original": 'def f(x):\n    """Double x."""\n    return 2 * x\n',
        "docstring": 'def f(x):\n    """Twice x, documented anew."""\n    return 2 * x  # a comment\n',
        "code": 'def f(x):\n    """Double x."""\n    return 3 * x\n',
    }
    dumped = {}
    for name, text in versions.items():
        (tmp_path / f"{name}.py").write_text(text)
        dumped[name] = _code_only(tmp_path / f"{name}.py")
    assert dumped["original"] == dumped["docstring"]
    assert dumped["original"] != dumped["code"]


def test_readme_points_to_the_docs_and_how_to_build_them():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    assert "docs/" in section
    assert "sphinx-build -W -b html docs docs/_build/html" in section
    assert 'pip install ".[docs]"' in section


# -- the built site ---------------------------------------------------------------------------
class _PageParser(HTMLParser):
    """The <img> sources and the tables (rows of cell texts) of an HTML page."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the PNG signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    from sphinx.cmd.build import build_main

    out = tmp_path_factory.mktemp("docs") / "html"
    status = build_main(["-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)])
    assert status == 0
    return out


@pytest.mark.slow
def test_sphinx_build_with_warnings_as_errors(built_site):
    api = (built_site / "generated" / "mixedfx.MixedEffectsRegressor.html").read_text()
    assert "predict" in api and "variance_components_" in api
    for page in ("getting_started", "formulas", "families", "method", "prediction", "results", "diagnostics",
                 "performance", "scaling", "lme4", "worked_example", "api"):
        assert (built_site / f"{page}.html").exists(), page


@pytest.mark.slow
def test_worked_example_page_has_its_figures(built_site):
    from mixedfx.examples.tutorial import FIGURES

    page = _PageParser()
    page.feed((built_site / "worked_example.html").read_text())
    shown = {Path(src).name for src in page.images}
    assert set(FIGURES.values()) <= shown, f"figures missing from the page: {set(FIGURES.values()) - shown}"
    for src in page.images:
        path = (built_site / src).resolve()
        assert path.is_file(), src
        assert 5_000 < path.stat().st_size < 5_000_000, (src, path.stat().st_size)
        width, height = _png_size(path)
        assert 300 <= width <= 4000 and 200 <= height <= 4000, (src, width, height)


@pytest.mark.slow
def test_worked_example_page_compares_with_lme4(built_site):
    page = _PageParser()
    page.feed((built_site / "worked_example.html").read_text())
    tables = [t for t in page.tables if t and any("lme4" in cell for cell in t[0]) and "mixedfx (ML)" in t[0]]
    assert len(tables) == 1, [t[0] for t in page.tables if t]
    header, *rows = tables[0]
    by_name = {row[0]: row for row in rows}
    assert {"(Intercept)", "service", "sd(s)", "sd(d)", "sd(dept)", "sigma", "logLik"} <= set(by_name)
    lme4 = header.index(next(cell for cell in header if cell.startswith("lme4") and "(ML)" in cell))
    fixture = json.loads((ROOT / "tests" / "fixtures" / "lme4_insteval_train.json").read_text())["ml"]
    # The lme4 column is read from the fixture at build time.
    assert float(by_name["service"][lme4]) == pytest.approx(fixture["fixed_effects"]["service"], abs=1e-4)
    assert float(by_name["logLik"][lme4]) == pytest.approx(fixture["logLik"], abs=1e-3)
    sds = {row["grp"]: row["sdcor"] for row in fixture["varcorr"]}
    for group in ("s", "d", "dept"):
        assert float(by_name[f"sd({group})"][lme4]) == pytest.approx(sds[group], abs=1e-4)
    # mixedfx's column holds finite numbers close to lme4's.
    ours = header.index("mixedfx (ML)")
    for name in ("sd(s)", "sd(d)", "sigma"):
        assert float(by_name[name][ours]) == pytest.approx(float(by_name[name][lme4]), rel=0.05), name
    text = (built_site / "worked_example.html").read_text()
    assert "ordinal" in text and "cutpoint 1|2" in text
    assert "|n_train|" not in text  # every substitution was defined


@pytest.mark.slow
def test_families_page_shows_the_zero_inflation_check(built_site):
    """families.rst's worked check on Salamanders: the figure, and the table of observed
    and simulated zeros, the observed count being the CSV's; the Poisson GLMM's
    simulations all fall short of it, the zero-inflated model's cover it."""
    import pandas as pd

    from mixedfx.examples.zero_inflation import FIGURE

    page = _PageParser()
    page.feed((built_site / "families.html").read_text())
    figure = next(src for src in page.images if Path(src).name == FIGURE)
    width, height = _png_size((built_site / figure).resolve())
    assert 500 <= width <= 2000 and 250 <= height <= 1000, (width, height)
    table = next(t for t in page.tables if t and t[0][0] == "zeros in the response")
    rows = {row[0].split(" GLMM")[0]: row for row in table[1:]}
    observed = int(rows["observed"][1])
    assert observed == int((pd.read_csv(ROOT / "tests" / "fixtures" / "salamanders.csv")["count"] == 0).sum()) == 387
    low, high = (float(v) for v in rows["Poisson"][2].split(" to "))
    assert float(rows["Poisson"][1]) < observed - 50 and high < observed  # about 95 zeros short, every simulation
    assert rows["Poisson"][3] == "0.0 %"
    low, high = (float(v) for v in rows["zero-inflated Poisson"][2].split(" to "))
    assert abs(float(rows["zero-inflated Poisson"][1]) - observed) < 10 and low < observed < high
    assert 20.0 < float(rows["zero-inflated Poisson"][3].rstrip(" %")) < 80.0
