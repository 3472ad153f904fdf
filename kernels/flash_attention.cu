// Flash attention forward on tensor cores (mma.sync m16n8k16, BF16 in, FP32 accumulate) for head
// dims 64 and 128: attention of a query span against a key/value span, per head, causal by global
// position, merged in the epilogue into the ring's FP32 (o, lse) accumulators by the log-sum-exp
// rule, so no separate pass re-reads them. CPU twin: backend::flash_twin (this arithmetic step by
// step, P rounded to BF16 as here; selftest and tests/simt hold the kernel to it); the
// plain kernel (attention.cu) serves other head dims. Design notes and measurements:
// kernels/NOTES.md.
//
// Layouts as attention.cu: q [rows, heads x D]; kv [rows, 2 x kv_heads x D] = [K | V], query head
// h attending with K/V head h / (heads / kv_heads); o [rows, heads x D] FP32; lse [rows, heads] FP32.
//
// One block: BM (64 or 128) query rows of one head, in warps of 16 rows. Q is staged through shared memory
// into registers once (as mma A fragments); then for each tile of 64 keys, K and V are copied to
// shared memory with cp.async, each copy overlapping compute (V's with S = Q K^T, the next K's
// with the softmax and P V), S is masked, scaled
// and exponentiated with an online softmax (running max and sum per row, in log2 units), P is
// rounded to BF16 straight from the S accumulators (the C fragment of two n-tiles is the A
// fragment of one k-step) and O += P V. Rows of shared memory are padded by 8 elements so the
// 8 row addresses of each ldmatrix fall in distinct banks. Tiles past the block's last visible
// key are never loaded (whole-tile skipping); only tiles that straddle the causal diagonal or the
// end of the keys are masked element by element.
#include "common.cuh"
#include "mma.cuh"
#include "flash_common.cuh"

#define FA_BN 64    // keys per tile

// Rows [0, ROWS) x D of a row-major source (stride `stride` elements) into shared memory with
// row stride D + 8, by THREADS threads; rows at or past `valid` are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* src, long long stride, int valid) {
    constexpr int CHUNKS = D / 8; // 16-byte chunks per row
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = r < valid;
        cp_async16(dst + r * (D + 8) + col, ok ? src + r * stride + col : src, ok);
    }
}

// BM query rows per block: BM / 16 warps of 16 rows each.
template <int D, int BM>
__device__ __forceinline__ void flash_attention(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* o, float* lse, int heads,
                                                int kv_heads, int q_row0, int q_len, int q_pos0, int k_row0, int k_len, int k_pos0, int causal,
                                                float scale) {
    constexpr int S = D + 8;  // shared row stride, elements
    constexpr int KD = D / 16; // k-steps of Q K^T
    constexpr int ND = D / 8;  // n-tiles of O
    constexpr int THREADS = 2 * BM; // 32 threads per 16 rows
    static_assert(BM <= 2 * FA_BN, "the Q tile is staged through the K and V buffers");
    // K then V; the Q tile is staged through both before the first K tile lands.
    __shared__ __align__(16) __nv_bfloat16 smem[2 * FA_BN * S];
    __nv_bfloat16* const sk = smem;
    __nv_bfloat16* const sv = smem + FA_BN * S;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3; // mma fragment coordinates: row group, thread in group
    const int h = blockIdx.y;
    const int m0 = blockIdx.x * BM;
    const int width = heads * D, kv_width = kv_heads * D;
    const int g_kv = h / (heads / kv_heads); // this head's K/V head
    const long long kv_stride = 2LL * kv_width;

    // Keys the block's last query can see; later tiles are never touched.
    int kv_end = k_len;
    if (causal) {
        const int last_q = q_pos0 + min(m0 + BM, q_len) - 1;
        kv_end = max(0, min(k_len, last_q - k_pos0 + 1));
    }
    if (kv_end == 0) return; // the whole block sees no key: its accumulators keep their state

    // Q: global -> shared (the K and V buffers as staging) -> A fragments in registers.
    load_tile<D, BM, THREADS>(smem, q + (long long)(q_row0 + m0) * width + h * D, width, q_len - m0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; kk++) ldmatrix_x4(qf[kk], smem + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8);
    __syncthreads();

    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float row_max[2] = {NEG_INF, NEG_INF}, row_sum[2] = {0.0f, 0.0f};
    const float scale2 = scale * LOG2E; // scores in log2 units: exp(x) = exp2(x log2 e)
    const int qpos[2] = {q_pos0 + m0 + warp * 16 + g, q_pos0 + m0 + warp * 16 + g + 8};
    const int warp_first_qpos = q_pos0 + m0 + warp * 16;

    // The K tile of the first step; afterwards each K tile is fetched while the previous one's
    // softmax and P V run, and each V tile while its S = Q K^T runs (one buffer each).
    load_tile<D, FA_BN, THREADS>(sk, kv + (long long)k_row0 * kv_stride + g_kv * D, kv_stride, kv_end);
    cp_async_commit();
    for (int n0 = 0; n0 < kv_end; n0 += FA_BN) {
        const __nv_bfloat16* kt = kv + (long long)(k_row0 + n0) * kv_stride + g_kv * D;
        load_tile<D, FA_BN, THREADS>(sv, kt + kv_width, kv_stride, kv_end - n0);
        cp_async_commit();
        cp_async_wait<1>(); // K has landed; V may still be in flight
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x 64 keys: 8 n-tiles of 8 keys.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                unsigned b[4];
                ldmatrix_x4(b, sk + (j * 8 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 + ((lane >> 3) & 1) * 8);
                mma16816(s[j], qf[kk], b);
                mma16816(s[j + 1], qf[kk], b + 2);
            }
        }
        __syncthreads(); // every warp is done with sk: the next K tile may land there
        const bool next = n0 + FA_BN < kv_end;
        if (next) {
            load_tile<D, FA_BN, THREADS>(sk, kt + FA_BN * kv_stride, kv_stride, kv_end - n0 - FA_BN);
            cp_async_commit();
        }

        // Scale; mask keys past the end and, on tiles that cross the diagonal, keys after the query.
        const bool mask = n0 + FA_BN > kv_end || (causal && k_pos0 + n0 + FA_BN - 1 > warp_first_qpos);
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = n0 + j * 8 + t * 2 + (e & 1);
                float x = s[j][e] * scale2;
                if (mask && (key >= kv_end || (causal && k_pos0 + key > qpos[e >> 1]))) x = NEG_INF;
                s[j][e] = x;
            }
        }

        // Online softmax: new running max per row (over the quad that holds the row), rescale.
        float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
        }
        float ref[2], corr[2], part[2] = {0.0f, 0.0f};
        running_max_step(mx, row_max, ref, corr);
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(s[j][e] - ref[e >> 1]);
                part[e >> 1] += s[j][e];
            }
        }
        // Each thread keeps its partial row sums; the quad's are added once, at the end.
        row_sum[0] = row_sum[0] * corr[0] + part[0];
        row_sum[1] = row_sum[1] * corr[1] + part[1];
#pragma unroll
        for (int n = 0; n < ND; n++) {
            acc[n][0] *= corr[0];
            acc[n][1] *= corr[0];
            acc[n][2] *= corr[1];
            acc[n][3] *= corr[1];
        }

        // V has landed (the next K tile, committed after it, may still be in flight).
        if (next) {
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // O += P V: P (16 x 64, BF16) from the S accumulators, V by transposing loads.
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; kk++) {
            unsigned p[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                             pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < ND; n += 2) {
                unsigned b[4];
                ldmatrix_x4_trans(b, sv + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S + n * 8 + (lane >> 4) * 8);
                mma16816(acc[n], p, b);
                mma16816(acc[n + 1], p, b + 2);
            }
        }
        __syncthreads(); // every warp is done with sv: the next V tile may land there
    }

    // Epilogue: merge (acc / sum, max ln 2 + ln sum) into the accumulators, row by row.
#pragma unroll
    for (int i = 0; i < 2; i++)
        merge_row<D>(o, lse, heads, h, q_row0, q_len, m0 + warp * 16 + g + 8 * i, t, row_max[i], row_sum[i],
                     [&](int n, int j) { return acc[n][2 * i + j]; });
}

#define FLASH_ARGS                                                                                                            \
    const __nv_bfloat16 *q, const __nv_bfloat16 *kv, float *o, float *lse, int heads, int kv_heads, int q_row0, int q_len, int q_pos0, \
        int k_row0, int k_len, int k_pos0, int causal, float scale

// Two block shapes per head dim, so the GPU check can time both: 64 query rows (4 warps, two
// blocks per SM) and 128 (8 warps, each K/V tile serves twice the queries).
#define FLASH_ENTRY(NAME, D, BM)                                                                                   \
    extern "C" __global__ void __launch_bounds__(2 * BM) NAME(FLASH_ARGS) {                                        \
        flash_attention<D, BM>(q, kv, o, lse, heads, kv_heads, q_row0, q_len, q_pos0, k_row0, k_len, k_pos0, causal, scale); \
    }
FLASH_ENTRY(flash_attention_d64_m64_bf16, 64, 64)
FLASH_ENTRY(flash_attention_d128_m64_bf16, 128, 64)
FLASH_ENTRY(flash_attention_d64_m128_bf16, 64, 128)
FLASH_ENTRY(flash_attention_d128_m128_bf16, 128, 128)
