#!/usr/bin/env bash
# The test suite: unit tests, every strategy under mpirun on loopback (CPU backend), and every CUDA
# kernel compiled with NVRTC for sm_80 and sm_90a and checked by ptxas (tools from NVIDIA's wheels,
# no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
eval "$(bash scripts/cuda-tools.sh)"
export RINGBENCH_REQUIRE_KERNEL_CHECK=1
cargo test --release
