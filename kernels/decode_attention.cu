// Decode attention, FlashDecoding-style: the new token of each of `count` sequences attends to
// its sequence's K/V cache (every row visible: a new token follows every cached one), the cache
// split over thread blocks. CPU twin: src/backend/decode_twin.rs (the same splits, tiles and
// order of operations, in FP32).
//
// decode_split_bf16: grid (splits, kv_heads, count), DEC_THREADS threads. Block (s, g, i) takes
// the query heads that share K/V head g (GQA's group, packed as rows) of sequence i's new token
// (row q_row0 + i of q) and the keys [s x chunk, min(len, (s + 1) x chunk)) of its cache (rows
// (kv_seq0 + i) x kv_stride + key of kv). Keys go through shared memory DEC_TILE at a time,
// loaded with 16-byte vectors; scores and the online softmax are FP32. Its partial result, o
// normalised and its LSE (-inf for an empty split), lands in part [(i x heads + h) x splits + s]
// rows of head_dim + 1 values: o, then the LSE.
//
// decode_combine_f32: a block per (sequence, head), a thread per output value (DEC_THREADS >=
// head_dim), merges the splits' partials by the log-sum-exp rule, then into the accumulators
// (o, lse) at row q_row0 + i (lse_merge).
//
// Layouts as attention.cu: q [rows, heads x head_dim]; kv [rows, 2 x kv_heads x head_dim] =
// [K | V]; o [rows, heads x head_dim] FP32; lse [rows, heads] FP32.
#include "common.cuh"

#define DEC_THREADS 128
#define DEC_TILE 32
#define DEC_MAX_GROUP 16
#define DEC_MAX_DIM 128

// 16 bytes (eight BF16 values) in one load and one store; both addresses 16-byte aligned.
__device__ __forceinline__ void copy16(void* dst, const void* src) { *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src); }

extern "C" __global__ void decode_split_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* part, int heads, int kv_heads, int head_dim, int q_row0,
                      int kv_seq0, int kv_stride, int len, int splits, int chunk, float scale) {
    __shared__ float qs[DEC_MAX_GROUP][DEC_MAX_DIM];
    __shared__ __align__(16) __nv_bfloat16 ks[DEC_TILE][DEC_MAX_DIM];
    __shared__ __align__(16) __nv_bfloat16 vs[DEC_TILE][DEC_MAX_DIM];
    __shared__ float sc[DEC_MAX_GROUP][DEC_TILE];
    __shared__ float m_run[DEC_MAX_GROUP], l_run[DEC_MAX_GROUP], corr[DEC_MAX_GROUP];
    const int s = blockIdx.x, g = blockIdx.y, i = blockIdx.z, t = threadIdx.x;
    const int group = heads / kv_heads, width = heads * head_dim, kv_width = kv_heads * head_dim;
    const int k0 = s * chunk, k1 = min(len, k0 + chunk);
    for (int e = t; e < group * head_dim; e += DEC_THREADS) {
        const int hh = e / head_dim, d = e % head_dim;
        qs[hh][d] = bf(q[(long long)(q_row0 + i) * width + (long long)(g * group + hh) * head_dim + d]);
    }
    if (t < group) {
        m_run[t] = NEG_INF;
        l_run[t] = 0.0f;
    }
    // This thread's output elements: (hh, d) = e / head_dim, e % head_dim for e = t + j x DEC_THREADS.
    float acc[DEC_MAX_GROUP * DEC_MAX_DIM / DEC_THREADS];
#pragma unroll
    for (int j = 0; j < DEC_MAX_GROUP * DEC_MAX_DIM / DEC_THREADS; j++) acc[j] = 0.0f;
    const long long base = (long long)(kv_seq0 + i) * kv_stride;
    const int vecs = head_dim / 8; // 16-byte vectors per row (head_dim is a multiple of 8)
    __syncthreads();
    for (int tile = k0; tile < k1; tile += DEC_TILE) {
        const int n = min(DEC_TILE, k1 - tile);
        for (int e = t; e < n * vecs; e += DEC_THREADS) {
            const int r = e / vecs, c = (e % vecs) * 8;
            const __nv_bfloat16* row = kv + (base + tile + r) * 2 * kv_width + (long long)g * head_dim + c;
            copy16(&ks[r][c], row);
            copy16(&vs[r][c], row + kv_width);
        }
        __syncthreads();
        for (int e = t; e < group * n; e += DEC_THREADS) {
            const int hh = e / n, r = e % n;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += qs[hh][d] * bf(ks[r][d]);
            sc[hh][r] = dot * scale;
        }
        __syncthreads();
        // The online softmax, a head per thread: the tile's max, the correction of what came
        // before, the tile's probabilities in place of its scores.
        if (t < group) {
            float mx = m_run[t];
            for (int r = 0; r < n; r++) mx = fmaxf(mx, sc[t][r]);
            const float c = __expf(m_run[t] - mx);
            float sum = 0.0f;
            for (int r = 0; r < n; r++) {
                const float p = __expf(sc[t][r] - mx);
                sc[t][r] = p;
                sum += p;
            }
            l_run[t] = l_run[t] * c + sum;
            m_run[t] = mx;
            corr[t] = c;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < DEC_MAX_GROUP * DEC_MAX_DIM / DEC_THREADS; j++) {
            const int e = t + j * DEC_THREADS;
            if (e < group * head_dim) {
                const int hh = e / head_dim, d = e % head_dim;
                float a = acc[j] * corr[hh];
                for (int r = 0; r < n; r++) a += sc[hh][r] * bf(vs[r][d]);
                acc[j] = a;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < DEC_MAX_GROUP * DEC_MAX_DIM / DEC_THREADS; j++) {
        const int e = t + j * DEC_THREADS;
        if (e < group * head_dim) {
            const int hh = e / head_dim, d = e % head_dim;
            const long long at = ((long long)(i * heads + g * group + hh) * splits + s) * (head_dim + 1);
            part[at + d] = l_run[hh] > 0.0f ? acc[j] / l_run[hh] : 0.0f;
        }
    }
    if (t < group) {
        const long long at = ((long long)(i * heads + g * group + t) * splits + s) * (head_dim + 1);
        part[at + head_dim] = l_run[t] > 0.0f ? m_run[t] + logf(l_run[t]) : NEG_INF;
    }
}

extern "C" __global__ void decode_combine_f32(const float* part, float* o, float* lse, int heads, int head_dim, int q_row0, int count,
                                              int splits) {
    const long long x = blockIdx.x; // (sequence, head)
    const int d = threadIdx.x;
    const int i = (int)(x / heads), h = (int)(x % heads);
    const float* p = part + x * splits * (head_dim + 1);
    // The splits' LSE, then each split's weight in it (every thread of the block alike).
    float mx = NEG_INF;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, p[s * (head_dim + 1) + head_dim]);
    if (mx == NEG_INF) return; // no key: the accumulators keep their state (the whole block returns)
    float sum = 0.0f;
    for (int s = 0; s < splits; s++) sum += __expf(p[s * (head_dim + 1) + head_dim] - mx);
    const float block = mx + logf(sum);
    float* lrow = lse + (long long)(q_row0 + i) * heads + h;
    const float old = *lrow;
    const LseMerge mg = lse_merge(old, block);
    if (d < head_dim) {
        float* orow = o + (long long)(q_row0 + i) * heads * head_dim + (long long)h * head_dim;
        float v = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float w = __expf(p[s * (head_dim + 1) + head_dim] - block);
            v += w * p[s * (head_dim + 1) + d];
        }
        orow[d] = (old == NEG_INF ? 0.0f : orow[d] * mg.w_old) + v * mg.w_new;
    }
    // Every thread has read the old LSE before it is replaced.
    __syncthreads();
    if (d == 0) *lrow = mg.lse;
}
