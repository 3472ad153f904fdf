// Element-wise and row kernels. CPU twins: src/backend/cpu.rs (rms_norm, rope, gelu, add,
// attention_reset, attention_store).
#include "common.cuh"

// out = x / sqrt(mean(x^2) + 1e-5) * gain, one block per row; (x * inv) * gain as the CPU does.
extern "C" __global__ void rms_norm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gain, __nv_bfloat16* out, int cols) {
    __shared__ float partial[BLOCK / 32];
    const __nv_bfloat16* row = x + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = bf(row[c]);
        s += v * v;
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        t = warp_sum(t);
        if (threadIdx.x == 0) partial[0] = t;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(partial[0] / (float)cols + 1e-5f);
    __nv_bfloat16* o = out + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = to_bf(__fmul_rn(__fmul_rn(bf(row[c]), inv), bf(gain[c])));
}

// RoPE on the first heads x head_dim columns of rows row0 .. row0 + len, at positions pos0,
// pos0 + pos_stride, ... (the striped layout's tokens are P apart);
// the angle in FP64 (at 100K positions an FP32 angle is off by milliradians), as the CPU does.
extern "C" __global__ void rope_bf16(__nv_bfloat16* x, int cols, int heads, int head_dim, int row0, int len, int pos0, int pos_stride) {
    int half = head_dim / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)len * heads * half) return;
    int r = (int)(i / (heads * half));
    int h = (int)((i / half) % heads);
    int k = (int)(i % half);
    double angle = ((double)pos0 + (double)r * (double)pos_stride) * pow(10000.0, -2.0 * (double)k / (double)head_dim);
    float cs = (float)cos(angle), sn = (float)sin(angle);
    __nv_bfloat16* head = x + (long long)(row0 + r) * cols + h * head_dim;
    float a = bf(head[k]), b = bf(head[k + half]);
    head[k] = to_bf(__fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
    head[k + half] = to_bf(__fadd_rn(__fmul_rn(a, sn), __fmul_rn(b, cs)));
}

// GELU, tanh form, in FP32.
extern "C" __global__ void gelu_bf16(__nv_bfloat16* x, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float z = bf(x[i]);
    x[i] = to_bf(0.5f * z * (1.0f + tanhf(0.7978846f * (z + 0.044715f * z * z * z))));
}

// out = silu(gate) * up per row of gate_up = [gate | up] (rows x 2f), silu(z) = z / (1 + e^-z), in
// FP32 with IEEE division. CPU twin: CpuBackend::swiglu (silu_f32).
extern "C" __global__ void swiglu_bf16(const __nv_bfloat16* gate_up, __nv_bfloat16* out, long long rows, int f) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * f) return;
    const long long r = i / f, j = i % f;
    const float g = bf(gate_up[r * 2 * f + j]), u = bf(gate_up[r * 2 * f + f + j]);
    out[i] = to_bf(g / (1.0f + expf(-g)) * u);
}

// x += y.
extern "C" __global__ void add_bf16(__nv_bfloat16* x, const __nv_bfloat16* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] = to_bf(__fadd_rn(bf(x[i]), bf(y[i])));
}

// dst[dst_off + r * dst_cols + c] = src[src_off + r * src_cols + c] for r < rows, c < cols: a block of
// columns between buffers of other widths (Ulysses' head slices). CPU twin: CpuBackend::copy_block.
extern "C" __global__ void copy_block_bf16(const __nv_bfloat16* src, int src_cols, long long src_off, __nv_bfloat16* dst,
                                           int dst_cols, long long dst_off, int rows, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    const long long r = i / cols, c = i % cols;
    dst[dst_off + r * dst_cols + c] = src[src_off + r * src_cols + c];
}

// Accumulators to the empty state: o = 0, lse = -inf.
extern "C" __global__ void fill_f32(float* x, long long n, float value) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = value;
}

// out = BF16(o).
extern "C" __global__ void f32_to_bf16(const float* o, __nv_bfloat16* out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_bf(o[i]);
}

// Merge partial attention results (o_in, lse_in) from row in_row0 on into (o, lse), row by row,
// by the log-sum-exp rule: one thread per (row, head), walking the head's head_dim values. An
// empty side (lse = -inf) leaves the other as it is, as the CPU's lse_merge does.
extern "C" __global__ void lse_merge_f32(float* o, float* lse, const float* o_in, const float* lse_in, int rows, int heads,
                                         int head_dim, int in_row0) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads) return;
    int r = (int)(i / heads), h = (int)(i % heads);
    float l_new = lse_in[(long long)(in_row0 + r) * heads + h];
    if (l_new == NEG_INF) return;
    float* out = o + (long long)r * heads * head_dim + (long long)h * head_dim;
    const float* src = o_in + (long long)(in_row0 + r) * heads * head_dim + (long long)h * head_dim;
    float l_old = lse[i];
    if (l_old == NEG_INF) {
        for (int d = 0; d < head_dim; ++d) out[d] = src[d];
        lse[i] = l_new;
        return;
    }
    float m = fmaxf(l_old, l_new);
    float merged = m + logf(expf(l_old - m) + expf(l_new - m));
    float w_old = expf(l_old - merged), w_new = expf(l_new - merged);
    for (int d = 0; d < head_dim; ++d) out[d] = out[d] * w_old + src[d] * w_new;
    lse[i] = merged;
}
