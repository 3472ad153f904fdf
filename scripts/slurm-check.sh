#!/usr/bin/env bash
# CI's cluster check: a real slurmctld and slurmd on this machine (scripts/slurm-local.sh), the CPU
# smoke job submitted with `sbatch --wait`, its results checked; then the same job with a task
# count that does not match the strategy, which must fail at once with ringbench's message.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --slurm
[ -x target/release/ringbench ] || cargo build --release
trap 'bash scripts/slurm-local.sh stop' EXIT
bash scripts/slurm-local.sh start
mkdir -p results
fail() { echo "slurm-check: $*" >&2; exit 1; }

job=$(sbatch --parsable --wait jobs/cpu-smoke.sbatch) || { cat results/*.out >&2 || true; fail "the CPU smoke job failed"; }
echo "slurm-check: smoke job $job finished"
log="results/$job.out"
for r in 0 1 2 3; do
    f=$(printf "results/%s/rank-%05d.h5" "$job" "$r")
    [ -s "$f" ] || fail "missing $f"
done
summary="results/$job/summary.csv"
[ -s "$summary" ] || fail "missing $summary"
for strategy in tp-pp ring allgather ulysses usp tp-cp; do
    grep -q "^$job,$strategy,[0-9]*,complete," "$summary" || fail "$summary should hold $strategy, complete: $(cat "$summary")"
done
grep -q '^PASS$' "$log" || fail "verify did not PASS: $(cat "$log")"
echo "slurm-check: results/$job holds 4 rank files and summary.csv (tp-pp, ring, allgather, ulysses, usp, tp-cp); verify PASS"

# 3 tasks for tp 2 x pp 2: refused before any work.
start=$(date +%s)
if bad=$(sbatch --parsable --wait --ntasks=3 jobs/cpu-smoke.sbatch); then
    fail "a 3-task job for tp 2 x pp 2 succeeded: $(cat "results/$bad.out")"
fi
bad=${bad%%;*}
grep -q -- '--tp 2 x --pp 2 = 4 ranks, but the job has 3 ranks' "results/$bad.out" || fail "no clear message: $(cat "results/$bad.out")"
[ $(( $(date +%s) - start )) -lt 60 ] || fail "the mismatched job took more than 60 s to fail"
[ ! -e "results/$bad" ] || fail "the mismatched job created results/$bad"
echo "slurm-check: a 3-task job for tp 2 x pp 2 failed at once with ringbench's message"
echo "slurm-check: 2 passed, 0 failed"
