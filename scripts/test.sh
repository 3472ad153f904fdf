#!/usr/bin/env bash
# The test suite: unit tests, every strategy under mpirun on loopback (CPU backend), emulated ranks
# against real ones, every CUDA kernel compiled with NVRTC for sm_80 and sm_90a and checked by
# ptxas (tools from NVIDIA's wheels, no GPU needed), the kernels' sources run on the CPU through
# the SIMT stand-in; then the build for CUDA 13 machines (the GPU check's) type-checked as well.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
eval "$(bash scripts/cuda-tools.sh)"
export RINGBENCH_REQUIRE_KERNEL_CHECK=1
cargo test --release
CUDARC_CUDA_VERSION=13000 cargo check --release --no-default-features --all-targets
