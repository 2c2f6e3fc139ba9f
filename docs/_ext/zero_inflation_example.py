"""Sphinx extension: the zero-inflation check of ``families.rst``, generated at build time (cached).

At ``builder-inited`` it starts ``python -m mixedfx.examples.zero_inflation`` in a
subprocess (two GLMM fits to glmmTMB's Salamanders data, ``tests/fixtures/salamanders.csv``,
and 500 simulations of each; well under a minute of CPU on 2 cores) unless its
cached outputs in ``docs/_generated/zero_inflation/`` are up to date; Sphinx reads the
other pages meanwhile.  At ``source-read`` of ``families`` it waits for it and writes
``numbers.inc``, the substitutions the page prints.  The cache key is the worked
example's (:func:`worked_example.fingerprint`: the code of mixedfx without docstrings,
its data, the library versions) with the Salamanders CSV and this command.  Delete
``docs/_generated`` to force a rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

from worked_example import fingerprint

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
OUT = DOCS / "_generated" / "zero_inflation"
DATA = ROOT / "tests" / "fixtures" / "salamanders.csv"
STAMP = OUT / "stamp.txt"
COMMAND = ["--data", str(DATA.relative_to(ROOT))]
PAGE = "families"
#: The example takes under a minute of CPU; on a loaded machine much longer: give up after this many seconds.
TIMEOUT_SECONDS = 900

_state: dict = {}


def _outputs() -> list[Path]:
    from mixedfx.examples.zero_inflation import FIGURE

    return [OUT / "numbers.json", OUT / FIGURE]


def start(app) -> None:
    """``builder-inited``: start the example unless its cached outputs are up to date."""
    _state["fingerprint"] = fingerprint({"salamanders": DATA.read_bytes()}, {"zero_inflation": COMMAND})
    _state["regenerated"] = False
    if STAMP.exists() and STAMP.read_text().strip() == _state["fingerprint"] and all(p.exists() for p in _outputs()):
        logger.info("zero-inflation example: cached outputs in %s are up to date", OUT.relative_to(ROOT))
        _render()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for path in [STAMP, OUT / "numbers.inc", *_outputs()]:
        path.unlink(missing_ok=True)
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    logger.info("zero-inflation example: fitting Salamanders in the background ...")
    log = open(OUT / "run.log", "w")
    command = [sys.executable, "-m", "mixedfx.examples.zero_inflation", str(OUT), *COMMAND]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    _state.update(process=process, log=log, started=time.perf_counter(), regenerated=True)
    if app.parallel > 1:
        finish()


def outdated(app, env, added, changed, removed):
    """``env-get-outdated``: the page must be read again when its numbers are recomputed."""
    return [PAGE] if _state.get("regenerated") and PAGE in env.found_docs else []


def finish(app=None, docname=None, source=None) -> None:
    """Wait for the example (``source-read`` of its page, or the end of reading), write its snippet."""
    if docname not in (None, PAGE) or "process" not in _state:
        return
    process, log = _state.pop("process"), _state.pop("log")
    try:
        code = process.wait(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = "timeout"
    log.close()
    if code != 0:
        raise ExtensionError(f"the zero-inflation example failed ({code}); the end of {log.name}:\n"
                             + Path(log.name).read_text()[-3000:])
    STAMP.write_text(_state["fingerprint"] + "\n")
    _render()
    logger.info("zero-inflation example: done in %.1f s", time.perf_counter() - _state.pop("started"))


def _finish_after_reading(app, env) -> None:
    finish()


def _kill_running() -> None:
    process = _state.pop("process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def _render() -> None:
    """``numbers.inc``: the substitutions ``families.rst`` prints (written only when they change)."""
    numbers = json.loads((OUT / "numbers.json").read_text())
    subs = {"zi_rows": str(numbers["n_rows"]), "zi_observed": str(numbers["observed"]),
            "zi_simulations": str(numbers["n_simulations"]), "zi_seconds": f"{numbers['seconds']:.0f}"}
    for key, name in (("pois", "Poisson"), ("zip", "zero-inflated Poisson")):
        model = numbers["models"][name]
        subs[f"zi_{key}_mean"] = f"{model['mean']:.1f}"
        subs[f"zi_{key}_range"] = f"{model['low']:.0f} to {model['high']:.0f}"
        subs[f"zi_{key}_share"] = f"{100 * model['share_at_least_observed']:.1f} %"
    text = "".join(f".. |{key}| replace:: {value}\n" for key, value in subs.items())
    path = OUT / "numbers.inc"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def setup(app):
    import atexit

    atexit.register(_kill_running)
    app.connect("builder-inited", start)
    app.connect("env-get-outdated", outdated)
    app.connect("source-read", finish)
    app.connect("env-updated", _finish_after_reading)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
