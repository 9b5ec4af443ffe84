#!/usr/bin/env bash
# The README's test commands as a new user meets them: a fresh clone of this checkout's HEAD, its
# own virtual environment, an empty XLA compilation cache; times the fast tier and then the full
# suite (each on its own cold cache).
#
#   bash benchmarks/cold_suite.sh [SCRATCH_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-$(mktemp -d)}
git clone -q "$repo" "$scratch/clone"
cd "$scratch/clone"
python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt -e . >/dev/null 2>&1  # pip warns about absent mirrors
export TF_CPP_MIN_LOG_LEVEL=2
for tier in fast full; do
  export LCLMT_JAX_CACHE="$scratch/xla-$tier" JAX_COMPILATION_CACHE_DIR="$scratch/xla-$tier"
  started=$(date +%s)
  if [ "$tier" = fast ]; then
    .venv/bin/python -m pytest -q -m fast | tail -1
  else
    .venv/bin/ruff check . && .venv/bin/python -m pytest -q --durations=25 | tail -30
  fi
  echo "$tier tier from a clean clone, cold cache: $(( $(date +%s) - started )) s"
done
