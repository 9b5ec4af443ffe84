#!/usr/bin/env bash
# One training config's epoch time at two commits, side by side: runs alternate (old, new, old,
# new, ...) so that machine noise hits both alike; the last epoch of each run is printed (the
# first compiles).
#
#   bash benchmarks/epoch_side_by_side.sh OLD_COMMIT [ROUNDS] -- LAUNCH_ARGS...
#   bash benchmarks/epoch_side_by_side.sh 3ff4459 2 -- \
#       --config=experiments/cifar10_certified.py:standin,short \
#       --config.data.path=$PWD/runs/svhn_standin.npz --config.num_epochs=2
#
# The old commit is checked out in a temporary git worktree and run with this checkout's Python
# (python, or $PYTHON); data paths must be absolute.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; rounds=${2:-2}; shift 2; [ "${1:-}" = "--" ] && shift
python="${PYTHON:-python}"
scratch=$(mktemp -d)
trap 'git worktree remove --force "$scratch/old" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add --detach "$scratch/old" "$old" >/dev/null
for round in $(seq "$rounds"); do
  for tree in "$scratch/old" "$PWD"; do
    name=$([ "$tree" = "$PWD" ] && echo "$(git rev-parse --short HEAD)" || echo "$old")
    last=$(cd "$tree" && PYTHONPATH="$tree" "$python" launch.py "$@" --evaluators= \
             --workdir="$scratch/run-$round-$(basename "$tree")" 2>&1 | grep '^epoch' | tail -1)
    echo "round $round, $name: $last"
  done
done
