// A CPU stand-in for the parts of CUDA the flash-attention kernel uses, so that the kernel's own
// source (kernels/flash_attention.cu) compiles with g++ and runs on a machine without a GPU: each
// thread of a block is an OS thread (`launch`, tests/simt) or a fiber on the calling thread
// (`launch_fibers`, the simulated GPU in tests/sim); shared memory is a static array; __syncthreads, __syncwarp
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ucontext.h>

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

// A block's threads are either OS threads (`launch`, below) or fibers on one OS thread
// (`launch_fibers`, which the simulated GPU uses: tests/sim). A barrier blocks an OS thread; a
// fiber instead yields to the block's next fiber until the last one arrives.
inline void fiber_yield();
inline void fiber_progress();
struct FiberScheduler;
inline thread_local FiberScheduler* t_fibers = nullptr;

// std::barrier waits on the futex (C++20), far cheaper than a condition variable's broadcast
// when 128 threads share two cores.
class Barrier {
  public:
    explicit Barrier(int n) : b_(n), n_(n) {}
    void wait() {
        if (!t_fibers) {
            b_.arrive_and_wait();
            return;
        }
        const uint64_t gen = gen_;
        fiber_progress();
        if (++arrived_ == n_) {
            arrived_ = 0;
            gen_++;
            return;
        }
        while (gen_ == gen) fiber_yield();
    }

  private:
    std::barrier<> b_;
    int n_, arrived_ = 0;
    uint64_t gen_ = 0;
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
struct CopyState {
    std::vector<std::vector<Copy>> groups;
    std::vector<Copy> pending;
};
inline thread_local CopyState t_copies;
// This GPU thread's copies: its OS thread's, or its fiber's (defined below).
inline CopyState& copies();

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
        copies().pending.push_back({dst, src, valid});
    }
}
inline void cp_async_commit() {
    CopyState& c = copies();
    c.groups.push_back(c.pending);
    c.pending.clear();
}
template <int N> inline void cp_async_wait() {
    std::vector<std::vector<Copy>>& groups = copies().groups;
    while (groups.size() > size_t(N)) {
        for (const Copy& c : groups.front()) copy16(c);
        groups.erase(groups.begin());
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

// ---- a block's threads as fibers ------------------------------------------------------------
// The simulated GPU (tests/sim) runs every block on the calling OS thread: each GPU thread is a
// fiber with a stack of its own, run until it finishes or waits at a barrier, then the next one;
// waking 256 OS threads per block would cost milliseconds. Each fiber has its own threadIdx and
// (with RINGBENCH_SIMT) its own pending cp.async groups (`copies`). A round in which no fiber arrives at a
// barrier, passes one or finishes is a deadlock (a barrier that not every thread reaches), and
// ends the process with the block named.
// The switch between fibers: on x86-64 six callee-saved registers and the stack pointer (no
// signal mask, so no system call per switch: a flash block switches a hundred thousand times);
// elsewhere ucontext's swapcontext.
#if defined(__x86_64__)
extern "C" void simt_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .weak simt_switch
    .hidden simt_switch
    .type simt_switch, @function
simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size simt_switch, .-simt_switch
)");
struct FiberContext {
    void* sp = nullptr;
    // A fresh context that starts `entry` (which must never return) on [stack, stack + size).
    void start(char* stack, size_t size, void (*entry)()) {
        uintptr_t top = (uintptr_t(stack) + size) & ~uintptr_t(15);
        void** p = reinterpret_cast<void**>(top - 64); // six registers, then the return address
        for (int i = 0; i < 6; i++) p[i] = nullptr;
        p[6] = reinterpret_cast<void*>(entry);
        p[7] = nullptr; // entry's own return address: it never returns
        sp = p;
    }
    static void swap(FiberContext& from, FiberContext& to) { simt_switch(&from.sp, to.sp); }
};
#else
struct FiberContext {
    ucontext_t ctx;
    void start(char* stack, size_t size, void (*entry)()) {
        getcontext(&ctx);
        ctx.uc_stack.ss_sp = stack;
        ctx.uc_stack.ss_size = size;
        ctx.uc_link = nullptr;
        makecontext(&ctx, entry, 0);
    }
    static void swap(FiberContext& from, FiberContext& to) { swapcontext(&from.ctx, &to.ctx); }
};
#endif

struct FiberScheduler {
    struct Fiber {
        FiberContext ctx;
        char* stack = nullptr;
        bool done = false;
#ifdef RINGBENCH_SIMT
        CopyState copies;
#endif
    };
    static constexpr size_t kStack = 256 << 10;
    FiberContext main;
    std::vector<Fiber> fibers;
    unsigned current = 0;
    uint64_t progress = 0;
    const std::function<void()>* body = nullptr;

    ~FiberScheduler() {
        for (Fiber& f : fibers) free(f.stack);
    }

    static void entry() {
        FiberScheduler* s = t_fibers;
        (*s->body)();
        s->fibers[s->current].done = true;
        s->progress++;
        FiberContext::swap(s->fibers[s->current].ctx, s->main); // never resumed
    }

    // One block of `threads` fibers; `what` names it if it deadlocks.
    void run_block(unsigned threads, const char* what) {
        if (fibers.size() < threads) fibers.resize(threads);
        for (unsigned i = 0; i < threads; i++) {
            Fiber& f = fibers[i];
            if (!f.stack) f.stack = static_cast<char*>(malloc(kStack));
            f.ctx.start(f.stack, kStack, entry);
            f.done = false;
#ifdef RINGBENCH_SIMT
            f.copies = {};
#endif
        }
        for (unsigned live = threads; live > 0;) {
            const uint64_t before = progress;
            live = 0;
            for (unsigned i = 0; i < threads; i++) {
                Fiber& f = fibers[i];
                if (f.done) continue;
                current = i;
                threadIdx.x = i;
                FiberContext::swap(main, f.ctx);
                live += !f.done;
            }
            if (live > 0 && progress == before) {
                fprintf(stderr, "%s: block (%u, %u): %u of %u threads wait at a barrier the others never reach\n", what, blockIdx.x,
                        blockIdx.y, live, threads);
                abort();
            }
        }
    }
};

inline void fiber_yield() {
    FiberScheduler* s = t_fibers;
    FiberContext::swap(s->fibers[s->current].ctx, s->main);
}
inline void fiber_progress() { t_fibers->progress++; }

#ifdef RINGBENCH_SIMT
inline CopyState& copies() { return t_fibers ? t_fibers->fibers[t_fibers->current].copies : t_copies; }
#endif

// Run `kernel` over a grid of gx x gy blocks of `threads` threads as fibers on this OS thread.
inline void launch_fibers(unsigned gx, unsigned gy, unsigned threads, const char* what, const std::function<void()>& kernel) {
    static thread_local FiberScheduler* sched = new FiberScheduler; // stacks kept for the next launch
    sched->body = &kernel;
    t_fibers = sched;
    blockDim = {threads, 1, 1};
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            BlockState block{static_cast<int>(threads)};
            g_block = &block;
            blockIdx = {bx, by, 0};
            sched->run_block(threads, what);
            g_block = nullptr;
        }
    }
    t_fibers = nullptr;
}
