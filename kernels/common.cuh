// Shared by every kernel: BF16 conversions and the tunables. Compiled by NVRTC at run time
// (src/backend/cuda/kernels.rs); the CPU twin of each kernel is named in its comment.
#pragma once
#include <cuda_bf16.h>

typedef unsigned long long u64;

// Threads per block of the element-wise and row kernels.
#define BLOCK 256
// Attention: one warp per query row, WARPS rows per block; each lane holds up to MAX_PER_LANE
// of the head's dimensions (head_dim <= 32 * MAX_PER_LANE).
#define WARPS 4
#define MAX_PER_LANE 8

// -inf without the math headers NVRTC lacks: the empty accumulator's LSE.
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf(const __nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ __nv_bfloat16 to_bf(const float v) { return __float2bfloat16_rn(v); }

// The log-sum-exp merge of a block's partial result (LSE `block`) into an accumulator holding
// LSE `old` (-inf when empty): the merged LSE and the weights of the old and the new partial
// outputs. CPU twin: lse_merge (src/backend/mod.rs).
struct LseMerge {
    float lse, w_old, w_new;
};
__device__ __forceinline__ LseMerge lse_merge(float old, float block) {
    if (old == NEG_INF) return {block, 0.0f, 1.0f};
    const float m = fmaxf(old, block);
    const float merged = m + logf(expf(old - m) + expf(block - m));
    return {merged, expf(old - merged), expf(block - merged)};
}

// The block's dynamic shared memory (the launch's shared_mem_bytes); the SIMT stand-in's under
// RINGBENCH_SIMT (launch_fibers provides it).
#if defined(__CUDACC__)
__device__ __forceinline__ unsigned char* shared_dynamic() {
    extern __shared__ __align__(16) unsigned char shared_dynamic_raw[];
    return shared_dynamic_raw;
}
#elif defined(RINGBENCH_SIMT)
inline unsigned char* shared_dynamic() { return dynamic_smem(); }
#endif

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
