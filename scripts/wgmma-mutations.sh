#!/usr/bin/env bash
# The mutations of kernels/flash_wgmma.cu that the SIMT check (tests/simt/wgmma_check.cpp) must
# catch, each alone (kernels/NOTES.md, v2): every one is applied to a copy of the sources, built
# and run with copies landing late (deferred) and early (eager); caught means a FAIL line, or the
# stand-in aborting with the rule broken, in at least one mode. Prints one line per mutation and
# mode; exits 1 if any mutation goes uncaught (or no longer applies: the kernel changed). About
# two minutes on two cores. Developer tooling, not part of CI.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringbench-mutations.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# name, then the exact text of the kernel to replace, then its replacement.
MUTATIONS=(
    "k-descriptor-swizzle-32B"
    'return smem_desc(k_tile(s) + (kk / 4) * FW_BN * 128 + (kk % 4) * 32, 16, 1024); };'
    'return smem_desc(k_tile(s) + (kk / 4) * FW_BN * 128 + (kk % 4) * 32, 16, 1024) ^ (2ull << 62); };'
    "q-descriptor-no-swizzle"
    'return smem_desc(smem + L::Q + (kk / 4) * FW_BM * 128 + cw * 64 * 128 + (kk % 4) * 32, 16, 1024); };'
    'return smem_desc(smem + L::Q + (kk / 4) * FW_BM * 128 + cw * 64 * 128 + (kk % 4) * 32, 16, 1024) & ~(3ull << 62); };'
    "every-descriptor-swizzle-64B"
    '(1ull << 62)'
    '(2ull << 62)'
    "no-mbarrier-wait-for-K"
    'mbar_wait(full_k(st), (j / FW_STAGES) & 1);'
    ''
    "no-mbarrier-wait-for-V"
    'mbar_wait(full_v(st), (j / FW_STAGES) & 1);'
    ''
    "no-wgmma-wait-before-softmax-reads-S"
    'wgmma_wait<1>(); //'
    '//'
    "producer-refills-a-stage-without-waiting-for-its-release"
    'mbar_wait(empty(s), ((j / FW_STAGES) & 1) ^ 1);'
    ''
    "consumers-release-a-stage-before-their-P-V-completes"
    $'        wgmma_wait<0>();\n        wgmma_fence_operands(acc);\n        wgmma_fence_operands(p); // P V has read P: it may be overwritten now\n        release(j - 1);'
    $'        release(j - 1);\n        wgmma_wait<0>();'
    "softmax-rescale-of-O-dropped"
    $'        rescale();\n        pack_p();'
    '        pack_p();'
    "P-repacked-while-P-V-in-flight"
    $'        wgmma_wait<0>();\n        wgmma_fence_operands(acc);\n        wgmma_fence_operands(p); // P V has read P: it may be overwritten now\n        release(j - 1);\n        rescale();\n        pack_p();'
    $'        pack_p();\n        wgmma_wait<0>();\n        release(j - 1);\n        rescale();'
    "O-rescaled-while-P-V-in-flight"
    $'        wgmma_wait<0>();\n        wgmma_fence_operands(acc);\n        wgmma_fence_operands(p); // P V has read P: it may be overwritten now\n        release(j - 1);\n        rescale();'
    $'        rescale();\n        wgmma_wait<0>();\n        release(j - 1);'
    "V-descriptor-LBO-wrong"
    'kk * 16 * 128, FW_BN * 128, 1024)'
    'kk * 16 * 128, 64 * 128, 1024)'
    "no-wgmma-fence-before-P-V"
    $'        wgmma_fence();\n        wgmma_fence_operands(acc);'
    '        wgmma_fence_operands(acc);'
    "no-fence-after-mbarrier-init"
    '        fence_barrier_init();'
    ''
)

uncaught=0
for ((i = 0; i < ${#MUTATIONS[@]}; i += 3)); do
    name=${MUTATIONS[i]}
    dir=$WORK/$name
    mkdir -p "$dir/kernels" "$dir/tests/simt"
    cp "$ROOT"/kernels/* "$dir/kernels/"
    cp "$ROOT"/tests/simt/* "$dir/tests/simt/"
    if ! python3 - "$dir/kernels/flash_wgmma.cu" "${MUTATIONS[i + 1]}" "${MUTATIONS[i + 2]}" <<'EOF'; then
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(1)
open(path, "w").write(text.replace(old, new))
EOF
        echo "$name: does not apply (the kernel changed): UNCAUGHT"
        uncaught=1
        continue
    fi
    if ! g++ -std=c++20 -O2 -pthread -ffp-contract=off -w -I "$dir/tests/simt" "$dir/tests/simt/wgmma_check.cpp" -o "$dir/check"; then
        echo "$name: does not compile: UNCAUGHT"
        uncaught=1
        continue
    fi
    caught=0
    for mode in deferred eager; do
        out=$(SIMT_COPY=$mode timeout 120 "$dir/check" 2>&1)
        rc=$?
        fails=$(grep -c ': FAIL' <<<"$out")
        why=$(grep -m1 -E 'SIMT stand-in|never reach' <<<"$out" | cut -c1-140)
        [ $rc -ne 0 ] && caught=1
        echo "$name [$mode]: exit $rc, $fails failing cases${why:+; $why}"
    done
    [ $caught = 1 ] || {
        echo "$name: UNCAUGHT"
        uncaught=1
    }
done
[ $uncaught = 0 ] && echo "every mutation caught" || echo "some mutation went uncaught"
exit $uncaught
