#!/usr/bin/env bash
# The GPU check (../shared/GPU.md), run on the GPU machine from the repository root with the
# release binary at target/release/ringbench, built on the development machine with
#   CUDARC_CUDA_VERSION=13000 cargo build --release --no-default-features
# (the default build binds CUDA 12; cudarc refuses two versions at once).
# In order: `info`; `selftest` (every kernel and op against the CPU backend, and NCCL's
# self-exchange and all-reduce on one rank); `verify` on the GPU for reference, ring and tp-pp with
# NCCL on one rank and with --comm mpi on 2 and 4 processes sharing the GPU, allgather and ulysses
# on one NCCL rank (NCCL's AllGather, the all-to-all as grouped sends and receives), the double
# ring on one NCCL rank (its outer ring's second communicator and stream) and on 4 processes over
# MPI, the ring with grouped K/V heads and SwiGLU; a training step (`verify --train`: the backward
# kernels, cuBLAS's transposed GEMMs, the FP32 gradient all-reduce) on one NCCL rank and on 2 MPI
# processes at head dims 16, 64 and 128; a small timed run of
# every strategy; the launch overhead with and without cudarc's buffer events; then the
# benchmarks, each beside its PyTorch peer from the same run on the same card: the attention
# kernels alone (32 heads x 6250 x 6250, head dim 128: mma.sync at both block shapes, wgmma + TMA,
# plain), the attention backward (flash, causal) beside SDPA's backward, and one paper-model
# layer on rank 0 of an emulated zigzag ring of 16.
#
# It ends by itself within 7 minutes whatever hangs: one deadline for the whole script
# (GPU_CHECK_DEADLINE_S, default 380 s, then at most 25 s for the table), each step killed at its own limit or at the deadline,
# whichever comes first; steps that no longer fit are skipped, and when `info` shows that no GPU
# context can be created every later step is skipped. Full logs go to $OUT (when set) as each step
# ends, and so does the table (table.txt), rewritten after every step; it is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LOGS=${OUT:-/tmp/ringbench-gpu-check}
mkdir -p "$LOGS"
BIN=${RINGBENCH_BIN:-target/release/ringbench}
MPIRUN=(mpirun --oversubscribe --bind-to none)
DEADLINE=$((SECONDS + ${GPU_CHECK_DEADLINE_S:-380}))
# Seconds a killed step may take to go (timeout's TERM, then KILL) and the table to be written.
GRACE=10
gpu=yes
results=()
write_table() {
    { echo "ringbench GPU check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
      printf '%s\n' "${results[@]}"; } > "$LOGS/table.txt"
}
check() { # name, limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS - GRACE)) verdict
    if [ "$gpu" != yes ]; then
        verdict="SKIPPED(no GPU context)"
    elif [ "$left" -lt 5 ]; then
        verdict="SKIPPED(deadline)"
    else
        [ "$limit" -gt "$left" ] && limit=$left
        local start=$SECONDS
        timeout -k 5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
        local rc=$?
        case $rc in
            0) verdict=PASS ;;
            124 | 137) verdict="TIMEOUT(${limit}s)" ;;
            *) verdict="FAIL($rc)" ;;
        esac
        verdict=$(printf '%-16s %4ss' "$verdict" $((SECONDS - start)))
        tail -n 3 "$LOGS/$name.log"
    fi
    results+=("$(printf '%-34s %s' "$name" "$verdict")")
    write_table
}

check info 30 "$BIN" info
# Every later step needs a context on the GPU: without one, say so once and skip them.
if ! grep -q '^GPU 0: .*compute capability' "$LOGS/info.log" 2>/dev/null; then
    echo "no context could be created on GPU 0 (see info.log): every later step is skipped"
    gpu=no
fi
check selftest 150 "$BIN" selftest
check verify-reference-1-nccl 60 "$BIN" verify --backend cuda --strategy reference --seq-len 1023
check verify-ring-1-nccl 60 "$BIN" verify --backend cuda --strategy ring --ring 1 --seq-len 1023
check verify-tp-pp-1-nccl 60 "$BIN" verify --backend cuda --strategy tp-pp --tp 1 --pp 1 --seq-len 1023
check verify-allgather-1-nccl 30 "$BIN" verify --backend cuda --strategy allgather --ring 1 --seq-len 1023
check verify-ulysses-1-nccl 30 "$BIN" verify --backend cuda --strategy ulysses --ring 1 --kv-heads 2 --seq-len 1023
# The double ring's outer ring makes a second NCCL communicator on a communication stream of its own.
check verify-double-ring-1-nccl 30 "$BIN" verify --backend cuda --strategy double-ring --ring 1 --window 1 --seq-len 1023
# Decode: the split kernel (kernels/decode_attention.cu), the K/V cache appended step by step, the
# merge of partial results, held to the reference and to the FP64 oracle's prefill of prompt + steps.
check verify-ring-1-decode 30 "$BIN" verify --backend cuda --strategy ring --ring 1 --kv-heads 4 --seq-len 1023 --decode-tokens 5
check verify-ring-2-mpi 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy ring --seq-len 1023
check verify-ring-4-mpi 60 "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --comm mpi --strategy ring --layout contiguous --seq-len 1000
check verify-double-ring-4-mpi 60 "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --comm mpi --strategy double-ring --window 2 --kv-heads 2 --seq-len 1000
check verify-allgather-2-mpi-decode 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy allgather --seq-len 1000 --batch 3 --decode-tokens 4
check verify-tp-pp-2-mpi 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy tp-pp --tp 2 --seq-len 1023
check verify-tp-pp-4-mpi 60 "${MPIRUN[@]}" -np 4 "$BIN" verify --backend cuda --comm mpi --strategy tp-pp --tp 2 --pp 2 --layers 4 --no-causal --seq-len 97
# Grouped K/V heads (one K/V head for all, as MQA) and SwiGLU: the kernels' GQA indexing and the
# SwiGLU kernel inside a whole model, its reference held to the FP64 oracle.
check verify-gqa-swiglu-ring-2-mpi 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy ring --kv-heads 1 --mlp-act swiglu --seq-len 1023
# A training step: forward, backward and the gradient all-reduce, held to the reference and the
# FP64 oracle's gradients; the plain backward kernels at head dim 16 (tiny preset) over NCCL, the
# flash backward at 128 (ring, grouped K/V, SwiGLU) and 64 (tp-pp) over MPI.
check verify-ring-1-nccl-train 45 "$BIN" verify --backend cuda --strategy ring --ring 1 --seq-len 1023 --train
check verify-ring-2-mpi-train-d128 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy ring --d-model 512 --heads 4 --kv-heads 2 --mlp 1024 --mlp-act swiglu --layers 2 --seq-len 1000 --train
check verify-tp-pp-2-mpi-train-d64 60 "${MPIRUN[@]}" -np 2 "$BIN" verify --backend cuda --comm mpi --strategy tp-pp --tp 2 --d-model 256 --heads 4 --layers 2 --seq-len 1023 --train
check run-small-all-4-mpi 90 "${MPIRUN[@]}" -np 4 "$BIN" run --backend cuda --comm mpi --preset small --strategy all --tp 2 --pp 2 --ring 4 --decode-tokens 8 --out "$LOGS/results" --run-id small --quiet
check bench-launch 40 "$BIN" bench launch --json

# Benchmarks: ringbench and its PyTorch peer, same shapes, same card, this run; the headline pairs
# first, so that a deadline cuts the extras.
SHAPE=(--heads 32 --head-dim 128 --queries 6250 --keys 6250)
LAYER=(--preset paper --layers 1 --batch 1 --warmup 2 --iters 5 --quiet)
check peer-check 60 python3 scripts/torch_peer.py check --backend flash --json
check peer-check-cudnn 60 python3 scripts/torch_peer.py check --backend cudnn --json
check bench-attention 45 "$BIN" bench attention "${SHAPE[@]}" --json
check peer-attention 60 python3 scripts/torch_peer.py attention "${SHAPE[@]}" --json
check bench-attention-causal 45 "$BIN" bench attention "${SHAPE[@]}" --causal --json
check peer-attention-causal 60 python3 scripts/torch_peer.py attention "${SHAPE[@]}" --causal --json
# The attention backward (kernels/flash_backward.cu) beside SDPA's backward: FLOPs 2.5 x forward.
check bench-attention-backward-causal 60 "$BIN" bench attention "${SHAPE[@]}" --causal --backward --json
check peer-attention-backward-causal 60 python3 scripts/torch_peer.py attention "${SHAPE[@]}" --causal --backward --json
# A decode step's attention: one query against a 128Ki-token cache of a llama3-70b layer (64
# heads, 8 K/V heads of 128), K/V bytes read per second against the card's HBM bandwidth.
DECODE=(--heads 64 --kv-heads 8 --head-dim 128 --keys 131072)
check bench-decode 45 "$BIN" bench attention --decode --queries 1 "${DECODE[@]}" --iters 20 --json
check peer-decode 60 python3 scripts/torch_peer.py decode "${DECODE[@]}" --json
check bench-attention-wgmma 45 "$BIN" bench attention "${SHAPE[@]}" --kernel wgmma --json
check bench-attention-wgmma-causal 45 "$BIN" bench attention "${SHAPE[@]}" --kernel wgmma --causal --json
check emulated-ring-layer 90 "$BIN" run --backend cuda --strategy ring --emulate-world 16 --as-rank 0 "${LAYER[@]}" --out "$LOGS/results" --run-id ring-layer
check peer-layer-cudnn 60 python3 scripts/torch_peer.py layer --ring 16 --rank 0 --backend cudnn --json
check peer-layer-flash 60 python3 scripts/torch_peer.py layer --ring 16 --rank 0 --backend flash --json
check bench-attention-m64 45 "$BIN" bench attention "${SHAPE[@]}" --kernel flash64 --json
check bench-attention-m64-causal 45 "$BIN" bench attention "${SHAPE[@]}" --kernel flash64 --causal --json
check bench-attention-plain 45 "$BIN" bench attention "${SHAPE[@]}" --kernel plain --iters 3 --json
check bench-attention-backward 60 "$BIN" bench attention "${SHAPE[@]}" --backward --json
check peer-attention-backward 60 python3 scripts/torch_peer.py attention "${SHAPE[@]}" --backward --json
check emulated-tp-pp-layer 90 "$BIN" run --backend cuda --strategy tp-pp --tp 8 --pp 2 --emulate-world 16 --as-rank 0 --preset paper --layers 2 --batch 1 --warmup 2 --iters 5 --quiet --out "$LOGS/results" --run-id tp-pp-layer
[ -f "$LOGS/results/small/summary.csv" ] && cp "$LOGS/results/small/summary.csv" "$LOGS/summary.csv"

echo
cat "$LOGS/table.txt"
echo
timeout 20 python3 - "$LOGS" <<'EOF' | tee -a "$LOGS/table.txt"
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
    if not k.startswith("flash"):
        return k.split()[0]
    return ("wgmma m" if "wgmma" in k else "flash m") + k.split(", ")[1].split()[0]
for label, ours, peer in [
    ("non-causal", ["bench-attention", "bench-attention-m64", "bench-attention-wgmma"], "peer-attention"),
    ("causal", ["bench-attention-causal", "bench-attention-m64-causal", "bench-attention-wgmma-causal"], "peer-attention-causal"),
]:
    row = [f"ringbench {kernel(o)} {tf(o)}" for name in ours for o in objs(name)]
    row += [f"{o['peer']} {tf(o)}" for o in objs(peer)]
    print(f"  {label:<11} " + " | ".join(row or ["no result"]))
print("decode attention, 1 query x 131072 cached keys, 64 heads (8 K/V) of 128 (GB/s of K/V read)")
hbm = next((v for k, v in (("H200", 4800.0), ("H100", 3350.0), ("A100", 2039.0)) for o in objs("bench-decode") if k in o.get("device", "")), None)
def gb(o):
    if "gbps" not in o:
        return o.get("error", "n/a")[:40]
    share = f", {100 * o['gbps'] / hbm:.0f}% of {hbm:.0f} GB/s HBM" if hbm else ""
    return f"{o['gbps']:.0f} GB/s (best {o['gbps_best']:.0f}){share}"
row = [f"ringbench decode kernel {gb(o)}" for o in objs("bench-decode")] + [f"{o['peer']} {gb(o)}" for o in objs("peer-decode")]
print("  " + " | ".join(row or ["no result"]))
print("attention backward, same shape (TFLOP/s: 2.5 x the forward's count, as FlashAttention counts)")
for label, ours, peer in [("causal", "bench-attention-backward-causal", "peer-attention-backward-causal"),
                          ("non-causal", "bench-attention-backward", "peer-attention-backward")]:
    row = [f"ringbench flash backward {tf(o)}" for o in objs(ours)] + [f"{o['peer']} backward {tf(o)}" for o in objs(peer)]
    print(f"  {label:<11} " + " | ".join(row or ["no result"]))
plain = objs("bench-attention-plain")
if plain:
    print(f"  {'plain':<11} ringbench plain kernel {tf(plain[0])} (non-causal)")
print("one paper layer, rank 0 of an emulated zigzag ring of 16 (6250 tokens, 1 sequence)")
s = summary("ring-layer")
if s:
    hidden = float(s["comm_hidden_fraction"]) * 100 if s["comm_hidden_fraction"] else float("nan")
    ci = f"95% CI {float(s['iter_ms_ci95_lo']):.2f}-{float(s['iter_ms_ci95_hi']):.2f}" if s["iter_ms_ci95_lo"] else "95% CI not computable"
    print(f"  ringbench ring   {float(s['iter_ms_mean']):.2f} ms ({ci}), communication hidden {hidden:.1f}%")
t = summary("tp-pp-layer")
if t:
    print(f"  ringbench tp-pp  {float(t['iter_ms_mean']):.2f} ms for its 1 layer of 2 (tp 8 x pp 2, rank 0; no pipeline bubble)")
for name in ("peer-layer-cudnn", "peer-layer-flash"):
    for o in objs(name):
        print(f"  {o['peer']:<30} {o['mean_s'] * 1e3:.2f} ms (min {o['min_s'] * 1e3:.2f})")
for o in objs("bench-launch"):
    print(f"launch of a small kernel, {o['ordering']}: host {o['host_us_per_launch']:.2f} us, device {o['device_us_per_launch']:.2f} us per launch")
try:
    with open(os.path.join(logs, "selftest.log")) as f:
        for line in f:
            # Each source's format, then its kernels' registers, NVRTC's words and any refusal.
            if " loaded as " in line or line.startswith("selftest") or line.startswith("  "):
                print(line.rstrip())
except OSError:
    pass
for o in objs("peer-check") + objs("peer-check-cudnn"):
    print(f"peer correctness: {o['check']}: rel L2 {o['rel_l2']:.2e} (tol {o['tol']:.0e}) {o['verdict']}")
EOF
