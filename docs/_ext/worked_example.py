"""Sphinx extension: run the worked example when the documentation builds.

At ``builder-inited`` it starts ``python -m mixedfx.examples.tutorial`` in two
subprocesses, ``--part gaussian`` and ``--part ordinal``, which fit the models and write
the figures and their numbers into ``docs/_generated/tutorial/``, while Sphinx goes on
reading the other pages (the worked example sorts last).  When Sphinx reaches
``worked_example.rst`` it waits for them, combines their numbers (``--combine``, in this
process) and writes them as reStructuredText snippets (``*.inc``: substitution
definitions and tables) that the page includes.  lme4's estimates are read from the
test fixture ``tests/fixtures/lme4_insteval_train.json`` (lme4's ML and REML fits to the
same training rows, made by ``tests/fixtures/make_tutorial_fixture.py``), never retyped.

What bounds the build time
--------------------------

* The fits are the ones the page shows, with mixedfx's defaults and the default
  stopping rule (no reduced iteration count, no smaller data for CI): three fits, each
  compiled once (the tutorial's fit to the 80% training rows, and the ordinal and the
  Gaussian model on a 300-student subsample).  Most of their time is XLA compilation.
  The comparison with lme4 uses the 80% fit itself (lme4 was fitted to the same rows),
  so no separate fit to all the rows is needed.
* The two parts are about equally long (the 80% fit and the Gaussian subsample fit in
  one, the ordinal fit in the other) and run side by side, on two cores.
* The outputs are cached in ``docs/_generated/tutorial/`` (ignored by git).  The cache
  key (:func:`_fingerprint`) holds what the numbers and figures depend on, and
  nothing else: the code of mixedfx (its syntax tree without docstrings, so an edit of
  a docstring, a comment or the layout keeps the cache), its data files, the lme4
  fixture, the commands below, the versions of Python and of the libraries that
  compute or draw, and the platform.  On a hit nothing is fitted; the snippets are
  still rewritten from the cached numbers (cheap), so changes to this file's rendering
  show at once.  Delete ``docs/_generated`` to force a rerun.
* A clean clone (as in CI) has no cache, so there the example always runs: about a
  minute on two CPU cores (the page prints the time it took).
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
OUT = DOCS / "_generated" / "tutorial"
FIXTURE = ROOT / "tests" / "fixtures" / "lme4_insteval_train.json"
STAMP = OUT / "stamp.txt"
#: The halves of the example, run as two processes (mixedfx.examples.tutorial.PARTS).
PARTS = ("gaussian", "ordinal")
#: The arguments of each part's ``python -m mixedfx.examples.tutorial`` (after OUT).
COMMANDS = {
    "gaussian": ["--part", "gaussian", "--quiet", "--lme4", str(FIXTURE.relative_to(ROOT))],
    "ordinal": ["--part", "ordinal", "--quiet"],
}
SNIPPETS = ("numbers.inc", "fit_table.inc", "lme4_table.inc", "ordinal_table.inc", "warnings.inc")
PAGE = "worked_example"
#: The libraries whose versions the numbers and figures depend on.
LIBRARIES = ("numpy", "scipy", "pandas", "tensorflow", "tensorflow-probability", "formulaic", "scikit-learn",
             "matplotlib", "arviz")
#: The fits take about a minute on 2 CPU cores; give up after this many seconds.
TIMEOUT_SECONDS = 900

_state: dict = {}


def _code_only(path: Path) -> str:
    """A Python file's syntax tree without docstrings: what runs, not how it is written."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _fingerprint() -> str:
    """The cache key: everything the worked example's numbers and figures depend on."""
    return fingerprint({"fixture": FIXTURE.read_bytes()}, COMMANDS)


def fingerprint(inputs: dict, commands) -> str:
    """A cache key of generated documentation: the code of mixedfx (without docstrings),
    its data files, ``inputs`` (label: bytes, read outside the package), the ``commands``
    that generate, and the versions of Python and of :data:`LIBRARIES`, and the platform."""
    digest = hashlib.sha256()

    def add(label: str, content) -> None:
        digest.update(label.encode() + b"\0")
        digest.update(content if isinstance(content, bytes) else str(content).encode())
        digest.update(b"\0")

    package = ROOT / "mixedfx"
    for path in sorted(package.rglob("*.py")):
        add(str(path.relative_to(ROOT)), _code_only(path))
    for path in sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in (".gz", ".csv")):
        add(str(path.relative_to(ROOT)), path.read_bytes())
    for label, content in inputs.items():
        add(label, content)
    add("commands", json.dumps(commands, sort_keys=True))
    add("python", sys.version)
    for library in LIBRARIES:
        try:
            add(library, metadata.version(library))
        except metadata.PackageNotFoundError:
            add(library, "absent")
    add("platform", f"{platform.system()} {platform.machine()}")
    return digest.hexdigest()


def _outputs() -> list[Path]:
    """What the page needs from the fits: the numbers, the summary and the figures they name."""
    needed = [OUT / "numbers.json", OUT / "summary.txt"]
    try:
        figures = json.loads((OUT / "numbers.json").read_text())["figures"]
    except (OSError, ValueError, KeyError):
        return needed
    return needed + [OUT / name for name in figures]


def _cached() -> bool:
    return STAMP.exists() and STAMP.read_text().strip() == _state["fingerprint"] and all(
        path.exists() for path in _outputs())


def start(app) -> None:
    """``builder-inited``: start the worked example unless its cached outputs are up to date.

    The Gaussian and the ordinal halves run as two processes side by side: each spends
    seconds in single-threaded XLA compilation, during which the other can compute."""
    _state["fingerprint"] = _fingerprint()
    _state["regenerated"] = False
    if _cached():
        logger.info("worked example: cached outputs in %s are up to date", OUT.relative_to(ROOT))
        _render()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for path in [STAMP, *_outputs(), *(OUT / name for name in SNIPPETS), *OUT.glob("numbers-*.json")]:
        path.unlink(missing_ok=True)
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    logger.info("worked example: fitting InstEval in the background (about a minute on 2 CPU cores) ...")
    processes = []
    for part in PARTS:
        command = [sys.executable, "-m", "mixedfx.examples.tutorial", str(OUT), *COMMANDS[part]]
        log = open(OUT / f"run-{part}.log", "w")
        processes.append((part, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                          log))
    _state.update(processes=processes, started=time.perf_counter(), regenerated=True)
    if app.parallel > 1:
        finish()  # parallel reading forks workers: wait here, before any reads, instead


def _kill_running() -> None:
    """At exit (a build that failed before the page was read): stop the fits."""
    for _, process, log in _state.pop("processes", ()):
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def outdated(app, env, added, changed, removed):
    """``env-get-outdated``: the page must be read again when its numbers are recomputed."""
    return [PAGE] if _state.get("regenerated") and PAGE in env.found_docs else []


def finish(app=None, docname=None, source=None) -> None:
    """Wait for the worked example (``source-read`` of its page, or the end of reading),
    combine its two parts and write its snippets."""
    if docname not in (None, PAGE) or "processes" not in _state:
        return
    deadline = time.perf_counter() + TIMEOUT_SECONDS
    failures = []
    for part, process, log in _state.pop("processes"):
        try:
            code = process.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = "timeout"
        log.close()
        if code != 0:
            failures.append(f"--part {part} failed ({code}); the end of {log.name}:\n"
                            + Path(log.name).read_text()[-3000:])
    if failures:
        raise ExtensionError("the worked example failed:\n" + "\n".join(failures))
    from mixedfx.examples import tutorial

    tutorial.main([str(OUT), "--combine", "--quiet"])  # numbers.json, and the comparison's figure
    numbers = json.loads((OUT / "numbers.json").read_text())
    numbers["generation_seconds"] = time.perf_counter() - _state.pop("started")
    (OUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
    STAMP.write_text(_state["fingerprint"] + "\n")
    _render()
    logger.info("worked example: done in %.1f s", numbers["generation_seconds"])


def _finish_after_reading(app, env) -> None:
    finish()


def _render() -> None:
    """Write the snippets from the numbers (and the lme4 fixture)."""
    write_snippets(json.loads((OUT / "numbers.json").read_text()), json.loads(FIXTURE.read_text()))


# -- reStructuredText ---------------------------------------------------------------------------
def _thousands(value) -> str:
    return f"{int(value):,}"


def _seconds(value) -> str:
    return f"{value:.1f}"


def _table(header, rows, *, widths=None) -> str:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header, *rows]:
        for k, cell in enumerate(row):
            lines.append(("   * - " if k == 0 else "     - ") + (str(cell) if str(cell) else " "))
    return "\n".join(lines) + "\n"


def _sds(records) -> dict:
    return {row.get("group", row.get("grp")): row["sdcor"] for row in records if row.get("var2") in (None, {})}


def write_snippets(numbers: dict, fixture: dict) -> None:
    """Write the ``*.inc`` files the worked example page includes (each only when its
    content changes, so that an unchanged page is not read again)."""
    fit, split, prediction, ordinal = numbers["fit"], numbers["split"], numbers["prediction"], numbers["ordinal"]
    reference, reml = fixture["ml"], fixture["reml"]
    subs = {
        "n_rows": _thousands(split["n_rows"]),
        "n_train": _thousands(split["n_train"]),
        "n_test": _thousands(split["n_test"]),
        "unseen_students": _thousands(split["unseen_students"]),
        "unseen_instructors": _thousands(split["unseen_instructors"]),
        "fit_seconds": _seconds(fit["elapsed_seconds"]),
        "fit_first_call": _seconds(fit["first_call_seconds"]),
        "fit_n_iter": str(fit["n_iter"]),
        "fit_n_averaged": str(fit["n_averaged"]),
        "fit_rhat": f"{fit['rhat']:.3f}",
        "fit_ess_min": f"{fit['ess_min']:.0f}",
        "fit_acceptance": f"{fit['acceptance_rate']:.2f}",
        "rmse": f"{prediction['rmse']:.4f}",
        "rmse_population": f"{prediction['rmse_population']:.4f}",
        "lme4_version": str(reference.get("lme4_version", "?")).replace("1.1.31", "1.1-31"),
        "lme4_seconds": _seconds(reference["fit_seconds"]) if reference.get("fit_seconds") else "(not recorded)",
        "lme4_rows": _thousands(reference["n_obs"]),
        "ord_students": _thousands(ordinal["n_students"]),
        "ord_train": _thousands(ordinal["n_train"]),
        "ord_test": _thousands(ordinal["n_test"]),
        "ord_seconds": _seconds(ordinal["fit"]["elapsed_seconds"]),
        "ord_first_call": _seconds(ordinal["fit"]["first_call_seconds"]),
        "ord_n_iter": str(ordinal["fit"]["n_iter"]),
        "ordg_seconds": _seconds(ordinal["gaussian_fit"]["elapsed_seconds"]),
        "lpd_ordinal": f"{ordinal['lpd_ordinal']:.4f}",
        "lpd_gaussian": f"{ordinal['lpd_gaussian']:.4f}",
        "acc_ordinal": f"{100 * ordinal['accuracy_ordinal']:.1f} %",
        "acc_gaussian": f"{100 * ordinal['accuracy_gaussian']:.1f} %",
        "lpd_verdict": ("higher than" if ordinal["lpd_ordinal"] > ordinal["lpd_gaussian"] else "lower than"),
        "generation_seconds": _seconds(numbers["generation_seconds"]),
    }
    _write(OUT / "numbers.inc", "".join(f".. |{key}| replace:: {value}\n" for key, value in subs.items()))

    # The 80% fit: its fit record (fit_summary_.table()).
    rows = [(row["parameter"], f"{row['initial']:.4f}", f"{row['estimate']:.4f}", f"{row['mcse']:.5f}",
             _tolerance_text(row['tolerance'])) for row in fit["fit_summary_table"]]
    header = ("parameter", "initial", "estimate", "Monte Carlo SE", "tolerance")
    _write(OUT / "fit_table.inc", _table(header, rows))

    # The 80% fit (ML) against lme4's ML fit to the same rows, with lme4's REML estimates alongside.
    reml_values = dict(reml["fixed_effects"])
    for group, sd in _sds(reml["varcorr"]).items():
        reml_values["sigma" if group == "Residual" else f"sd({group})"] = sd
    reml_values["logLik"] = reml["logLik"]
    rows = []
    for row in numbers["lme4"]["table"]:
        name = row["parameter"]
        if name == "logLik":
            relative = f"{row['difference']:+.4f}"
        elif name.startswith("sd(") or name == "sigma":
            relative = f"{row['relative']:+.2f} %"
        else:
            relative = f"{row['relative']:+.4f} SE"
        digits = 3 if name == "logLik" else 4
        reml_cell = f"{reml_values[name]:.{digits}f}" if name in reml_values else ""
        rows.append((name, f"{row['mixedfx']:.{digits}f}", f"{row['lme4']:.{digits}f}", relative, reml_cell))
    header = ("parameter", "mixedfx (ML)", f"lme4 {subs['lme4_version']} (ML)", "difference", "lme4 (REML)")
    _write(OUT / "lme4_table.inc", _table(header, rows, widths=(16, 16, 16, 16, 16)))

    # The ordinal model.
    rows = [(f"cutpoint {name}", f"{value:.3f}") for name, value in ordinal["cutpoints"].items()]
    rows += [(name, f"{value:.3f}") for name, value in ordinal["fixed_effects"].items()]
    rows += [(f"sd({group})", f"{sd:.3f}") for group, sd in _sds(ordinal["variance_components"]).items()]
    ordinal_table = _table(("parameter", "estimate (logit scale)"), rows)
    shares = [(row["rating"], f"{row['observed']:.3f}", f"{row['ordinal']:.3f}", f"{row['gaussian']:.3f}")
              for row in ordinal["class_shares"]]
    ordinal_table += "\n" + _table(("rating", "observed share", "ordinal model", "Gaussian model"), shares)
    _write(OUT / "ordinal_table.inc", ordinal_table)

    # The warnings the fits raised, verbatim, and what they mean.
    _write(OUT / "warnings.inc", _warnings_text(numbers))


def _tolerance_text(value) -> str:
    """A tolerance cell: the figure, or a note where the rule judges nothing (a Gaussian
    fit's fixed effects, reported as exact GLS)."""
    return "not judged (exact GLS)" if value is None or value != value else f"{value:.5f}"


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _warnings_text(numbers: dict) -> str:
    fit = numbers["fit"]
    rhat = f"R-hat of the random effects' mean squares {fit['rhat']:.3f}"
    if not math.isnan(fit.get("rhat_noise", math.nan)):
        rhat += f", against a chance level of 1 + {fit['rhat_noise']:.3f}"
    if not numbers["warnings"]:
        return ("None of the fits raised a warning: each met its stopping rule before ``max_iter``, and the "
                f"E-step's chains agreed (the 80% fit's {rhat}; smallest effective sample size of a random "
                f"effect {fit['ess_min']:.0f}).  :doc:`diagnostics` explains these numbers.\n")
    lines = [f"* {item['fit']}: :class:`~mixedfx.{item['category']}`: {_escape(item['message'])}"
             if item["category"] in ("SamplerWarning", "ConvergenceWarning")
             else f"* {item['fit']}: ``{item['category']}``: {_escape(item['message'])}"
             for item in numbers["warnings"]]
    text = "The fits raised these warnings:\n\n" + "\n".join(lines) + "\n"
    categories = {item["category"] for item in numbers["warnings"]}
    if "SamplerWarning" in categories:
        text += (
            "\nA :class:`~mixedfx.SamplerWarning` says that the E-step's chains disagree about the scale of "
            f"some random effects over the kept draws (the 80% fit's {rhat}; smallest effective sample size "
            f"of a random effect {fit['ess_min']:.0f}).  It does not concern the estimates, which average "
            "many EM iterations and met the stopping rule (the comparison with lme4 above shows how close "
            "they are); it concerns what is computed from the draws, as the warning says.  More draws per "
            "E-step (``n_draws``) or more chains (``n_chains``) address it, at a proportional cost in time; "
            "see :doc:`diagnostics`.\n")
    if "ConvergenceWarning" in categories:
        text += (
            "\nA :class:`~mixedfx.ConvergenceWarning` says that a fit reached ``max_iter`` before its "
            "Monte Carlo error met the stopping rule: its estimates carry more Monte Carlo error than the "
            "default tolerance allows.  See :doc:`diagnostics`.\n")
    return text


def _escape(message: str) -> str:
    """A warning message as inline reStructuredText text."""
    return message.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|").replace("_", "\\_")


def setup(app):
    atexit.register(_kill_running)
    app.connect("builder-inited", start)
    app.connect("env-get-outdated", outdated)
    app.connect("source-read", finish)
    app.connect("env-updated", _finish_after_reading)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

