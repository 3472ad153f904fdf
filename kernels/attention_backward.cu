// The backward of attention.cu's call, for head dims without a flash backward instance
// (flash_backward.cu takes 64 and 128): correct first, one warp per row, the head's dimensions
// spread over the lanes, in FP32 throughout. CPU twin: CpuBackend::attention_backward
// (src/backend/cpu_backward.rs). From the forward's final lse (so P = exp(S - lse) is already
// normalised over every key block) and delta = rowsum(dO O): dS = P (dO V^T - delta),
// dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO, added into FP32 accumulators.
//
// Two kernels, each owning its output rows (no atomics): attention_backward_dq_bf16, one warp
// per (query row, head), walks the keys the row sees; attention_backward_dkv_bf16, one warp per
// (key row, K/V head), walks every query of every query head that attends with it (grouped
// K/V heads sum here). Each recomputes S and dP: twice the forward's score work, for
// simplicity over speed.
//
// Layouts as attention.cu: q, d_o [rows, heads x head_dim]; kv [rows, 2 x kv_heads x head_dim];
// lse, delta [rows, heads] FP32; dq [rows, heads x head_dim] FP32; dkv [rows, 2 x kv_heads x
// head_dim] FP32.
#include "common.cuh"

#define BWD_ARGS                                                                                                                   \
    const __nv_bfloat16 *q, const __nv_bfloat16 *kv, const __nv_bfloat16 *d_o, const float *lse, const float *delta, float *dq,     \
        float *dkv, int heads, int kv_heads, int head_dim, int q_row0, int q_len, int q_pos0, int k_row0, int k_len, int k_pos0, \
        int causal, float scale

// The lane's share of a row of head_dim values (dims lane, lane + 32, ...), as FP32.
__device__ __forceinline__ void load_lane(float (&v)[MAX_PER_LANE], const __nv_bfloat16* row, int head_dim, int lane) {
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        const int d = lane + 32 * j;
        v[j] = d < head_dim ? bf(row[d]) : 0.0f;
    }
}

// The dot product of two rows held across the warp's lanes.
__device__ __forceinline__ float warp_dot(const float (&a)[MAX_PER_LANE], const float (&b)[MAX_PER_LANE]) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) s += a[j] * b[j];
    return warp_sum(s);
}

// P of one score against its row's lse (0 where the row saw no key: lse = -inf).
__device__ __forceinline__ float prob(float s, float l) { return l == NEG_INF ? 0.0f : expf(s - l); }

extern "C" __global__ void attention_backward_dq_bf16(BWD_ARGS) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (row >= q_len) return;
    const int width = heads * head_dim, kv_width = kv_heads * head_dim;
    const int g = h / (heads / kv_heads);
    int visible = k_len;
    if (causal) {
        const int v = q_pos0 + row + 1 - k_pos0;
        visible = v < 0 ? 0 : (v < k_len ? v : k_len);
    }
    if (visible == 0) return;
    const long long r = q_row0 + row;
    float qv[MAX_PER_LANE], dov[MAX_PER_LANE], acc[MAX_PER_LANE], kr[MAX_PER_LANE], vr[MAX_PER_LANE];
    load_lane(qv, q + r * width + h * head_dim, head_dim, lane);
    load_lane(dov, d_o + r * width + h * head_dim, head_dim, lane);
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) acc[j] = 0.0f;
    const float l = lse[r * heads + h], dl = delta[r * heads + h];
    for (int k = 0; k < visible; k++) {
        const __nv_bfloat16* key = kv + (long long)(k_row0 + k) * 2 * kv_width + g * head_dim;
        load_lane(kr, key, head_dim, lane);
        load_lane(vr, key + kv_width, head_dim, lane);
        const float p = prob(warp_dot(qv, kr) * scale, l);
        const float ds = p * (warp_dot(dov, vr) - dl);
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) acc[j] += ds * kr[j];
    }
    float* out = dq + r * width + h * head_dim;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        const int d = lane + 32 * j;
        if (d < head_dim) out[d] += scale * acc[j];
    }
}

extern "C" __global__ void attention_backward_dkv_bf16(BWD_ARGS) {
    const int lane = threadIdx.x & 31;
    const int key = blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int g = blockIdx.y;
    if (key >= k_len) return;
    const int width = heads * head_dim, kv_width = kv_heads * head_dim, group = heads / kv_heads;
    // Under the causal mask only queries at positions >= this key's see it.
    const int first = causal ? max(0, k_pos0 + key - q_pos0) : 0;
    if (first >= q_len) return;
    const long long kr_at = (long long)(k_row0 + key) * 2 * kv_width + g * head_dim;
    float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dk[MAX_PER_LANE], dv[MAX_PER_LANE], qv[MAX_PER_LANE], dov[MAX_PER_LANE];
    load_lane(kr, kv + kr_at, head_dim, lane);
    load_lane(vr, kv + kr_at + kv_width, head_dim, lane);
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) dk[j] = dv[j] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i = first; i < q_len; i++) {
            const long long r = q_row0 + i;
            load_lane(qv, q + r * width + h * head_dim, head_dim, lane);
            load_lane(dov, d_o + r * width + h * head_dim, head_dim, lane);
            const float p = prob(warp_dot(qv, kr) * scale, lse[r * heads + h]);
            const float ds = p * (warp_dot(dov, vr) - delta[r * heads + h]);
#pragma unroll
            for (int j = 0; j < MAX_PER_LANE; j++) {
                dk[j] += ds * qv[j];
                dv[j] += p * dov[j];
            }
        }
    }
    float* out = dkv + (long long)(k_row0 + key) * 2 * kv_width + g * head_dim;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        const int d = lane + 32 * j;
        if (d < head_dim) {
            out[d] += scale * dk[j];
            out[kv_width + d] += dv[j];
        }
    }
}
