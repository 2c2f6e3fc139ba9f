"""Run an R baseline through Rscript and read back the JSON line it prints last."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile


def run_rscript(script: str, *args: str, packages: str = "r-cran-lme4"):
    """Run ``script`` with ``args``; returns ``(result, None)`` or ``(None, note)``.

    The script must print its result as one JSON object on its last line.  When R is
    missing, the note says so (the benchmark then skips that baseline).
    """
    if shutil.which("Rscript") is None:
        return None, f"Rscript not found: R baseline skipped (apt-get install r-base-core {packages})"
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        done = subprocess.run(["Rscript", path, *map(str, args)], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    if done.returncode != 0:
        return None, f"R baseline failed: {done.stderr.strip()[-300:] or done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1]), None
