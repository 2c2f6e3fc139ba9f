#!/usr/bin/env bash
# One command for a lent GPU machine, under 8 minutes: InstEval gaussian and bernoulli, 10M Gaussian rows,
# the Gaussian fits with the default E-step (blocked Gibbs, float64) and with HMC in float32, and the
# distributed throughput.  It appends its table, with the card's name (nvidia-smi), to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh            # on the GPU machine, from anywhere in the repository
#   bash benchmarks/gpu.sh --quick    # every case shrunk (also MIXEDFX_GPU_QUICK=1): a check; 8.5 min on a loaded 2-core CPU
#
# Without a GPU it says so and runs on the CPU.  --quick appends to $TMPDIR/mixedfx-gpu-quick.md, not to
# RESULTS.md; MIXEDFX_GPU_RESULTS=FILE names the file in either mode.  No R and no Python peers here (the
# lent machine reaches no registry): those run in benchmarks/run.py.  Each step has a time limit (seconds
# below) so that the whole stays under 8 minutes; a step that hits it is reported as such.
# MIXEDFX_GPU_DRY_RUN=1 prints each step's command instead of running it.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
quick=${MIXEDFX_GPU_QUICK:-0}
[ "${1:-}" = "--quick" ] && quick=1

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [ -z "$card" ]; then
  card="no GPU found: CPU, $(nproc) cores"
  echo "gpu.sh: no GPU found (nvidia-smi lists none): running on the CPU"
fi
slow=1  # time limits x slow: on a CPU, --quick's shrunk cases still compile for tens of seconds each
if [ "$quick" = 1 ]; then
  slow=3
  insteval=(--insteval-rows 3000); rows=20000
  distributed=(--rows 20000 --iterations 2 --devices 1 --memory-sizes 0)
  mode="--quick (every case shrunk: InstEval's first students, about 3,000 rows; 20,000 scale rows)"
  results=${MIXEDFX_GPU_RESULTS:-${TMPDIR:-/tmp}/mixedfx-gpu-quick.md}
else
  insteval=(); rows=10000000
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  devices=(1); [ "$gpus" -ge 2 ] && devices+=(2); [ "$gpus" -ge 4 ] && devices+=(4)
  distributed=(--rows 2000000 --iterations 10 --devices "${devices[@]}" --memory-sizes 0)
  mode="full"
  results=${MIXEDFX_GPU_RESULTS:-benchmarks/RESULTS.md}
fi
work=$(mktemp -d)
notes=()

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log its output, note a failure or a time-out
  local name=$1 limit=$(($2 * slow)); shift 2
  echo "== $name (limit ${limit} s)"
  if [ "${MIXEDFX_GPU_DRY_RUN:-0}" = 1 ]; then echo "$*"; return; fi
  local started=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$work/$name.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    notes+=("$name: stopped at its limit of ${limit} s")
  elif [ "$status" != 0 ]; then
    notes+=("$name: failed, exit status $status (see its output above)")
  fi
  echo "== $name: $((SECONDS - started)) s"
}

common=(--skip-r --skip-peers --skip-tutorial)
# the default E-step (Gaussian: blocked Gibbs, float64; bernoulli: HMC, float32), then the Gaussian fits by HMC
# with its float32 E-step (the default before blocked Gibbs; on a GPU float32 may win)
step insteval_gibbs 150 "$PYTHON" benchmarks/run.py --cases gaussian bernoulli "${common[@]}" ${insteval[@]+"${insteval[@]}"} \
  --json "$work/insteval_gibbs.json"
step insteval_hmc32 60 "$PYTHON" benchmarks/run.py --cases gaussian --e-step hmc "${common[@]}" ${insteval[@]+"${insteval[@]}"} \
  --json "$work/insteval_hmc32.json"
step rows_gibbs 100 "$PYTHON" benchmarks/run.py --cases scale --scale-sizes "$rows" "${common[@]}" \
  --json "$work/rows_gibbs.json"
step rows_hmc32 90 "$PYTHON" benchmarks/run.py --cases scale --scale-sizes "$rows" --e-step hmc "${common[@]}" \
  --json "$work/rows_hmc32.json"
step distributed 70 "$PYTHON" benchmarks/distributed.py "${distributed[@]}"

table=$("$PYTHON" - "$work" <<'PY'
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from report import format_table

rows = []
labels = {"gibbs": "Gibbs float64", "hmc32": "HMC float32"}
for name in ("insteval_gibbs", "insteval_hmc32", "rows_gibbs", "rows_hmc32"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        for row in json.loads(path.read_text()):
            if row["note"] == "skipped (--skip-r)":
                continue
            if row["case"] != "bernoulli":  # the kernels compared are the Gaussian family's
                row["case"] += ", " + labels[name.split("_")[1]]
            rows.append(row)
print(format_table(rows) if rows else "(no fit finished)")
PY
)
{
  echo
  echo "## benchmarks/gpu.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), ${card}"
  echo
  echo "\`bash benchmarks/gpu.sh\`, mode ${mode}; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "No R or Python peers (see run.py); errors are against lme4's committed fixtures (InstEval) and the"
  echo "simulated truth (the scale rows).  Gibbs float64 / HMC float32: the Gaussian E-step's kernel and precision."
  echo
  echo '```'
  echo "$table"
  echo
  sed -n '/^sharded fits/,$p' "$work/distributed.log" 2>/dev/null
  echo '```'
  for note in "${notes[@]+"${notes[@]}"}"; do echo "* $note"; done
} >> "$results"
echo "gpu.sh: appended to $results"
[ "$quick" = 1 ] && tail -n 40 "$results"
rm -rf "$work"
