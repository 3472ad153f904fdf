#!/usr/bin/env bash
# The simulated GPU (tests only; docs/testing.md, "The simulated GPU"): builds the stand-ins for the CUDA
# driver, cuBLAS and NCCL from tests/sim/ into target/sim-gpu/ when a source is newer than them,
# and prints the environment that selects them, beside NVRTC and the CUDA headers from
# scripts/cuda-tools.sh:
#     eval "$(bash scripts/sim-gpu.sh)"
#     mpirun -np 4 target/release/ringbench verify --backend cuda --strategy ring
# Each process gets its own simulated devices (RINGBENCH_SIM_DEVICES, 8 unless set), device memory
# of RINGBENCH_SIM_MEMORY (16G), and with RINGBENCH_SIM_DELAY=1 a random delay before every
# queued operation. Nothing timed on it is a measurement: ringbench marks it simulated.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
eval "$(bash scripts/cuda-tools.sh)"
DIR=$ROOT/target/sim-gpu
mkdir -p "$ROOT/target"

build() {
    local tmp
    tmp=$(mktemp -d "$ROOT/target/sim-gpu.build.XXXXXX")
    # The kernels' entry points, from the sources themselves: each `extern "C" __global__ void
    # name(` line and each `..._ENTRY(name, ...)` macro use (the rule kernels.rs's test checks).
    {
        grep -hoE '^extern "C" __global__ void [a-z0-9_]+\(' kernels/*.cu | sed -E 's/.* ([a-z0-9_]+)\($/SIM_KERNEL(\1)/'
        grep -hoE '^[A-Z_]+_ENTRY\([a-z0-9_]+,' kernels/*.cu | sed -E 's/^[A-Z_]+_ENTRY\(([a-z0-9_]+),$/SIM_KERNEL(\1)/'
    } >"$tmp/kernel_table.inc"
    local flags=(-std=c++20 -O2 -g -fPIC -ftls-model=initial-exec -pthread -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas
        -Wno-missing-field-initializers)
    # The kernels see the SIMT stand-in as <cuda_bf16.h>; the driver sees the real cuda.h.
    g++ "${flags[@]}" -I "$tmp" -I tests/simt -c tests/sim/kernels.cpp -o "$tmp/kernels.o"
    g++ "${flags[@]}" -I "$CUDA_HOME/include" -c tests/sim/driver.cpp -o "$tmp/driver.o"
    g++ "${flags[@]}" -c tests/sim/core.cpp -o "$tmp/core.o"
    g++ "${flags[@]}" -shared -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so.1" "$tmp/core.o" "$tmp/driver.o" "$tmp/kernels.o"
    rm "$tmp"/*.o
    ln -s libcuda.so.1 "$tmp/libcuda.so"
    g++ "${flags[@]}" -shared -Wl,-soname,libcublas.so.12 -o "$tmp/libcublas.so.12" tests/sim/cublas.cpp \
        -L "$tmp" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
    ln -s libcublas.so.12 "$tmp/libcublas.so"
    g++ "${flags[@]}" -shared -Wl,-soname,libnccl.so.2 -o "$tmp/libnccl.so.2" tests/sim/nccl.cpp \
        -L "$tmp" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
    ln -s libnccl.so.2 "$tmp/libnccl.so"
    rm -rf "$DIR"
    mv "$tmp" "$DIR"
}

(
    # One build at a time (tests may ask at once); the others wait and find it done.
    flock 9
    stale=0
    [ -f "$DIR/libnccl.so.2" ] || stale=1
    if [ $stale = 0 ] && [ -n "$(find tests/sim tests/simt/cuda_bf16.h kernels scripts/sim-gpu.sh -newer "$DIR/libnccl.so.2" -print -quit)" ]; then
        stale=1
    fi
    if [ $stale = 1 ]; then
        echo "sim-gpu: building the simulated GPU's libraries into $DIR" >&2
        build >&2
    fi
) 9>"$ROOT/target/sim-gpu.lock"

echo "export LD_LIBRARY_PATH=$DIR:$LD_LIBRARY_PATH"
echo "export CUDA_HOME=$CUDA_HOME"
echo "export RINGBENCH_PTXAS=$RINGBENCH_PTXAS"
echo "export RINGBENCH_SIM_DEVICES=${RINGBENCH_SIM_DEVICES:-8}"
