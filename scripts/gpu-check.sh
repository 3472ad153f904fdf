#!/usr/bin/env bash
# The GPU check (../shared/GPU.md), run on the GPU machine from the repository root with the
# release binary at target/release/ringbench, built on the development machine with
#   CUDARC_CUDA_VERSION=13000 cargo build --release --no-default-features
# (the default build binds CUDA 12; cudarc refuses two versions at once).
# In order: `info`; `selftest` (every kernel and op against the CPU backend); `verify` on the GPU
# for reference, ring and tp-pp with NCCL on one rank and with --comm mpi on 2 and 4 processes
# sharing the GPU; a small timed run of both strategies; then the benchmarks, each beside its
# PyTorch peer from the same run on the same card: the attention kernel alone (32 heads x 6250 x
# 6250, head dim 128) and one paper-model layer on rank 0 of an emulated zigzag ring of 16.
# Full logs go to $OUT (when set); a short table comes last.
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
check verify-reference-1-nccl "$BIN" verify --backend cuda --strategy reference --seq-len 1023
check verify-ring-1-nccl "$BIN" verify --backend cuda --strategy ring --ring 1 --seq-len 1023
check verify-tp-pp-1-nccl "$BIN" verify --backend cuda --strategy tp-pp --tp 1 --pp 1 --seq-len 1023
check verify-ring-2-mpi "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy ring --seq-len 1023
check verify-ring-4-mpi "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --comm mpi --strategy ring --layout contiguous --seq-len 1000
check verify-tp-pp-2-mpi "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy tp-pp --tp 2 --seq-len 1023
check verify-tp-pp-4-mpi "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --comm mpi --strategy tp-pp --tp 2 --pp 2 --layers 4 --no-causal --seq-len 97
check run-small-all-4-mpi "${MPIRUN[@]}" -np 4 "$BIN" run --backend cuda --comm mpi --preset small --strategy all --tp 2 --pp 2 --ring 4 --out "$LOGS/results" --run-id small --quiet

# Benchmarks: ringbench and its PyTorch peer, same shapes, same card, this run.
SHAPE=(--heads 32 --head-dim 128 --queries 6250 --keys 6250)
check bench-attention "$BIN" bench attention "${SHAPE[@]}" --json
check bench-attention-causal "$BIN" bench attention "${SHAPE[@]}" --causal --json
check bench-attention-m64 "$BIN" bench attention "${SHAPE[@]}" --kernel flash64 --json
check bench-attention-m64-causal "$BIN" bench attention "${SHAPE[@]}" --kernel flash64 --causal --json
check bench-attention-plain "$BIN" bench attention "${SHAPE[@]}" --kernel plain --iters 3 --json
check peer-check python3 scripts/torch_peer.py check --backend flash --json
check peer-check-cudnn python3 scripts/torch_peer.py check --backend cudnn --json
check peer-attention python3 scripts/torch_peer.py attention "${SHAPE[@]}" --json
check peer-attention-causal python3 scripts/torch_peer.py attention "${SHAPE[@]}" --causal --json
LAYER=(--preset paper --layers 1 --batch 1 --warmup 2 --iters 5 --quiet)
check emulated-ring-layer "$BIN" run --backend cuda --strategy ring --emulate-world 16 --as-rank 0 "${LAYER[@]}" --out "$LOGS/results" --run-id ring-layer
check emulated-tp-pp-layer "$BIN" run --backend cuda --strategy tp-pp --tp 8 --pp 2 --emulate-world 16 --as-rank 0 --preset paper --layers 2 --batch 1 --warmup 2 --iters 5 --quiet --out "$LOGS/results" --run-id tp-pp-layer
check peer-layer-cudnn python3 scripts/torch_peer.py layer --ring 16 --rank 0 --backend cudnn --json
check peer-layer-flash python3 scripts/torch_peer.py layer --ring 16 --rank 0 --backend flash --json
[ -f "$LOGS/results/small/summary.csv" ] && cp "$LOGS/results/small/summary.csv" "$LOGS/summary.csv"

echo
echo "ringbench GPU check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
printf '%s\n' "${results[@]}"
echo
python3 - "$LOGS" <<'EOF'
import csv, json, os, sys
logs = sys.argv[1]
def objs(name):
    try:
        with open(os.path.join(logs, name + ".log")) as f:
            return [json.loads(l) for l in f if l.startswith("{")]
    except (OSError, ValueError):
        return []
def summary(run_id):
    try:
        with open(os.path.join(logs, "results", run_id, "summary.csv")) as f:
            return next(csv.DictReader(f))
    except (OSError, StopIteration):
        return None
def tf(o):
    return f"{o['tflops']:.1f} TFLOP/s" if "tflops" in o else o.get("error", "n/a")[:40]
print("attention, 32 heads x 6250 q x 6250 kv, head dim 128 (TFLOP/s: 4 q kv d h, halved for causal)")
def kernel(o):
    k = o["kernel"]
    return "flash m" + k.split(", ")[1].split()[0] if k.startswith("flash") else k.split()[0]
for label, ours, peer in [
    ("non-causal", ["bench-attention", "bench-attention-m64"], "peer-attention"),
    ("causal", ["bench-attention-causal", "bench-attention-m64-causal"], "peer-attention-causal"),
]:
    row = [f"ringbench {kernel(o)} {tf(o)}" for name in ours for o in objs(name)]
    row += [f"{o['peer']} {tf(o)}" for o in objs(peer)]
    print(f"  {label:<11} " + " | ".join(row or ["no result"]))
plain = objs("bench-attention-plain")
if plain:
    print(f"  {'plain':<11} ringbench plain kernel {tf(plain[0])} (non-causal)")
print("one paper layer, rank 0 of an emulated zigzag ring of 16 (6250 tokens, 1 sequence)")
s = summary("ring-layer")
if s:
    hidden = float(s["comm_hidden_fraction"]) * 100 if s["comm_hidden_fraction"] else float("nan")
    print(f"  ringbench ring   {float(s['iter_ms_mean']):.2f} ms (95% CI {float(s['iter_ms_ci95_lo']):.2f}-{float(s['iter_ms_ci95_hi']):.2f}), communication hidden {hidden:.1f}%")
t = summary("tp-pp-layer")
if t:
    print(f"  ringbench tp-pp  {float(t['iter_ms_mean']):.2f} ms for its 1 layer of 2 (tp 8 x pp 2, rank 0; no pipeline bubble)")
for name in ("peer-layer-cudnn", "peer-layer-flash"):
    for o in objs(name):
        print(f"  {o['peer']:<30} {o['mean_s'] * 1e3:.2f} ms (min {o['min_s'] * 1e3:.2f})")
for o in objs("peer-check") + objs("peer-check-cudnn"):
    print(f"peer correctness: {o['check']}: rel L2 {o['rel_l2']:.2e} (tol {o['tol']:.0e}) {o['verdict']}")
EOF
