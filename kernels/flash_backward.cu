// Flash attention backward on tensor cores (mma.sync m16n8k16, BF16 in, FP32 accumulate) for head
// dims 64 and 128: FlashAttention-2's structure. The backward of one flash_attention call (same
// spans and mask) from the upstream gradient d_o, the forward's final lse (over every key block,
// so P = exp(S - lse) is already normalised: the log-sum-exp merge's backward is this) and
// delta = rowsum(dO O) (attention_delta_f32): dS = P (dP - delta), dP = dO V^T,
// dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO, into FP32 accumulators. CPU twin:
// CpuBackend::attention_backward (src/backend/cpu_backward.rs; tests/simt holds this kernel to it
// within the bound of rounding P and dS to BF16, as here). Design notes: kernels/NOTES.md.
//
// One block: a tile of FB_BN = 64 keys of one K/V head, in 4 warps of 16 keys. K and V stay in
// shared memory; dK and dV accumulate in registers over every query tile of every query head
// that attends with this K/V head (grouped heads sum here, with no atomics), and are added to
// dkv once at the end. Per query tile of FB_BM = 64 rows (Q and dO copied in with cp.async), each
// warp computes, in slices of 32 queries (16 at D = 128, to bound its registers), S^T = K Q^T and
// dP^T = V dO^T for its 16 keys, P^T and dS^T in FP32, then dV += P^T dO and dK += dS^T Q with P
// and dS rounded to BF16 straight from the accumulators (a C fragment pair is an A fragment), and
// writes dS^T to shared memory. dQ (the tile's 64 rows x D) then takes one pass over that dS and
// K, and is added to dq with FP32 atomics: other key tiles add to the same rows, and the atomics
// cost one add per element per key tile, where a separate dQ pass would recompute S and dP.
// Query tiles before the first query that sees the key tile (causal) are skipped whole; only
// tiles that straddle the diagonal or the span's ends are masked element by element.
//
// Layouts as flash_attention.cu: q, d_o [rows, heads x D]; kv [rows, 2 x kv_heads x D] = [K | V];
// lse, delta [rows, heads] FP32; dq [rows, heads x D] FP32; dkv [rows, 2 x kv_heads x D] FP32.
#include "common.cuh"
#include "mma.cuh"
#include "flash_common.cuh"

#define FB_BN 64      // keys per block
#define FB_BM 64      // queries per tile
#define FB_THREADS 128

// The block's dynamic shared memory: K, V, Q, dO tiles (row stride D + 8, so the 8 row addresses
// of an ldmatrix fall in distinct banks), dS^T (64 keys x 64 queries, stride 72), then the tile's
// lse (log2 units) and delta. The launch asks for FbSmem<D>::BYTES (launch::flash_backward_shared_bytes).
template <int D> struct FbSmem {
    static constexpr int S = D + 8, SS = FB_BM + 8;
    static constexpr int K = 0, V = K + FB_BN * S, Q = V + FB_BN * S, DO = Q + FB_BM * S, DS = DO + FB_BM * S;
    static constexpr int HALVES = DS + FB_BN * SS; // BF16 elements before the floats
    static constexpr int BYTES = HALVES * 2 + 2 * FB_BM * 4;
};

// Rows [0, ROWS) x D of a row-major source (stride `stride` elements) into shared memory with row
// stride D + 8; rows at or past `valid` are zero-filled.
template <int D, int ROWS>
__device__ __forceinline__ void fb_load(__nv_bfloat16* dst, const __nv_bfloat16* src, long long stride, int valid) {
    constexpr int CHUNKS = D / 8;
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += FB_THREADS) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = r < valid;
        cp_async16(dst + r * (D + 8) + col, ok ? src + r * stride + col : src, ok);
    }
}

// acc[n] += A B for n-tiles n = 0 .. N: A the warp's 16-row A fragment `a` (one k-step of 16), B
// rows [k0, k0 + 16) x N*8 columns of a row-major shared tile (stride `stride`), read transposed
// by ldmatrix (B's k runs down the tile's rows).
template <int N>
__device__ __forceinline__ void mma_rows(float (&acc)[N][4], const unsigned (&a)[4], const __nv_bfloat16* tile, int stride, int k0, int col0,
                                         int lane) {
#pragma unroll
    for (int n = 0; n < N; n += 2) {
        unsigned b[4];
        ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + col0 + n * 8 + (lane >> 4) * 8);
        mma16816(acc[n], a, b);
        mma16816(acc[n + 1], a, b + 2);
    }
}

template <int D>
__device__ __forceinline__ void flash_backward(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* d_o, const float* lse,
                                               const float* delta, float* dq, float* dkv, int heads, int kv_heads, int q_row0, int q_len,
                                               int q_pos0, int k_row0, int k_len, int k_pos0, int causal, float scale) {
    using L = FbSmem<D>;
    constexpr int S = L::S, SS = L::SS;
    constexpr int KD = D / 16; // k-steps over the head dim
    constexpr int ND = D / 8;  // n-tiles of dK, dV
    constexpr int QW = D == 128 ? 16 : 32; // queries per slice of S and dP (registers)
    constexpr int NJ = QW / 8;             // their n-tiles
    constexpr int CW = D == 128 ? 32 : 64; // columns per chunk of dQ (registers)
    __nv_bfloat16* const smem = reinterpret_cast<__nv_bfloat16*>(shared_dynamic());
    __nv_bfloat16 *const sk = smem + L::K, *const sv = smem + L::V, *const sq = smem + L::Q, *const sdo = smem + L::DO;
    __nv_bfloat16* const sds = smem + L::DS;
    float* const slse = reinterpret_cast<float*>(smem + L::HALVES);
    float* const sdelta = slse + FB_BM;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * FB_BN, gk = blockIdx.y;
    const int width = heads * D, kv_width = kv_heads * D, group = heads / kv_heads;
    const long long kv_stride = 2LL * kv_width;
    const int keys = min(FB_BN, k_len - n0);
    // The first query tile any of these keys is visible to; earlier ones are skipped whole.
    const int first_q = causal ? max(0, k_pos0 + n0 - q_pos0) : 0;
    const int m_start = first_q / FB_BM * FB_BM;
    if (keys <= 0 || m_start >= q_len) return; // dK, dV of these keys gain nothing

    fb_load<D, FB_BN>(sk, kv + (long long)(k_row0 + n0) * kv_stride + gk * D, kv_stride, keys);
    fb_load<D, FB_BN>(sv, kv + (long long)(k_row0 + n0) * kv_stride + kv_width + gk * D, kv_stride, keys);
    cp_async_commit();

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    const float scale2 = scale * LOG2E;
    const int key_local[2] = {warp * 16 + g, warp * 16 + g + 8}; // this thread's two key rows
    const int warp_last_kpos = k_pos0 + n0 + warp * 16 + 15;

    for (int h = gk * group; h < (gk + 1) * group; h++) {
        for (int m0 = m_start; m0 < q_len; m0 += FB_BM) {
            const long long qr = (long long)(q_row0 + m0);
            fb_load<D, FB_BM>(sq, q + qr * width + h * D, width, q_len - m0);
            fb_load<D, FB_BM>(sdo, d_o + qr * width + h * D, width, q_len - m0);
            cp_async_commit();
            if (threadIdx.x < FB_BM) {
                const int i = m0 + threadIdx.x;
                const float l = i < q_len ? lse[(qr + threadIdx.x) * heads + h] : NEG_INF;
                // +inf for rows past the span or that saw no key: exp2(s - inf) = 0.
                slse[threadIdx.x] = l == NEG_INF ? -NEG_INF : l * LOG2E;
                sdelta[threadIdx.x] = i < q_len ? delta[(qr + threadIdx.x) * heads + h] : 0.0f;
            }
            cp_async_wait<0>();
            __syncthreads();
            // Masking is needed where a key may lie past the span's end, a query past its end, or
            // (causal) a key after a query of the tile.
            const bool mask = keys < FB_BN || m0 + FB_BM > q_len || (causal && warp_last_kpos > q_pos0 + m0);

            // One slice of QW queries at a time (not unrolled): a wider slice's S and dP would not fit
            // in registers beside dK and dV at D = 128.
#pragma unroll 1
            for (int c0 = 0; c0 < FB_BM; c0 += QW) {
                // S^T = K Q^T and dP^T = V dO^T: 16 keys x QW queries, n-tiles of 8 queries.
                float s[NJ][4], dp[NJ][4];
#pragma unroll
                for (int j = 0; j < NJ; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KD; kk++) {
                    unsigned ka[4], va[4];
                    ldmatrix_x4(ka, sk + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8);
                    ldmatrix_x4(va, sv + (warp * 16 + (lane & 15)) * S + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int j = 0; j < NJ; j += 2) {
                        unsigned b[4];
                        const int brow = c0 + j * 8 + (lane & 7) + (lane >> 4) * 8, bcol = kk * 16 + ((lane >> 3) & 1) * 8;
                        ldmatrix_x4(b, sq + brow * S + bcol);
                        mma16816(s[j], ka, b);
                        mma16816(s[j + 1], ka, b + 2);
                        ldmatrix_x4(b, sdo + brow * S + bcol);
                        mma16816(dp[j], va, b);
                        mma16816(dp[j + 1], va, b + 2);
                    }
                }
                // P^T = exp2(S^T scale log2 e - lse log2 e), masked; dS^T = P^T (dP^T - delta).
#pragma unroll
                for (int j = 0; j < NJ; j++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = c0 + j * 8 + t * 2 + (e & 1), key = n0 + key_local[e >> 1];
                        float p = exp2f(s[j][e] * scale2 - slse[col]);
                        if (mask && (key >= k_len || m0 + col >= q_len || (causal && k_pos0 + key > q_pos0 + m0 + col))) p = 0.0f;
                        s[j][e] = p;
                        dp[j][e] = p * (dp[j][e] - sdelta[col]);
                    }
                }
                // dV += P^T dO and dK += dS^T Q over this slice's queries (k-steps of 16), P
                // and dS rounded to BF16 from the C fragments; dS^T to shared memory for dQ.
#pragma unroll
                for (int kk = 0; kk < QW / 16; kk++) {
                    const unsigned pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                            pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                    const unsigned da[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                                            pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                    mma_rows<ND>(dv, pa, sdo, S, c0 + kk * 16, 0, lane);
                    mma_rows<ND>(dk, da, sq, S, c0 + kk * 16, 0, lane);
                    // This thread's dS^T values: rows key_local, columns of n-tiles 2kk and 2kk + 1.
                    unsigned* row0 = reinterpret_cast<unsigned*>(sds + key_local[0] * SS + c0 + kk * 16 + t * 2);
                    unsigned* row1 = reinterpret_cast<unsigned*>(sds + key_local[1] * SS + c0 + kk * 16 + t * 2);
                    row0[0] = da[0];
                    row1[0] = da[1];
                    row0[4] = da[2]; // 8 columns on: the second n-tile
                    row1[4] = da[3];
                }
            }
            __syncthreads(); // dS^T complete

            // dQ of the tile: warp w takes query rows [16w, 16w + 16) x D, over the 64 keys (4
            // k-steps), A = dS (dS^T read transposed), B = K; in chunks of CW columns (registers).
            unsigned dsa[4][4];
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                const int m = lane >> 3; // the 8x8 matrix this lane addresses: (query half, key half)
                ldmatrix_x4_trans(dsa[kk], sds + (kk * 16 + (m >> 1) * 8 + (lane & 7)) * SS + warp * 16 + (m & 1) * 8);
            }
            const int qrow[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
#pragma unroll 1
            for (int c = 0; c < D; c += CW) {
                float acc[CW / 8][4];
#pragma unroll
                for (int n = 0; n < CW / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < 4; kk++) mma_rows<CW / 8>(acc, dsa[kk], sk, S, kk * 16, c, lane);
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    if (qrow[i] >= q_len) continue;
                    float* out = dq + (long long)(q_row0 + qrow[i]) * width + h * D + c + t * 2;
#pragma unroll
                    for (int n = 0; n < CW / 8; n++) {
                        atomicAdd(out + n * 8, scale * acc[n][2 * i]);
                        atomicAdd(out + n * 8 + 1, scale * acc[n][2 * i + 1]);
                    }
                }
            }
            // No barrier here: the next tile's copies land in sq and sdo, which no warp reads after
            // the barrier above, and its dS^T is written after the barrier below the copies, which
            // every warp reaches only once done with this tile's dQ.
        }
    }

    // dK (scaled) and dV of the thread's two key rows into the accumulators: this block owns them.
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (key_local[i] >= keys) continue;
        float* out = dkv + (long long)(k_row0 + n0 + key_local[i]) * kv_stride + gk * D + t * 2;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            out[n * 8] += scale * dk[n][2 * i];
            out[n * 8 + 1] += scale * dk[n][2 * i + 1];
            out[kv_width + n * 8] += dv[n][2 * i];
            out[kv_width + n * 8 + 1] += dv[n][2 * i + 1];
        }
    }
}

#define FLASH_BACKWARD_ARGS                                                                                                      \
    const __nv_bfloat16 *q, const __nv_bfloat16 *kv, const __nv_bfloat16 *d_o, const float *lse, const float *delta, float *dq, \
        float *dkv, int heads, int kv_heads, int q_row0, int q_len, int q_pos0, int k_row0, int k_len, int k_pos0, int causal, float scale

#define FLASH_BACKWARD_ENTRY(NAME, D)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FB_THREADS) NAME(FLASH_BACKWARD_ARGS) {                                               \
        flash_backward<D>(q, kv, d_o, lse, delta, dq, dkv, heads, kv_heads, q_row0, q_len, q_pos0, k_row0, k_len, k_pos0, causal, scale); \
    }
FLASH_BACKWARD_ENTRY(flash_backward_d64_bf16, 64)
FLASH_BACKWARD_ENTRY(flash_backward_d128_bf16, 128)
