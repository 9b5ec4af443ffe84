#!/usr/bin/env bash
# Regenerates every run, table and figure of docs/REPRODUCTION.md (figures into docs/figures/).
# Usage: bash experiments/reproduce.sh MNIST_IDX_DIR FASHION_MNIST_IDX_DIR OUT_DIR
set -euo pipefail
mnist=${1:?MNIST IDX directory}; fashion=${2:?Fashion-MNIST IDX directory}; out=${3:?output dir}
cd "$(dirname "$0")/.."
# The paper's recipe: nine runs per dataset (comparison.md, fig2_*.png in each sweep directory).
python launch.py --config=experiments/mnist_reproduction.py:idx --workdir="$out/mnist" \
    --sweep=run --config.data.path="$mnist"
python launch.py --config=experiments/mnist_reproduction.py:fashion --workdir="$out/fashion" \
    --sweep=run --config.data.path="$fashion"
# Fig. 1 under the tracked bound and under the LMT code's MNIST recipe.
python launch.py --config=experiments/mnist_fig1.py:idx --workdir="$out/fig1" \
    --sweep=run --config.data.path="$mnist"
compare() {  # compare OUT RUN... : Fig. 1a/1b and the table of the runs given
    local dir=$1; shift
    python launch.py --mode=compare --workdir="$dir" --runs="$(IFS=,; echo "$*")"
}
compare "$out/mnist/fig1" "$out/mnist/lmt_eps1" "$out/mnist/lc_lmt_eps1"
compare "$out/fashion/fig1" "$out/fashion/lmt_eps1" "$out/fashion/lc_lmt_eps1"
compare "$out/fig1/tracked" "$out/fig1/tracked_lmt" "$out/fig1/tracked_lc_lmt"
compare "$out/fig1/lmt_code" "$out/fig1/lmt_code_lmt" "$out/fig1/lmt_code_lc_lmt"
compare "$out/fig1/all" "$out/mnist/lmt_eps1" "$out/mnist/lc_lmt_eps1" \
    "$out/fig1/tracked_global_lmt" "$out/fig1/tracked_global_lc_lmt" "$out/fig1/tracked_lmt" \
    "$out/fig1/tracked_lc_lmt" "$out/fig1/lmt_code_lmt" "$out/fig1/lmt_code_lc_lmt"
figures=docs/figures
cp "$out/mnist/fig1/fig1a_margins.png" "$figures/mnist_fig1a_margins.png"
cp "$out/mnist/fig1/fig1b_loss.png" "$figures/mnist_fig1b_loss.png"
cp "$out/fashion/fig1/fig1a_margins.png" "$figures/fashion_fig1a_margins.png"
cp "$out/fig1/tracked/fig1a_margins.png" "$figures/mnist_fig1a_margins_tracked.png"
cp "$out/fig1/lmt_code/fig1a_margins.png" "$figures/mnist_fig1a_margins_lmt_code.png"
cp "$out/mnist/fig2_attack.png" "$figures/mnist_fig2_attack.png"
cp "$out/fashion/fig2_attack.png" "$figures/fashion_fig2_attack.png"
for run in lmt_eps1 lc_lmt_eps1; do
    cp "$out/mnist/$run/evaluation/certified_vs_attack.png" \
        "$figures/mnist_${run}_certified_vs_attack.png"
done
