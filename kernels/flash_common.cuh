// What both flash kernels (flash_attention.cu on mma.sync, flash_wgmma.cu on wgmma) compute the
// same way, on the same fragment layout: each thread holds two rows of its warp's 16 (g and
// g + 8), and the four lanes of a quad hold a row's columns. The online softmax's running-max
// step and the epilogue that merges a row into the ring's FP32 (o, lse) accumulators. CPU twin:
// backend::flash_twin.
#pragma once

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// One tile's step of the running max, for the thread's two rows: mx holds the thread's maxima of
// the old running max and its scores (log2 units); reduced over the quad, it becomes the new
// running max, and ref the value scores are exponentiated against (0 for a row that has seen only
// masked keys, whose max stays -inf, so every term is exp2(-inf) = 0 instead of NaN); corr
// rescales what was summed against the old max.
__device__ __forceinline__ void running_max_step(float (&mx)[2], float (&row_max)[2], float (&ref)[2], float (&corr)[2]) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        ref[r] = mx[r] == NEG_INF ? 0.0f : mx[r];
        corr[r] = exp2f(row_max[r] - ref[r]);
        row_max[r] = mx[r];
    }
}

// The epilogue for one of the thread's rows (`row` of the query span; every lane calls it): the
// quad's partial row sums added, then (acc / l, max ln 2 + ln l) merged into the accumulators by
// the LSE rule. acc(n, j) is the thread's value at column 8 n + 2 t + j of the row (t: the lane
// in its quad). A row past the span or with every key masked (l = 0) merges nothing.
template <int D, typename Acc>
__device__ __forceinline__ void merge_row(float* o, float* lse, int heads, int h, int q_row0, int q_len, int row, int t, float row_max,
                                          float row_sum, Acc acc) {
    float l = row_sum;
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const bool write = row < q_len && l > 0.0f;
    float* lrow = lse + (long long)(q_row0 + row) * heads + h;
    const float old = write ? *lrow : NEG_INF;
    __syncwarp(); // every lane of the quad has read the old LSE before one lane replaces it
    if (!write) return;
    const LseMerge mg = lse_merge(old, row_max * LN2 + logf(l));
    const float w_old = mg.w_old, inv_l = mg.w_new / l;
    float* orow = o + (long long)(q_row0 + row) * heads * D + h * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const int d = n * 8 + t * 2;
        const float2 prev = old == NEG_INF ? make_float2(0.0f, 0.0f) : *reinterpret_cast<float2*>(orow + d);
        *reinterpret_cast<float2*>(orow + d) = make_float2(prev.x * w_old + acc(n, 0) * inv_l, prev.y * w_old + acc(n, 1) * inv_l);
    }
    if (t == 0) *lrow = mg.lse;
}
