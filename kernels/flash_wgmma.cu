// Flash attention forward for Hopper (sm_90a): FlashAttention-3's structure on wgmma and the
// tensor memory accelerator, head dims 64 and 128. Same contract as flash_attention.cu: attention
// of a query span against a key/value span, per head, causal by global position, GQA, merged in
// the epilogue into the ring's FP32 (o, lse) accumulators by the log-sum-exp rule. CPU twin:
// backend::flash_twin with 128-key tiles (selftest and tests/simt hold the kernel to it). Design,
// floor and prediction: kernels/NOTES.md, "v2".
//
// Layouts: q [rows, heads x D] and kv [rows, 2 x kv_heads x D] = [K | V] reach the kernel as two
// tensor maps (cuTensorMapEncodeTiled, BF16, 128-byte swizzle, boxes of 64 columns x 128 rows)
// whose row 0 is the span's first row and whose row count is the span's length, so rows past a
// span read as zeros; o [rows, heads x D] and lse [rows, heads] FP32 by pointer, as before.
//
// One CTA: 128 query rows of one head, three warpgroups.
// - Warpgroup 0, the producer, gives up registers (setmaxnreg) and one thread issues TMA loads:
//   the Q tile once, then for each tile of 128 keys its K and its V into one of two stages, each
//   completing on its own mbarrier (full_k, full_v), after waiting for the stage's `empty`.
// - Warpgroups 1 and 2, the consumers, take 64 query rows each (with more registers). Per key
//   tile j: S_j = Q K_j^T by wgmma from shared memory (issued before the previous tile's P V,
//   so the softmax below overlaps that P V), masking only on tiles that cross the causal diagonal
//   or the end of the keys, the online softmax in FP32 (log2 units, running max and sum), and
//   O += P_{j-1} V_{j-1} by wgmma with P from registers (the S accumulator is the A fragment) and
//   V from shared memory, transposed by the descriptor. A stage is released once both consumers'
//   P V on it has completed.
// Shared memory per CTA: Q 128 x D, two stages of K and V 128 x D each, in 64-column slabs of
// 128-byte rows (the TMA box), swizzled by 128 bytes: 160 KB at D = 128, 80 KB at D = 64.
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"
#include "flash_common.cuh"

#define FW_BM 128     // query rows per CTA: two consumer warpgroups of 64
#define FW_BN 128     // keys per tile
#define FW_STAGES 2   // K/V stages in flight
#define FW_THREADS 384
#define FW_SLAB 64    // columns per 128-byte TMA box (and per swizzle row)

// The shared-memory layout of one CTA, in bytes from the 1024-aligned base.
template <int D> struct FwSmem {
    static constexpr int TILE = FW_BN * D * 2; // one K or V tile (FW_BM == FW_BN: also the Q tile)
    static constexpr int Q = 0;
    static constexpr int K0 = TILE;             // stage s: K at K0 + 2 s TILE, V TILE after it
    static constexpr int BAR = TILE + FW_STAGES * 2 * TILE;
    // Barriers: q_full, then per stage full_k, full_v, empty.
    static constexpr int BYTES = BAR + 8 * (1 + 3 * FW_STAGES);
    static constexpr int LAUNCH_BYTES = BYTES + 1024; // what the launch asks for (alignment slack)
};

// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading
// and stride byte offsets (each >> 4, 14 bits), 128-byte swizzle (mode 1 in bits 62-63), base
// offset 0 (every tile starts on the 1024-byte swizzle grid; a k-step within a 128-byte row moves
// only the start address, and the hardware swizzles the address bits).
__device__ __forceinline__ u64 smem_desc(const void* p, unsigned lbo, unsigned sbo) {
    return (u64)((smem_u32(p) & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void mbar_wait(u64* bar, unsigned parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

template <int D>
__device__ __forceinline__ void flash_wgmma(const TensorMap* q_map, const TensorMap* kv_map, float* o, float* lse, int heads, int kv_heads,
                                            int q_row0, int q_len, int q_pos0, int k_len, int k_pos0, int causal, float scale) {
    using L = FwSmem<D>;
    constexpr int SLABS = D / FW_SLAB;
    unsigned char* const smem = dynamic_smem();
    u64* const bars = reinterpret_cast<u64*>(smem + L::BAR);
    u64* const q_full = bars;
    auto full_k = [&](int s) { return bars + 1 + 3 * s; };
    auto full_v = [&](int s) { return bars + 2 + 3 * s; };
    auto empty = [&](int s) { return bars + 3 + 3 * s; };
    auto k_tile = [&](int s) { return smem + L::K0 + 2 * s * L::TILE; };
    auto v_tile = [&](int s) { return smem + L::K0 + (2 * s + 1) * L::TILE; };

    const int h = blockIdx.y, m0 = blockIdx.x * FW_BM;
    const int g_kv = h / (heads / kv_heads);
    // Keys the CTA's last query can see; later tiles are never loaded.
    int kv_end = k_len;
    if (causal) {
        const int last_q = q_pos0 + min(m0 + FW_BM, q_len) - 1;
        kv_end = max(0, min(k_len, last_q - k_pos0 + 1));
    }
    if (kv_end == 0) return; // no key visible to any row: the accumulators keep their state
    const int tiles = (kv_end + FW_BN - 1) / FW_BN;

    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < FW_STAGES; s++) {
            mbar_init(full_k(s), 1);
            mbar_init(full_v(s), 1);
            mbar_init(empty(s), 8); // one arrival per consumer warp
        }
        fence_barrier_init();
    }
    __syncthreads(); // the last block-wide barrier: the warpgroups part here

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        // ---- producer ----
        setmaxnreg_dec<24>();
        if (threadIdx.x != 0) return;
        mbar_arrive_expect_tx(q_full, FW_BM * D * 2);
        for (int c = 0; c < SLABS; c++) tma_load_2d(smem + L::Q + c * FW_BM * 128, q_map, h * D + c * FW_SLAB, m0, q_full);
        for (int j = 0; j < tiles; j++) {
            const int s = j % FW_STAGES;
            // The stage's previous tile (j - FW_STAGES) has been released by both consumers; a
            // fresh barrier's phase of parity 1 counts as complete, so the first pass goes ahead.
            mbar_wait(empty(s), ((j / FW_STAGES) & 1) ^ 1);
            mbar_arrive_expect_tx(full_k(s), FW_BN * D * 2);
            for (int c = 0; c < SLABS; c++) tma_load_2d(k_tile(s) + c * FW_BN * 128, kv_map, g_kv * D + c * FW_SLAB, j * FW_BN, full_k(s));
            mbar_arrive_expect_tx(full_v(s), FW_BN * D * 2);
            for (int c = 0; c < SLABS; c++)
                tma_load_2d(v_tile(s) + c * FW_BN * 128, kv_map, (kv_heads + g_kv) * D + c * FW_SLAB, j * FW_BN, full_v(s));
        }
        return;
    }

    // ---- consumers: warpgroup cw takes query rows [64 cw, 64 cw + 64) of the CTA ----
    setmaxnreg_inc<240>();
    const int cw = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t = lane & 3; // fragment coordinates, as mma.sync's
    const int row_in_cta = 64 * cw + 16 * warp + g; // this thread's first row; the other is 8 below
    const int qpos[2] = {q_pos0 + m0 + row_in_cta, q_pos0 + m0 + row_in_cta + 8};
    const int warp_first_qpos = q_pos0 + m0 + 64 * cw + 16 * warp;
    const float scale2 = scale * LOG2E; // scores in log2 units

    // Descriptors: Q (A) and K (B) K-major, a k-step of 16 columns is 32 bytes along a 128-byte
    // row, a new slab every 4 steps, 8-row groups 1024 bytes apart (SBO); LBO is unused when K-major
    // and swizzled. V (B, MN-major): a k-step is 16 key rows (2048 bytes), 8-key groups 1024 bytes
    // apart (SBO), 64-column slabs FW_BN x 128 bytes apart (LBO).
    auto q_desc = [&](int kk) { return smem_desc(smem + L::Q + (kk / 4) * FW_BM * 128 + cw * 64 * 128 + (kk % 4) * 32, 16, 1024); };
    auto k_desc = [&](int s, int kk) { return smem_desc(k_tile(s) + (kk / 4) * FW_BN * 128 + (kk % 4) * 32, 16, 1024); };
    auto v_desc = [&](int s, int kk) { return smem_desc(v_tile(s) + kk * 16 * 128, FW_BN * 128, 1024); };

    float acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) acc[i] = 0.0f;
    float s[FW_BN / 2];
    unsigned p[FW_BN / 16][4];
    float row_max[2] = {NEG_INF, NEG_INF}, row_sum[2] = {0.0f, 0.0f};

    // S = Q K_j^T into s (issued, not waited).
    auto issue_qk = [&](int j) {
        const int st = j % FW_STAGES;
        mbar_wait(full_k(st), (j / FW_STAGES) & 1);
        wgmma_fence();
        wgmma_fence_operands(s);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_ss<FW_BN>(s, q_desc(kk), k_desc(st, kk), kk > 0);
        wgmma_commit();
        wgmma_fence_operands(s);
    };
    // O += P V_j (issued, not waited).
    auto issue_pv = [&](int j) {
        const int st = j % FW_STAGES;
        mbar_wait(full_v(st), (j / FW_STAGES) & 1);
        wgmma_fence();
        wgmma_fence_operands(acc);
#pragma unroll
        for (int kk = 0; kk < FW_BN / 16; kk++) wgmma_rs_vt<D>(acc, p[kk], v_desc(st, kk), 1);
        wgmma_commit();
        wgmma_fence_operands(acc);
    };
    // Mask, scale and exponentiate tile j's scores in s against the new running max; the row
    // sums and the correction of what came before (corr) are updated, acc is not touched (a P V
    // may still be reading into it).
    float corr[2];
    auto softmax = [&](int j) {
        const int n0 = j * FW_BN;
        const bool mask = n0 + FW_BN > kv_end || (causal && k_pos0 + n0 + FW_BN - 1 > warp_first_qpos);
#pragma unroll
        for (int i = 0; i < FW_BN / 2; i++) {
            const int key = n0 + 8 * (i >> 2) + 2 * t + (i & 1);
            float x = s[i] * scale2;
            if (mask && (key >= kv_end || (causal && k_pos0 + key > qpos[(i >> 1) & 1]))) x = NEG_INF;
            s[i] = x;
        }
        float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int i = 0; i < FW_BN / 2; i++) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
        float ref[2], part[2] = {0.0f, 0.0f};
        running_max_step(mx, row_max, ref, corr);
#pragma unroll
        for (int i = 0; i < FW_BN / 2; i++) {
            s[i] = exp2f(s[i] - ref[(i >> 1) & 1]);
            part[(i >> 1) & 1] += s[i];
        }
        row_sum[0] = row_sum[0] * corr[0] + part[0];
        row_sum[1] = row_sum[1] * corr[1] + part[1];
    };
    // P in BF16 as wgmma's register A fragment: k-step kk takes s[8 kk .. 8 kk + 7].
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < FW_BN / 16; kk++) {
#pragma unroll
            for (int r = 0; r < 4; r++) p[kk][r] = pack_bf16(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
        }
    };
    auto rescale = [&]() {
#pragma unroll
        for (int i = 0; i < D / 2; i++) acc[i] *= corr[(i >> 1) & 1];
    };
    // Both consumers' warps release the stage of tile j once their P V on it has completed.
    auto release = [&](int j) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empty(j % FW_STAGES));
    };

    mbar_wait(q_full, 0);
    issue_qk(0);
    wgmma_wait<0>();
    wgmma_fence_operands(s);
    softmax(0); // acc is zero: no rescale needed
    pack_p();
    for (int j = 1; j < tiles; j++) {
        issue_qk(j);     // S_j = Q K_j^T ...
        issue_pv(j - 1); // ... then O += P_{j-1} V_{j-1}, both in flight
        wgmma_wait<1>(); // S_j has completed (groups complete in order); P V may still run
        wgmma_fence_operands(s);
        softmax(j); // overlaps the P V
        wgmma_wait<0>();
        wgmma_fence_operands(acc);
        wgmma_fence_operands(p); // P V has read P: it may be overwritten now
        release(j - 1);
        rescale();
        pack_p();
    }
    issue_pv(tiles - 1);
    wgmma_wait<0>();
    wgmma_fence_operands(acc);
    release(tiles - 1);

    // Epilogue: merge (acc / l, max ln 2 + ln l) into the accumulators, row by row.
#pragma unroll
    for (int r = 0; r < 2; r++)
        merge_row<D>(o, lse, heads, h, q_row0, q_len, m0 + row_in_cta + 8 * r, t, row_max[r], row_sum[r],
                     [&](int n, int j) { return acc[4 * n + 2 * r + j]; });
}

#define FW_ARGS                                                                                                                      \
    const __grid_constant__ TensorMap q_map, const __grid_constant__ TensorMap kv_map, float *o, float *lse, int heads, int kv_heads, \
        int q_row0, int q_len, int q_pos0, int k_len, int k_pos0, int causal, float scale

// One entry per head dim; FW_THREADS threads, FwSmem<D>::LAUNCH_BYTES of dynamic shared memory.
#define FW_ENTRY(NAME, D)                                                                                                              \
    extern "C" __global__ void __launch_bounds__(FW_THREADS, 1) NAME(FW_ARGS) {                                                        \
        flash_wgmma<D>(&q_map, &kv_map, o, lse, heads, kv_heads, q_row0, q_len, q_pos0, k_len, k_pos0, causal, scale);               \
    }
FW_ENTRY(flash_wgmma_d64_bf16, 64)
FW_ENTRY(flash_wgmma_d128_bf16, 128)
