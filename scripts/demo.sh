#!/usr/bin/env bash
# The newcomer's first command: install the system packages, build, and run every strategy on the
# CPU backend with the `small` preset under mpirun (4 ranks on this machine, loopback), its prompt
# and then 16 decode steps, then a training step of each, then verify.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
# Open MPI refuses to start as root without these; containers and CI run as root.
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
MPIRUN=(mpirun --oversubscribe -np 4 --hostfile hostfiles/loopback)
# On fewer cores than ranks, ranks waiting in MPI must yield the core, not spin on it: spinning
# ranks would starve the computing ones (decode's small collectives ran 10x slower on 2 cores).
if [ "$(nproc)" -lt 4 ]; then MPIRUN+=(--mca mpi_yield_when_idle 1); fi
# Every strategy in one launch; results (rank files, summary.csv, ranks.csv) land in results/<run id>/.
"${MPIRUN[@]}" target/release/ringbench run --backend cpu --preset small --strategy all --tp 2 --pp 2 --ring 4 --decode-tokens 16
# The training step of each (forward, backward, gradient all-reduce), side by side with its gradient traffic.
"${MPIRUN[@]}" target/release/ringbench run --backend cpu --preset small --strategy all --tp 2 --pp 2 --ring 4 --train --warmup 1 --iters 2
"${MPIRUN[@]}" target/release/ringbench verify --backend cpu --preset tiny --strategy ring --ring 4
