// The backward of the element-wise and row ops, for a training step. CPU twins:
// src/backend/cpu_backward.rs (rms_norm_backward, gelu_backward, swiglu_backward,
// attention_backward_delta, add_acc), each computed in FP32 in the twin's order and rounded once.
// RoPE's backward is rope_bf16 (elementwise.cu) at negated positions: a rotation by minus the angle.
#include "common.cuh"

// Rows of one rms_norm_backward block: its FP32 partial of dgain (one value per column, in shared
// memory) is added to dgain once per block, so dgain takes rows / RMS_ROWS atomic adds per column.
#define RMS_ROWS 32

// The backward of y = x r g, r = (mean(x^2) + 1e-5)^-1/2: dx += r g dy - x r^3 / d sum_j(g_j dy_j x_j)
// and dgain += sum over rows of dy x r. Block b takes rows [b RMS_ROWS, (b + 1) RMS_ROWS); its
// threads stride the columns. Dynamic shared memory: cols floats (the block's dgain partial).
extern "C" __global__ void rms_norm_backward_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gain, const __nv_bfloat16* dy,
                                                  __nv_bfloat16* dx, float* dgain, int rows, int cols) {
    float* const dgain_part = reinterpret_cast<float*>(shared_dynamic());
    __shared__ float partial[2][BLOCK / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dgain_part[c] = 0.0f;
    const int r_end = min(rows, (int)(blockIdx.x + 1) * RMS_ROWS);
    for (int r = blockIdx.x * RMS_ROWS; r < r_end; r++) {
        const long long at = (long long)r * cols;
        float ss = 0.0f, dot = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xv = bf(x[at + c]);
            ss += xv * xv;
            dot += bf(gain[c]) * bf(dy[at + c]) * xv;
        }
        ss = warp_sum(ss);
        dot = warp_sum(dot);
        if (lane == 0) {
            partial[0][warp] = ss;
            partial[1][warp] = dot;
        }
        __syncthreads();
        ss = 0.0f;
        dot = 0.0f;
        for (int w = 0; w < warps; w++) {
            ss += partial[0][w];
            dot += partial[1][w];
        }
        __syncthreads(); // every thread has read the partials before the next row replaces them
        const float inv = 1.0f / sqrtf(ss / (float)cols + 1e-5f);
        const float k = inv * inv * inv * dot / (float)cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xv = bf(x[at + c]), g = bf(dy[at + c]);
            dx[at + c] = to_bf(bf(dx[at + c]) + inv * bf(gain[c]) * g - xv * k);
            dgain_part[c] += g * xv * inv;
        }
    }
    // Each thread added only to its own columns: no barrier is needed before reading them back.
    for (int c = threadIdx.x; c < cols; c += blockDim.x) atomicAdd(dgain + c, dgain_part[c]);
}

// GELU'(z) of the tanh form, as gelu_grad_f32 (cpu_backward.rs) computes it.
__device__ __forceinline__ float gelu_grad(float z) {
    const float K = 0.7978846f;
    const float t = tanhf(K * (z + 0.044715f * z * z * z));
    return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * K * (1.0f + 3.0f * 0.044715f * z * z);
}

// dy *= GELU'(pre), in place.
extern "C" __global__ void gelu_backward_bf16(const __nv_bfloat16* pre, __nv_bfloat16* dy, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dy[i] = to_bf(bf(dy[i]) * gelu_grad(bf(pre[i])));
}

// The backward of out = silu(gate) up: d_gate_up = [dout up silu'(gate) | dout silu(gate)], one
// thread per output column pair, rows x f.
extern "C" __global__ void swiglu_backward_bf16(const __nv_bfloat16* gate_up, const __nv_bfloat16* dout, __nv_bfloat16* d_gate_up,
                                                long long rows, int f) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * f) return;
    const long long r = i / f, j = i % f;
    const float a = bf(gate_up[r * 2 * f + j]), b = bf(gate_up[r * 2 * f + f + j]), g = bf(dout[i]);
    const float sigma = 1.0f / (1.0f + expf(-a));
    d_gate_up[r * 2 * f + j] = to_bf(g * b * sigma * (1.0f + a * (1.0f - sigma)));
    d_gate_up[r * 2 * f + f + j] = to_bf(g * (a / (1.0f + expf(-a))));
}

// delta[r, h] = sum over the head's head_dim columns of o d_o, FP32, one thread per (row, head).
extern "C" __global__ void attention_delta_f32(const __nv_bfloat16* o, const __nv_bfloat16* d_o, float* delta, int rows, int heads,
                                               int head_dim) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads) return;
    const long long at = (i / heads) * heads * head_dim + (i % heads) * head_dim;
    float s = 0.0f;
    for (int d = 0; d < head_dim; d++) s += bf(o[at + d]) * bf(d_o[at + d]);
    delta[i] = s;
}

// x += y, FP32.
extern "C" __global__ void add_f32(float* x, const float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}
