#!/usr/bin/env bash
# Validates the TensorRT path on a GPU box (exits 0 after saying what it skipped elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m benchmarks.gpu_validate "$@"
