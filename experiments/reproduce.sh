#!/usr/bin/env bash
# Regenerates every run and figure of docs/REPRODUCTION.md.
# Usage: bash experiments/reproduce.sh MNIST_IDX_DIR FASHION_MNIST_IDX_DIR OUT_DIR
set -euo pipefail
mnist=${1:?MNIST IDX directory}; fashion=${2:?Fashion-MNIST IDX directory}; out=${3:?output dir}
cd "$(dirname "$0")/.."
python launch.py --config=experiments/mnist_reproduction.py:idx --workdir="$out/mnist" \
    --sweep=run --config.data.path="$mnist"
python launch.py --config=experiments/mnist_reproduction.py:fashion --workdir="$out/fashion" \
    --sweep=run --config.data.path="$fashion"
for dataset in mnist fashion; do  # Fig. 1a/1b: LMT vs LC-LMT at epsilon = 1.0
    python launch.py --mode=compare --workdir="$out/$dataset/fig1" \
        --runs="$out/$dataset/lmt_eps1,$out/$dataset/lc_lmt_eps1"
done
