// Attention of a query span against a key/value span, per head, causal by global position,
// merged into FP32 (o, lse) accumulators by the log-sum-exp rule. CPU twin: CpuBackend::attention
// and lse_merge (src/backend). A plain online-softmax kernel, correct first: one warp per query
// row, the head's dimensions spread over the lanes, keys visited in order.
//
// Layouts: q [rows, heads x head_dim]; kv [rows, 2 x kv_heads x head_dim] = [K | V], query head h
// attending with K/V head h / (heads / kv_heads); o [rows, heads x head_dim] FP32; lse [rows,
// heads] FP32.
#include "common.cuh"

extern "C" __global__ void attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kv, float* o, float* lse,
                                          int heads, int kv_heads, int head_dim, int q_row0, int q_len, int q_pos0, int k_row0,
                                          int k_len, int k_pos0, int causal, float scale) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (row >= q_len) return;
    const int width = heads * head_dim, kv_width = kv_heads * head_dim;
    const int g = h / (heads / kv_heads);
    const int qpos = q_pos0 + row;
    // Keys at positions <= qpos are visible under the causal mask.
    int visible = k_len;
    if (causal) {
        int v = qpos + 1 - k_pos0;
        visible = v < 0 ? 0 : (v < k_len ? v : k_len);
    }
    if (visible == 0) return; // nothing to merge: the accumulators keep their state

    const __nv_bfloat16* qr = q + (long long)(q_row0 + row) * width + h * head_dim;
    float qv[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int d = lane + 32 * j;
        qv[j] = d < head_dim ? bf(qr[d]) : 0.0f;
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int k = 0; k < visible; k++) {
        const __nv_bfloat16* kr = kv + (long long)(k_row0 + k) * 2 * kv_width + g * head_dim;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < head_dim) s += qv[j] * bf(kr[d]);
        }
        s = warp_sum(s) * scale;
        float m_new = fmaxf(m, s);
        float correction = __expf(m - m_new);
        float p = __expf(s - m_new);
        l = l * correction + p;
        const __nv_bfloat16* vr = kr + kv_width;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < head_dim) acc[j] = acc[j] * correction + p * bf(vr[d]);
        }
        m = m_new;
    }
    // Merge (acc / l, m + log l) into the accumulators.
    float block_lse = m + logf(l);
    float* orow = o + (long long)(q_row0 + row) * width + h * head_dim;
    float* lrow = lse + (long long)(q_row0 + row) * heads + h;
    float old = *lrow;
    const LseMerge mg = lse_merge(old, block_lse);
    const float w_old = mg.w_old, w_new = mg.w_new;
    float inv_l = 1.0f / l;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < head_dim) orow[d] = (old == NEG_INF ? 0.0f : orow[d] * w_old) + acc[j] * inv_l * w_new;
    }
    __syncwarp();
    if (lane == 0) *lrow = mg.lse;
}
