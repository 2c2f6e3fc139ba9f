"""Run an R baseline through Rscript and read back the JSON line it prints last."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile


def run_rscript(script: str, *args: str, packages: str = "r-cran-lme4"):
    """Run ``script`` with ``args``; returns ``(result, None)`` or ``(None, note)``.

    The script must print its result as one JSON object on its last line.  The result
    gains ``peak_memory_gb``, R's own peak resident set size (``VmHWM``, read by R at
    its end: the ``ru_maxrss`` that ``wait4`` reports would include the resident pages
    the forked child inherited from this Python process, about 0.8 GB once TensorFlow
    is loaded, since Linux carries the high-water mark across ``exec``).  When R is
    missing, the note says so (the benchmark then skips that baseline).
    """
    if shutil.which("Rscript") is None:
        return None, f"Rscript not found: R baseline skipped (apt-get install r-base-core {packages})"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "baseline.R")
        with open(path, "w") as handle:
            handle.write(script + _PEAK_MEMORY)
        with open(os.path.join(folder, "out"), "w+") as out, open(os.path.join(folder, "err"), "w+") as err:
            process = subprocess.Popen(["Rscript", path, *map(str, args)], stdout=out, stderr=err)
            _, status, _ = os.wait4(process.pid, 0)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        return None, f"R baseline failed: {stderr.strip()[-300:] or status}"
    *_, line, peak = stdout.strip().splitlines()
    result = json.loads(line)
    result["peak_memory_gb"] = json.loads(peak)["vmhwm_kb"] / 2**20
    return result, None


_PEAK_MEMORY = r"""
local({
  status <- readLines("/proc/self/status")
  cat(sprintf('{"vmhwm_kb": %s}\n', sub("^VmHWM:\\s+([0-9]+) kB$", "\\1", grep("^VmHWM:", status, value = TRUE))))
})
"""
