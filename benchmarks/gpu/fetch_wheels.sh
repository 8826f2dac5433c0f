#!/usr/bin/env bash
# Download, on a machine with package-registry access, the pure-Python wheels the GPU run
# needs but the GPU machine's image lacks, into .whl/ (ignored by git). Carry that folder
# to the GPU machine; run_gpu_checks.sh installs whatever it finds there.
#
#   bash benchmarks/gpu/fetch_wheels.sh            # from the repository root
#
# array-api-compat is evsoftmax's one runtime dependency; array-api-strict and entmax are
# test / benchmark peers. The image already has numpy, torch, triton, jax, cupy, pytest,
# hypothesis, scipy, matplotlib, rich and ml_dtypes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=(
  "array-api-compat==${ARRAY_API_COMPAT_VERSION:-1.16.0}"
  "array-api-strict==${ARRAY_API_STRICT_VERSION:-2.6.1}"
  "entmax==${ENTMAX_VERSION:-1.3}"
)
mkdir -p .whl  # ignored through .gitignore
for wheel in "${WHEELS[@]}"; do
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$wheel"
done
ls -l .whl
