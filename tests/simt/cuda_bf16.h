// A CPU stand-in for the parts of CUDA the flash-attention kernel uses, so that the kernel's own
// source (kernels/flash_attention.cu) compiles with g++ and runs on a machine without a GPU: each
// thread of a block is an OS thread; shared memory is a static array; __syncthreads, __syncwarp
// and the warp-collective operations (shuffles, ldmatrix, mma.sync) meet at barriers, exchange
// their operands through per-warp slots and compute exactly the fragment layouts the PTX ISA
// specifies for them. cp.async copies are deferred to the cp.async.wait_group that covers them,
// so a read of shared memory before its wait sees stale data, as it could on a GPU (or, with
// SIMT_COPY=eager, land at once, so an overwrite before every warp is done reading shows).
//
// It stands in for `#include <cuda_bf16.h>` (found first through -I tests/simt) and, with
// RINGBENCH_SIMT defined, for kernels/mma.cuh.
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <barrier>
#include <functional>
#include <thread>
#include <vector>

using std::max;
using std::min;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

// ---- BF16 ----------------------------------------------------------------------------------
struct __nv_bfloat16 {
    uint16_t x;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline float __bfloat162float(__nv_bfloat16 v) {
    uint32_t b = uint32_t(v.x) << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

// Round to nearest, ties to even; NaN stays NaN.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    b += 0x7fffu + ((b >> 16) & 1u);
    return {uint16_t(b >> 16)};
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}

// IEEE single-precision operations, rounded to nearest (what the _rn intrinsics pin down on a GPU;
// x86-64 without FMA contraction computes exactly these).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

// The fast exponential's result differs from expf by a few ulps on a GPU; the exact one serves.
inline float __expf(float x) { return expf(x); }

struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// ---- threads, blocks, barriers --------------------------------------------------------------
struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx, blockIdx, blockDim;

// std::barrier waits on the futex (C++20), far cheaper than a condition variable's broadcast
// when 128 threads share two cores.
class Barrier {
  public:
    explicit Barrier(int n) : b_(n) {}
    void wait() { b_.arrive_and_wait(); }

  private:
    std::barrier<> b_;
};

// Operands of one warp-collective operation, one slot per lane.
struct WarpSlots {
    Barrier bar{32};
    const void* ptr[32];
    unsigned a[32][4], b[32][2];
    float c[32][4], f[32];
};

struct BlockState {
    explicit BlockState(int threads) : bar(threads), warps(threads / 32) {}
    Barrier bar;
    std::vector<WarpSlots> warps;
};

inline BlockState* g_block = nullptr;

inline WarpSlots& warp_slots() { return g_block->warps[threadIdx.x / 32]; }
inline int lane_id() { return threadIdx.x % 32; }

inline void __syncthreads() { g_block->bar.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { warp_slots().bar.wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    WarpSlots& w = warp_slots();
    const int l = lane_id();
    w.f[l] = v;
    w.bar.wait();
    const float r = w.f[l ^ offset];
    w.bar.wait();
    return r;
}

// Run `kernel` over a grid of gx x gy blocks of `threads` threads, one block at a time.
inline void launch(unsigned gx, unsigned gy, int threads, const std::function<void()>& kernel) {
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            BlockState block(threads);
            g_block = &block;
            std::vector<std::thread> ts;
            for (int t = 0; t < threads; t++) {
                ts.emplace_back([&, t] {
                    threadIdx.x = t;
                    blockDim.x = threads;
                    blockIdx.x = bx;
                    blockIdx.y = by;
                    kernel();
                });
            }
            for (auto& t : ts) t.join();
            g_block = nullptr;
        }
    }
}

// ---- kernels/mma.cuh, emulated ----------------------------------------------------------------
#ifdef RINGBENCH_SIMT

// Each thread's committed and pending copy groups; wait_group N completes all but the newest N.
struct Copy {
    void* dst;
    const void* src;
    bool valid;
};
inline thread_local std::vector<std::vector<Copy>> t_groups;
inline thread_local std::vector<Copy> t_pending;

inline void copy16(const Copy& c) {
    if (c.valid) {
        memcpy(c.dst, c.src, 16);
    } else {
        memset(c.dst, 0, 16);
    }
}

// SIMT_COPY=eager lands each copy when it is issued instead: then a copy issued before every
// warp has finished reading the buffer it overwrites (a missing __syncthreads) corrupts the
// reads, which the deferred mode cannot show. The test runs both modes.
inline const bool g_eager_copies = getenv("SIMT_COPY") && strcmp(getenv("SIMT_COPY"), "eager") == 0;

inline void cp_async16(void* dst, const void* src, bool valid) {
    if (g_eager_copies) {
        copy16({dst, src, valid});
    } else {
        t_pending.push_back({dst, src, valid});
    }
}
inline void cp_async_commit() {
    t_groups.push_back(t_pending);
    t_pending.clear();
}
template <int N> inline void cp_async_wait() {
    while (t_groups.size() > size_t(N)) {
        for (const Copy& c : t_groups.front()) copy16(c);
        t_groups.erase(t_groups.begin());
    }
}

// ldmatrix .x4: lanes 8i .. 8i+7 give the row addresses of matrix i; lane L receives, from each
// matrix, row L/4 and columns 2 (L%4), 2 (L%4) + 1 (with .trans: of the transposed matrix).
inline void ldmatrix_impl(unsigned* r, const void* p, bool trans) {
    WarpSlots& w = warp_slots();
    const int l = lane_id(), g = l / 4, c = l % 4;
    w.ptr[l] = p;
    w.bar.wait();
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (trans) {
            lo = static_cast<const uint16_t*>(w.ptr[8 * i + 2 * c])[g];
            hi = static_cast<const uint16_t*>(w.ptr[8 * i + 2 * c + 1])[g];
        } else {
            lo = static_cast<const uint16_t*>(w.ptr[8 * i + g])[2 * c];
            hi = static_cast<const uint16_t*>(w.ptr[8 * i + g])[2 * c + 1];
        }
        r[i] = unsigned(lo) | (unsigned(hi) << 16);
    }
    w.bar.wait();
}
inline void ldmatrix_x4(unsigned* r, const void* p) { ldmatrix_impl(r, p, false); }
inline void ldmatrix_x4_trans(unsigned* r, const void* p) { ldmatrix_impl(r, p, true); }

inline float half_of(unsigned reg, int hi) { return __bfloat162float({uint16_t(hi ? reg >> 16 : reg & 0xffffu)}); }

// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, with the PTX ISA's fragment layouts (g = lane / 4,
// t = lane % 4): A regs 0..3 hold A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..];
// B regs 0..1 hold B[2t..][g], B[2t+8..][g]; C holds C[g][2t..] then C[g+8][2t..].
inline void mma16816(float* c, const unsigned* a, const unsigned* b) {
    WarpSlots& w = warp_slots();
    const int l = lane_id();
    for (int i = 0; i < 4; i++) {
        w.a[l][i] = a[i];
        w.c[l][i] = c[i];
    }
    w.b[l][0] = b[0];
    w.b[l][1] = b[1];
    w.bar.wait();
    auto A = [&](int r, int k) { return half_of(w.a[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2); };
    auto B = [&](int k, int n) { return half_of(w.b[n * 4 + (k % 8) / 2][k >= 8], k % 2); };
    auto C = [&](int r, int n) { return w.c[(r % 8) * 4 + n / 2][2 * (r >= 8) + n % 2]; };
    const int g = l / 4, t = l % 4;
    float d[4];
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        float sum = 0.0f;
        for (int k = 0; k < 16; k++) sum += A(r, k) * B(k, n);
        d[i] = C(r, n) + sum;
    }
    w.bar.wait();
    for (int i = 0; i < 4; i++) c[i] = d[i];
}

inline unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    unsigned r;
    memcpy(&r, &v, 4);
    return r;
}

#endif // RINGBENCH_SIMT
