"""The Python peers of the benchmark: glmm, gpboost and mixedlm, each fitted in a fresh process of their own venv.

The peers are never dependencies of mixedfx.  ``run.py`` installs them with pip into a
virtual environment of their own (``~/.cache/mixedfx-bench/peers-venv``; the
``MIXEDFX_PEERS_VENV`` environment variable or ``run.py --peers-venv`` moves it), made on
first use and reused afterwards, and runs this file with that venv's Python, once per peer
and case::

    PEERS_VENV/bin/python benchmarks/peers.py PEER SPEC.json

``SPEC.json`` (written by ``run.py``) names the case's data file (CSV, gzipped or not),
its formula and family (``gaussian`` or ``bernoulli``), the response, the fixed-effect
columns (those in ``categorical`` are treatment-coded as R codes them), and the random
terms (``{"group": ..., "slopes": [...], "correlated": true}``).  The driver prints one
JSON object on its last line: the peer's version, the seconds of its import and of its
fit call (data reading excluded), its estimates in the benchmark's names
(``Intercept``, R's fixed-effect names such as ``GenderM``, ``sd(g)`` for a random
intercept's sd, ``sd(g:x)`` for a slope's, ``cor(g:a,b)``, ``sigma``), its
log-likelihood where it reports one, and the process's peak resident memory
(``VmHWM``, imports and data included).  A model a peer cannot fit gives
``{"error": "cannot fit: ..."}``, never a crash of the benchmark.

The host side (:func:`peers_venv`, :func:`ensure_peers`, :func:`run_peer`,
:func:`parse_peer_output`) uses only the standard library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: Peer name -> the requirement pip installs (the PyPI names).
PEERS = {"glmm": "glmm", "gpboost": "gpboost", "mixedlm": "mixedlm"}
#: What the driver itself needs beside the peers.
DRIVER_REQUIREMENTS = ("numpy", "pandas")
VENV_VARIABLE = "MIXEDFX_PEERS_VENV"


class CannotFit(Exception):
    """The peer has no way to fit this model (reported in the table, not raised by the benchmark)."""


# -- host side: the venv and the child processes ----------------------------------------------------
def peers_venv(path: str | None = None) -> Path:
    """Where the peers' venv lives: ``path``, else ``$MIXEDFX_PEERS_VENV``, else the user's cache folder.

    Example: ``peers_venv("/tmp/v")`` is ``Path("/tmp/v")``.
    """
    if path:
        return Path(path).expanduser()
    if os.environ.get(VENV_VARIABLE):
        return Path(os.environ[VENV_VARIABLE]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mixedfx-bench" / "peers-venv"


def venv_python(venv: Path) -> Path:
    """The venv's Python interpreter."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str, limit: int = 200) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("WARNING")]
    return (lines[-1] if lines else text.strip())[-limit:]


def installed_versions(python: Path, names) -> dict:
    """The installed version of each distribution in ``names`` (None where missing), asked of ``python``."""
    code = ("import json, importlib.metadata as m, sys\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    result = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {n: None for n in names}


def ensure_peers(*, venv: Path, peers, log=print) -> dict:
    """Make the venv (first use) and pip-install what is missing; ``{peer: version or 'not installed: why'}``.

    Each peer installs on its own, so that one that fails leaves the others usable.
    """
    python = venv_python(venv)
    if not python.exists():
        log(f"peers: making their venv at {venv} (first use)")
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            return {p: f"not installed: venv failed: {_tail(made.stderr)}" for p in peers}
    wanted = [*DRIVER_REQUIREMENTS, *(PEERS[p] for p in peers)]
    versions = installed_versions(python, wanted)
    status = {}
    for requirement in wanted:
        if versions.get(requirement) is None:
            log(f"peers: pip install {requirement} into {venv}")
            pip = subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], capture_output=True,
                                 text=True)
            if pip.returncode != 0:
                status[requirement] = f"not installed: pip install {requirement} failed: {_tail(pip.stderr)}"
    versions = installed_versions(python, wanted)
    missing_driver = [r for r in DRIVER_REQUIREMENTS if versions.get(r) is None]
    for peer in peers:
        requirement = PEERS[peer]
        if missing_driver:
            status[peer] = f"not installed: the driver's {', '.join(missing_driver)} did not install"
        elif versions.get(requirement) is None:
            status[peer] = status.get(requirement, f"not installed: {requirement} missing after pip install")
        else:
            status[peer] = versions[requirement]
    return {p: status[p] for p in peers}


def parse_peer_output(stdout: str, stderr: str = "", returncode: int = 0) -> dict:
    """The driver's result: its last JSON line, or ``{"error": why}`` for a crash or unreadable output.

    Example: ``parse_peer_output('noise\\n{"fit_seconds": 1.0}')`` is ``{"fit_seconds": 1.0}``.
    """
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
        if isinstance(result, dict) and ("error" in result or "fit_seconds" in result):
            return result
    if returncode != 0:
        return {"error": f"failed (exit status {returncode}): {_tail(stderr) or 'no message'}"}
    return {"error": f"no result printed: {_tail(stdout + stderr) or 'no output'}"}


def run_peer(peer: str, spec_path: str, *, venv: Path, timeout: float | None = None) -> dict:
    """Fit one case with one peer in a fresh process of the peers' venv; the driver's result or an error."""
    command = [str(venv_python(venv)), str(Path(__file__).resolve()), peer, str(spec_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    return parse_peer_output(done.stdout, done.stderr, done.returncode)


# -- driver side: runs in the peers' venv -----------------------------------------------------------
def own_peak_memory_gb() -> float | None:
    """This process's peak resident set size (``VmHWM``), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 2**20


def read_case(spec: dict):
    """The case's rows: grouping and categorical columns as strings."""
    import pandas as pd

    text_columns = {t["group"] for t in spec["random"]} | set(spec.get("categorical", []))
    return pd.read_csv(spec["data"], dtype={c: str for c in text_columns})


def fixed_design(data, spec: dict):
    """The fixed-effect design with an intercept, categorical columns treatment-coded as R does (sorted levels)."""
    import numpy as np
    import pandas as pd

    columns = {"Intercept": np.ones(len(data))}
    for name in spec["fixed"]:
        if name in spec.get("categorical", []):
            for level in sorted(data[name].unique())[1:]:
                columns[f"{name}{level}"] = (data[name] == level).to_numpy(float)
        else:
            columns[name] = data[name].to_numpy(float)
    return pd.DataFrame(columns)


def _sd_name(group: str, term: str) -> str:
    return f"sd({group})" if term in ("(Intercept)", "Intercept") else f"sd({group}:{term})"


def _fixed_name(name: str) -> str:
    return "Intercept" if name == "(Intercept)" else name


def fit_glmm(data, spec: dict) -> dict:
    """glmm (Rust): ``glmm.fit(data, formula, family, reml=False)``, defaults otherwise."""
    import numpy as np

    started = time.perf_counter()
    import glmm
    imported = time.perf_counter()
    family = {"gaussian": "gaussian", "bernoulli": "binomial"}[spec["family"]]
    fit = glmm.fit(data, spec["formula"], family=family, reml=False)
    done = time.perf_counter()
    estimates = {_fixed_name(n): float(b) for n, b in zip(fit.names, fit.beta)}
    for index, (group, terms) in enumerate(fit.re_groups):
        sds, corr = fit.stddev_corr(index)
        for i, term in enumerate(terms):
            estimates[_sd_name(group, term)] = float(sds[i])
            for j in range(i):
                estimates[f"cor({group}:{terms[j]},{term})"] = float(np.asarray(corr)[i, j])
    if spec["family"] == "gaussian":
        estimates["sigma"] = float(np.sqrt(fit.dispersion))
    return {"version": distribution_version("glmm"), "import_seconds": imported - started, "fit_seconds": done - imported,
            "estimates": estimates, "loglik": float(fit.loglik), "converged": bool(fit.converged)}


def _mixedlm_name(name: str, data, spec: dict) -> str:
    """mixedlm names a treatment-coded level ``column.i`` (``i``-th sorted level); R names it ``columnLEVEL``."""
    column, _, index = name.rpartition(".")
    if column in spec.get("categorical", []) and index.isdigit():
        return f"{column}{sorted(data[column].unique())[int(index)]}"
    return _fixed_name(name)


def fit_mixedlm(data, spec: dict) -> dict:
    """mixedlm (Rust): ``lmer(formula, data, REML=False)`` or ``glmer(..., family=Binomial())``."""
    import numpy as np

    started = time.perf_counter()
    from mixedlm import families, glmer, lmer
    imported = time.perf_counter()
    if spec["family"] == "gaussian":
        model = lmer(spec["formula"], data, REML=False)
    else:
        model = glmer(spec["formula"], data, family=families.Binomial())
    done = time.perf_counter()
    estimates = {_mixedlm_name(k, data, spec): float(v) for k, v in model.fixef().items()}
    for group in model.VarCorr().groups.values():
        terms = list(group.term_names)
        for i, term in enumerate(terms):
            estimates[_sd_name(group.name, term)] = float(group.stddev[term])
            for j in range(i):
                estimates[f"cor({group.name}:{terms[j]},{term})"] = float(np.asarray(group.corr)[i, j])
    if spec["family"] == "gaussian":
        estimates["sigma"] = float(model.sigma)
    return {"version": distribution_version("mixedlm"), "import_seconds": imported - started, "fit_seconds": done - imported,
            "estimates": estimates, "loglik": float(model.logLik().value), "converged": bool(model.converged)}


def fit_gpboost(data, spec: dict) -> dict:
    """gpboost (C++): ``GPModel(group_data=..., likelihood=...)``, ``fit(y, X)``; ML for the Gaussian, Laplace otherwise.

    gpboost's random slopes are independent of their intercepts: a correlated slope term
    ``(x | g)`` is a model it cannot fit.
    """
    import numpy as np

    if any(t["slopes"] and t.get("correlated", True) for t in spec["random"]):
        raise CannotFit("gpboost has no correlated random slopes, only (x || g)")
    X = fixed_design(data, spec)
    groups = [t["group"] for t in spec["random"]]
    slopes = [(k, s) for k, t in enumerate(spec["random"]) for s in t["slopes"]]
    started = time.perf_counter()
    import gpboost
    imported = time.perf_counter()
    likelihood = {"gaussian": "gaussian", "bernoulli": "bernoulli_logit"}[spec["family"]]
    extra = {}
    if slopes:
        extra = {"group_rand_coef_data": data[[s for _, s in slopes]].to_numpy(float),
                 "ind_effect_group_rand_coef": [k + 1 for k, _ in slopes]}
    model = gpboost.GPModel(group_data=data[groups], likelihood=likelihood, **extra)
    model.fit(y=data[spec["response"]].to_numpy(float), X=X)
    done = time.perf_counter()
    estimates = {name: float(v) for name, v in model.get_coef().iloc[0].items()}
    variances = model.get_cov_pars().iloc[0].to_numpy(float)
    offset = 1 if spec["family"] == "gaussian" else 0
    if offset:
        estimates["sigma"] = float(np.sqrt(variances[0]))
    names = [f"sd({g})" for g in groups] + [f"sd({groups[k]}:{s})" for k, s in slopes]
    estimates.update({name: float(np.sqrt(v)) for name, v in zip(names, variances[offset:])})
    return {"version": distribution_version("gpboost"), "import_seconds": imported - started, "fit_seconds": done - imported,
            "estimates": estimates, "loglik": -float(model.get_current_neg_log_likelihood()), "converged": None}


def distribution_version(distribution: str) -> str | None:
    """The installed version of a distribution (None if unknown)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


FITTERS = {"glmm": fit_glmm, "gpboost": fit_gpboost, "mixedlm": fit_mixedlm}


def driver(peer: str, spec_path: str) -> dict:
    """Read the case, fit it with ``peer``; the JSON-ready result (``{"error": ...}`` for a model it cannot fit)."""
    import warnings

    with open(spec_path) as handle:
        spec = json.load(handle)
    if spec["family"] not in ("gaussian", "bernoulli"):
        return {"error": f"cannot fit: the benchmark drives {peer} for gaussian and bernoulli models, "
                         f"not {spec['family']} (none of the peers has an ordinal family)"}
    data = read_case(spec)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = FITTERS[peer](data, spec)
    except CannotFit as reason:
        return {"error": f"cannot fit: {reason}"}
    except Exception as failure:  # a peer's own failure is a row of the table, never a crash
        return {"error": f"fit failed: {type(failure).__name__}: {str(failure)[:200]}"}
    result["warnings"] = sorted({str(w.message).split("\n")[0][:120] for w in caught})[:5]
    return {**result, "peak_memory_gb": own_peak_memory_gb()}


if __name__ == "__main__":
    # this folder holds benchmarks/glmm.py, which would shadow the glmm package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    print(json.dumps(driver(sys.argv[1], sys.argv[2])))
