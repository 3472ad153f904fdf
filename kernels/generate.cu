// The normative generator (DESIGN.md): value(seed, tensor, global index) rounded to BF16.
// CPU twin: src/generator.rs (Region::generate_into); selftest checks them bit for bit.
#include "common.cuh"

__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// kind 0: u; kind 1: u * scale (scale = 1/sqrt(fan_in) already rounded to FP32); kind 2: 1 + u/16.
// Each step is one IEEE FP32 operation, written with _rn intrinsics so that no contraction changes it.
__device__ __forceinline__ float init_value(u64 seed, u64 tensor, u64 index, int kind, float scale) {
    u64 stream = splitmix64(seed + (tensor << 32));
    float bits = (float)(splitmix64(stream + index) >> 40);
    float u = __fsub_rn(__fmul_rn(__fdiv_rn(bits, 16777216.0f), 2.0f), 1.0f);
    if (kind == 1) return __fmul_rn(u, scale);
    if (kind == 2) return __fadd_rn(1.0f, __fdiv_rn(u, 16.0f));
    return u;
}

// Rows row0, row0 + row_stride, ... (`rows` of them) of a tensor global_cols wide, columns from up to
// three blocks (start, width) laid side by side, into out rows dst_row0 .. (out is `width` wide).
extern "C" __global__ void generate_bf16(__nv_bfloat16* out, int dst_row0, int rows, int width, u64 seed, u64 tensor,
                                         u64 global_cols, u64 row0, u64 row_stride, int b0_start, int b0_width, int b1_start,
                                         int b1_width, int b2_start, int kind, float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * width) return;
    int r = (int)(i / width), c = (int)(i % width);
    int col;
    if (c < b0_width) col = b0_start + c;
    else if (c < b0_width + b1_width) col = b1_start + (c - b0_width);
    else col = b2_start + (c - b0_width - b1_width);
    u64 index = (row0 + (u64)r * row_stride) * global_cols + (u64)col;
    out[(long long)(dst_row0 + r) * width + c] = to_bf(init_value(seed, tensor, index, kind, scale));
}
