#!/usr/bin/env bash
# The GPU check (../shared/GPU.md), run on the GPU machine from the repository root with the
# release binary at target/release/ringbench, built on the development machine with
#   CUDARC_CUDA_VERSION=13000 cargo build --release --no-default-features
# It runs `info`, `selftest` (every kernel and op against the CPU backend), then `verify` on the
# GPU for reference, ring and tp-pp on 1, 2 and 4 processes sharing the GPU (MPI with host
# staging), then a small timed run of both strategies; full logs go to $OUT (when set), and a
# short table comes last.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LOGS=${OUT:-/tmp/ringbench-gpu-check}
mkdir -p "$LOGS"
BIN=target/release/ringbench
MPIRUN=(mpirun --oversubscribe --bind-to none)
results=()
check() { # name, command...
    local name=$1
    shift
    local start=$SECONDS
    if timeout 240 "$@" > "$LOGS/$name.log" 2>&1; then verdict=PASS; else verdict="FAIL($?)"; fi
    results+=("$(printf '%-34s %-9s %4ss' "$name" "$verdict" $((SECONDS - start)))")
    tail -n 3 "$LOGS/$name.log"
}

check info "$BIN" info
check selftest "$BIN" selftest
check verify-reference-1 "$BIN" verify --backend cuda --strategy reference --seq-len 1023
check verify-ring-2 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --strategy ring --seq-len 1023
check verify-ring-4 "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --strategy ring --layout contiguous --seq-len 1000
check verify-tp-pp-2 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --strategy tp-pp --tp 2 --seq-len 1023
check verify-tp-pp-4 "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --strategy tp-pp --tp 2 --pp 2 --layers 4 --no-causal --seq-len 97
check run-small-all-4 "${MPIRUN[@]}" -np 4 "$BIN" run --backend cuda --preset small --strategy all --tp 2 --pp 2 --ring 4 --out "$LOGS/results" --run-id small --quiet
[ -f "$LOGS/results/small/summary.csv" ] && cp "$LOGS/results/small/summary.csv" "$LOGS/summary.csv"

echo
echo "ringbench GPU check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
printf '%s\n' "${results[@]}"
