#!/usr/bin/env bash
# NVRTC, the CUDA headers and ptxas from NVIDIA's Python wheels, into .cache/cuda-tools, so that
# every kernel is compiled and checked on machines without CUDA (CI). Prints the environment to
# use them:   eval "$(bash scripts/cuda-tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cache/cuda-tools
WHEELS=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
if [ ! -x "$DIR/nvidia/cuda_nvcc/bin/ptxas" ] || [ ! -f "$DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    # --target keeps them out of any Python environment; Debian's own pip needs the override to
    # install at all, which is harmless with --target.
    python3 -m pip install -q --no-deps --target "$DIR" "${WHEELS[@]}" >&2 \
        || python3 -m pip install -q --no-deps --break-system-packages --target "$DIR" "${WHEELS[@]}" >&2
fi
ROOT=$(cd "$DIR" && pwd)
echo "export LD_LIBRARY_PATH=$ROOT/nvidia/cuda_nvrtc/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "export CUDA_HOME=$ROOT/nvidia/cuda_runtime"
echo "export RINGBENCH_PTXAS=$ROOT/nvidia/cuda_nvcc/bin/ptxas"
