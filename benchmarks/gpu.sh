#!/usr/bin/env bash
# Every speed figure on an accelerator, one command: benchmarks/suite.py's table.
#
#   bash benchmarks/gpu.sh              # on a GPU machine with internet: installs CUDA JAX first
#   bash benchmarks/gpu.sh --small      # anywhere (the tests run this on the CPU)
#
# Installs the CUDA build of JAX unless JAX already sees a GPU (a machine without internet, or a
# CPU, measures with what it has), then runs the suite: paper-MLP epoch, 4C3F epoch, WRN-16-4
# step (plain and LC-LMT), CW-L2 on 10,000 images, sound certification. Under 8 minutes on an
# H100; extra arguments go to benchmarks/suite.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
has_gpu() { "$python" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; }
if ! has_gpu && command -v nvidia-smi >/dev/null 2>&1; then
  echo "installing the CUDA build of JAX" >&2
  "$python" -m pip install -q "jax[cuda12]==0.10.2" || echo "could not install it" >&2
fi
exec "$python" benchmarks/suite.py "$@"
