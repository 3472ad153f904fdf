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

#include <stdarg.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <map>
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

// FP32 atomic add: the OS threads of a block (and blocks on other threads) add one at a time.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

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
// A 16-byte vector, as CUDA's vector types lay it out.
struct alignas(16) uint4 {
    unsigned x, y, z, w;
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

struct BlockExtras; // the Hopper state of a block (wgmma, mbarriers, TMA), defined below
inline void block_extras_begin(size_t smem_bytes);
inline void block_extras_end();

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

// Run `kernel` over a grid of gx x gy x gz blocks of `threads` threads, one block at a time.
inline void launch3(unsigned gx, unsigned gy, unsigned gz, int threads, const std::function<void()>& kernel) {
    for (unsigned bz = 0; bz < gz; bz++) {
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
                        blockIdx.z = bz;
                        kernel();
                    });
                }
                for (auto& t : ts) t.join();
                g_block = nullptr;
            }
        }
    }
}

// Run `kernel` over a grid of gx x gy blocks of `threads` threads, one block at a time.
inline void launch(unsigned gx, unsigned gy, int threads, const std::function<void()>& kernel) {
    launch3(gx, gy, 1, threads, kernel);
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

// A thread's wgmma state: whether it has fenced since its last wait, how many wgmmas it has
// issued (its warpgroup's op sequence numbers), those not yet committed, and its committed groups
// not yet waited for.
struct WgmmaState {
    bool fenced = false;
    unsigned issued = 0;
    std::vector<unsigned> uncommitted;
    std::vector<std::vector<unsigned>> groups;
};

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
        WgmmaState wgmma;
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
#ifdef RINGBENCH_SIMT
        const WgmmaState& w = s->fibers[s->current].wgmma;
        if (!w.uncommitted.empty() || !w.groups.empty()) {
            fprintf(stderr, "block (%u, %u) thread %u: ended with wgmma operations never waited for (wgmma.wait_group)\n", blockIdx.x,
                    blockIdx.y, s->current);
            abort();
        }
#endif
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
            f.wgmma = {};
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
                fprintf(stderr, "%s: block (%u, %u): %u of %u threads wait at a barrier the others never reach, or on an mbarrier phase that never completes\n", what, blockIdx.x,
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

// Run `kernel` over a grid of gx x gy x gz blocks of `threads` threads as fibers on this OS
// thread, each block with `smem_bytes` of dynamic shared memory (filled with 0xff bytes, BF16
// NaNs, so a read of a tile no copy wrote shows).
inline void launch_fibers(unsigned gx, unsigned gy, unsigned threads, size_t smem_bytes, const char* what,
                          const std::function<void()>& kernel, unsigned gz = 1) {
    static thread_local FiberScheduler* sched = new FiberScheduler; // stacks kept for the next launch
    sched->body = &kernel;
    t_fibers = sched;
    blockDim = {threads, 1, 1};
    for (unsigned bz = 0; bz < gz; bz++)
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            BlockState block{static_cast<int>(threads)};
            g_block = &block;
            blockIdx = {bx, by, bz};
#ifdef RINGBENCH_SIMT
            block_extras_begin(smem_bytes);
#endif
            sched->run_block(threads, what);
#ifdef RINGBENCH_SIMT
            block_extras_end();
#endif
            g_block = nullptr;
        }
    }
    t_fibers = nullptr;
}

inline void launch_fibers(unsigned gx, unsigned gy, unsigned threads, const char* what, const std::function<void()>& kernel) {
    launch_fibers(gx, gy, threads, 0, what, kernel);
}

#ifdef RINGBENCH_SIMT
// ---- kernels/wgmma.cuh, emulated ------------------------------------------------------------
// The Hopper instructions of the wgmma flash kernel, each as the PTX ISA defines it, on fibers
// only (launch_fibers). With deferred copies (the default) a TMA copy lands when a thread waits on
// its mbarrier and a wgmma computes at the wgmma.wait_group that covers it, so a read before
// either wait sees stale shared memory or stale accumulators; with SIMT_COPY=eager both happen at
// issue, so an overwrite of a stage that a consumer has not released shows. Misuse that the ISA
// leaves undefined aborts with a message: an mbarrier used before init or arrived on more often
// than its count in one phase, a copy completing on a barrier whose init no fence has made visible
// to the async proxy, a wgmma without a wgmma.fence since the thread's last wait, copies or wgmmas
// still in flight when the block ends, shared-memory addresses outside the block's allocation.
#define __grid_constant__

// cuda.h's CUtensorMap: 128 opaque bytes (the layout below is the stand-in's own).
struct TensorMap {
    unsigned long long opaque[16];
};

[[noreturn]] inline void simt_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void simt_fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "SIMT stand-in: block (%u, %u) thread %u: ", blockIdx.x, blockIdx.y, threadIdx.x);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

// ---- the tensor map: cuTensorMapEncodeTiled's arguments, checked as the driver documents them --
// Returns 0, or 1 (CUDA_ERROR_INVALID_VALUE) with the reason in `why`. Encodes what the copy
// below needs: rank 2, BF16 (data type 9), no interleave, element strides 1; swizzle 0 (none),
// 1 (32 B), 2 (64 B) or 3 (128 B), as CUtensorMapSwizzle numbers them.
inline int simt_tensor_map_encode(TensorMap* map, int dtype, unsigned rank, const void* address, const unsigned long long* dims,
                                  const unsigned long long* strides, const unsigned* box, const unsigned* elem_strides, int interleave,
                                  int swizzle, int oob_fill, char* why, size_t why_len) {
    auto no = [&](const char* fmt, auto... a) {
        snprintf(why, why_len, fmt, a...);
        return 1;
    };
    if (!map) return no("no tensor map to write");
    if (dtype != 9) return no("data type %d: the stand-in encodes BF16 (9) only", dtype);
    if (rank != 2) return no("rank %u: the stand-in encodes rank 2 only", rank);
    if (reinterpret_cast<uintptr_t>(address) % 16) return no("global address %p not 16-byte aligned", address);
    if (interleave != 0) return no("interleave %d: the stand-in encodes none (0) only", interleave);
    if (oob_fill != 0) return no("out-of-bounds fill %d: the stand-in fills zeros (0) only", oob_fill);
    for (unsigned i = 0; i < rank; i++) {
        if (dims[i] == 0 || dims[i] > (1ull << 32)) return no("globalDim[%u] = %llu outside [1, 2^32]", i, dims[i]);
        if (box[i] == 0 || box[i] > 256) return no("boxDim[%u] = %u outside [1, 256]", i, box[i]);
        if (elem_strides[i] != 1) return no("elementStrides[%u] = %u: the stand-in encodes 1 only", i, elem_strides[i]);
    }
    if (strides[0] % 16 || strides[0] >= (1ull << 40)) return no("globalStrides[0] = %llu not a multiple of 16 below 2^40", strides[0]);
    if (strides[0] < dims[0] * 2) return no("globalStrides[0] = %llu shorter than a row of %llu elements", strides[0], dims[0]);
    const unsigned inner = box[0] * 2;
    if (inner % 16) return no("boxDim[0] x 2 bytes = %u, not a multiple of 16", inner);
    if (swizzle < 0 || swizzle > 3) return no("swizzle %d unknown", swizzle);
    const unsigned span = swizzle == 0 ? 0 : 16u << swizzle;
    if (span && inner > span) return no("boxDim[0] x 2 bytes = %u beyond the %u-byte swizzle span", inner, span);
    memset(map->opaque, 0, sizeof map->opaque);
    map->opaque[0] = 0x52424d4150ull; // "RBMAP": the stand-in's own encoding
    map->opaque[1] = reinterpret_cast<uintptr_t>(address);
    map->opaque[2] = dims[0];
    map->opaque[3] = dims[1];
    map->opaque[4] = strides[0];
    map->opaque[5] = box[0];
    map->opaque[6] = box[1];
    map->opaque[7] = unsigned(swizzle);
    return 0;
}

// ---- a block's Hopper state --------------------------------------------------------------------
struct MBarrier {
    int count = 0, pending = 0; // arrivals per phase, and still to come in this one
    long long tx = 0;           // transaction bytes still to come in this phase
    unsigned phase = 0;         // phases completed
    bool visible = false;       // made visible to the async proxy by a fence after its init
    unsigned initialiser = 0;
};
struct BulkCopy {
    unsigned dst;  // shared-memory address
    TensorMap map;
    int c0, c1;
    unsigned bar;
};
struct WgOp;
struct BlockExtras {
    std::vector<unsigned char> smem_storage;
    unsigned char* smem = nullptr; // 1024-aligned
    size_t smem_bytes = 0;
    std::map<unsigned, MBarrier> barriers;
    std::vector<BulkCopy> copies; // issued, not landed (deferred mode)
    // Per warpgroup: a barrier for its collective wgmma issue, and its operations (WgOp, below).
    std::deque<Barrier> wg_bar; // a deque: barriers do not move
    std::vector<std::vector<WgOp>> wg_ops;
};
inline BlockExtras* g_extras = nullptr;

// Per block: only what every block may need; the wgmma state (WgOp tables, warpgroup barriers) is
// made by the first wgmma of a block that has one (wg_ops), not for every block of every kernel.
inline void block_extras_begin(size_t smem_bytes) {
    auto* e = new BlockExtras;
    e->smem_bytes = smem_bytes;
    if (smem_bytes) {
        e->smem_storage.assign(smem_bytes + 1024, 0xff);
        e->smem = e->smem_storage.data() + ((1024 - reinterpret_cast<uintptr_t>(e->smem_storage.data()) % 1024) % 1024);
    }
    g_extras = e;
}
inline void block_extras_end() {
    BlockExtras* e = g_extras;
    if (!e->copies.empty()) {
        fprintf(stderr, "SIMT stand-in: block (%u, %u) ended with %zu bulk copies still in flight (no thread waited on their mbarrier)\n",
                blockIdx.x, blockIdx.y, e->copies.size());
        abort();
    }
    delete e;
    g_extras = nullptr;
}

inline BlockExtras& extras() {
    if (!t_fibers || !g_extras) {
        fprintf(stderr, "SIMT stand-in: the Hopper instructions run on fibers only (launch_fibers)\n");
        abort();
    }
    return *g_extras;
}
inline WgmmaState& wgmma_state() { return t_fibers->fibers[t_fibers->current].wgmma; }

inline unsigned char* dynamic_smem() {
    BlockExtras& e = extras();
    if (!e.smem) simt_fail("dynamic shared memory used by a launch that asked for none");
    return e.smem;
}
// The shared-memory address of p: its offset in the block's dynamic shared memory (whose base is
// 1024-aligned, as the kernel aligns it on a GPU, so the swizzles see the same address bits).
inline unsigned smem_u32(const void* p) {
    BlockExtras& e = extras();
    const auto* c = static_cast<const unsigned char*>(p);
    if (!e.smem || c < e.smem || c > e.smem + e.smem_bytes) simt_fail("%p is not in the block's dynamic shared memory", p);
    return unsigned(c - e.smem);
}
inline unsigned char* smem_at(unsigned addr, size_t bytes, const char* what) {
    BlockExtras& e = extras();
    if (size_t(addr) + bytes > e.smem_bytes) simt_fail("%s: shared address %u + %zu beyond the block's %zu bytes", what, addr, bytes, e.smem_bytes);
    return e.smem + addr;
}
// The swizzle of `bytes` span (32, 64, 128; 0 none) on a shared-memory byte address: the 16-byte
// chunk bits [4, 4 + b) XOR the bits [7, 7 + b) above them (cute's Swizzle<b, 4, 3>).
inline unsigned swizzled(unsigned addr, unsigned span) {
    const unsigned b = span == 128 ? 3 : span == 64 ? 2 : span == 32 ? 1 : 0;
    return addr ^ (((addr >> 7) & ((1u << b) - 1)) << 4);
}

// ---- mbarrier ----
inline MBarrier& mbar(unsigned long long* bar, const char* what) {
    BlockExtras& e = extras();
    auto it = e.barriers.find(smem_u32(bar));
    if (it == e.barriers.end()) simt_fail("%s on an mbarrier at %u that was never initialised", what, smem_u32(bar));
    return it->second;
}
inline void mbar_complete_if_done(MBarrier& b) {
    if (b.pending == 0 && b.tx == 0) {
        b.phase++;
        b.pending = b.count;
        fiber_progress();
    }
}
inline void mbar_init(unsigned long long* bar, unsigned count) {
    if (count == 0 || count >= (1u << 20)) simt_fail("mbarrier.init with count %u outside [1, 2^20)", count);
    MBarrier b;
    b.count = b.pending = int(count);
    b.initialiser = threadIdx.x;
    extras().barriers[smem_u32(bar)] = b;
}
inline void fence_barrier_init() {
    for (auto& kv : extras().barriers)
        if (kv.second.initialiser == threadIdx.x) kv.second.visible = true;
}
// fence.proxy.async orders this thread's earlier generic-proxy writes (mbarrier inits among them)
// before later async-proxy operations.
inline void fence_proxy_async() { fence_barrier_init(); }
inline void mbar_arrive(unsigned long long* bar) {
    MBarrier& b = mbar(bar, "mbarrier.arrive");
    if (b.pending == 0) simt_fail("mbarrier.arrive beyond the barrier's count of %d in one phase", b.count);
    b.pending--;
    fiber_progress();
    mbar_complete_if_done(b);
}
inline void mbar_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
    mbar(bar, "mbarrier.arrive.expect_tx").tx += bytes;
    mbar_arrive(bar);
}
inline void complete_tx(unsigned bar_addr, unsigned bytes) {
    auto it = extras().barriers.find(bar_addr);
    if (it == extras().barriers.end()) simt_fail("a bulk copy completes on an mbarrier at %u that was never initialised", bar_addr);
    MBarrier& b = it->second;
    if (!b.visible) simt_fail("a bulk copy completes on the mbarrier at %u, whose init no fence made visible to the async proxy", bar_addr);
    b.tx -= bytes;
    mbar_complete_if_done(b);
}

// ---- TMA ----
inline void land(const BulkCopy& c) {
    const unsigned long long* m = c.map.opaque;
    const auto* base = reinterpret_cast<const unsigned char*>(m[1]);
    const long long dim0 = (long long)m[2], dim1 = (long long)m[3];
    const unsigned long long stride = m[4];
    const unsigned box0 = unsigned(m[5]), box1 = unsigned(m[6]), sw = unsigned(m[7]);
    const unsigned span = sw == 0 ? 0 : 16u << sw;
    for (unsigned r = 0; r < box1; r++) {
        for (unsigned e = 0; e < box0; e++) {
            const long long x = (long long)c.c0 + e, y = (long long)c.c1 + r;
            uint16_t v = 0; // outside the tensor: zeros
            if (x >= 0 && x < dim0 && y >= 0 && y < dim1) memcpy(&v, base + y * stride + x * 2, 2);
            const unsigned addr = swizzled(c.dst + (r * box0 + e) * 2, span);
            memcpy(smem_at(addr, 2, "cp.async.bulk.tensor"), &v, 2);
        }
    }
    complete_tx(c.bar, box0 * box1 * 2);
}
inline void tma_load_2d(void* dst, const TensorMap* map, int c0, int c1, unsigned long long* bar) {
    if (map->opaque[0] != 0x52424d4150ull) simt_fail("cp.async.bulk.tensor from a tensor map cuTensorMapEncodeTiled did not write");
    const unsigned d = smem_u32(dst), sw = unsigned(map->opaque[7]);
    if (d % 128) simt_fail("cp.async.bulk.tensor to shared address %u, not 128-byte aligned", d);
    if (sw == 3 && d % 1024) simt_fail("cp.async.bulk.tensor with the 128-byte swizzle to %u, off the 1024-byte swizzle grid", d);
    smem_at(d, map->opaque[5] * map->opaque[6] * 2, "cp.async.bulk.tensor");
    const BulkCopy c{d, *map, c0, c1, smem_u32(bar)};
    if (g_eager_copies) {
        land(c);
    } else {
        extras().copies.push_back(c);
    }
}
// Whether the phase of parity `parity` has completed; a deferred copy lands when its barrier is
// waited on. A thread that sees it incomplete yields to the others.
inline bool mbar_try_wait(unsigned long long* bar, unsigned parity) {
    BlockExtras& e = extras();
    const unsigned at = smem_u32(bar);
    for (size_t i = 0; i < e.copies.size();) {
        if (e.copies[i].bar == at) {
            const BulkCopy c = e.copies[i];
            e.copies.erase(e.copies.begin() + long(i));
            land(c);
        } else {
            i++;
        }
    }
    const bool done = (mbar(bar, "mbarrier.try_wait").phase & 1u) != (parity & 1u);
    if (!done) fiber_yield();
    return done;
}

// ---- register reallocation ----
template <int N> inline void setmaxnreg_check() {
    static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
}
template <int N> inline void setmaxnreg_dec() { setmaxnreg_check<N>(); }
template <int N> inline void setmaxnreg_inc() { setmaxnreg_check<N>(); }

// ---- wgmma ----
struct SmemDesc {
    unsigned start, lbo, sbo, span; // span: the swizzle in bytes, 0 for none (interleaved)
};
inline SmemDesc decode(unsigned long long desc) {
    if ((desc >> 49) & 7) simt_fail("a matrix descriptor with a base offset: not used by ringbench's kernels, not emulated");
    const unsigned mode = unsigned(desc >> 62);
    return {unsigned(desc & 0x3fff) << 4, unsigned((desc >> 16) & 0x3fff) << 4, unsigned((desc >> 32) & 0x3fff) << 4,
            mode == 1 ? 128u : mode == 2 ? 64u : mode == 3 ? 32u : 0u};
}
// Element (mn, k) of a 16-bit operand in the canonical layouts (cute's GMMA layouts in bytes; T =
// 8 elements per 16 bytes, W the swizzle span): K-major, rows of W bytes (16 when interleaved) in
// groups of 8 rows SBO apart, interleaved k-halves LBO apart; MN-major, W / 2 elements of MN per
// row, MN atoms LBO apart, 8-row groups of k SBO apart (interleaved: LBO and SBO trade places).
inline float operand(const SmemDesc& d, int mn, int k, bool mn_major) {
    unsigned off;
    if (!mn_major) {
        off = d.span ? (mn / 8) * d.sbo + (mn % 8) * d.span + k * 2 : (mn / 8) * d.sbo + (mn % 8) * 16 + (k / 8) * d.lbo + (k % 8) * 2;
    } else {
        off = d.span ? (mn / (d.span / 2)) * d.lbo + (mn % (d.span / 2)) * 2 + (k / 8) * d.sbo + (k % 8) * d.span
                     : (mn / 8) * d.sbo + (mn % 8) * 2 + (k / 8) * d.lbo + (k % 8) * 16;
    }
    uint16_t v;
    memcpy(&v, smem_at(swizzled(d.start + off, d.span), 2, "wgmma operand"), 2);
    return __bfloat162float({v});
}
// One wgmma.mma_async of a warpgroup: the same shape, descriptors and scale-d from every thread,
// and each thread's accumulator and A registers by address. Each thread's part completes at that
// thread's own wgmma.wait_group, as late as the ISA allows: its accumulators are read and written
// then, the shared-memory operands are read then, and the A registers of a thread that has not yet
// waited are read as they are then (a thread's registers are fixed at its own wait). So touching
// the registers, or letting a stage be refilled, before the wait shows.
struct WgOp {
    unsigned seq = ~0u;
    int left = 0; // threads whose part has not completed
    int n = 0;
    bool a_in_regs = false, trans_b = false, accumulate = false;
    unsigned long long a_desc = 0, b_desc = 0;
    float* d[128];
    const unsigned* a[128];
    unsigned a_fixed[128][4];
    bool fixed[128];
    bool done() const { return left == 0; }
};
inline constexpr unsigned kWgOps = 64; // operations a warpgroup may have in flight in the stand-in
inline std::vector<WgOp>& wg_ops(int wg) {
    BlockExtras& e = extras();
    if (e.wg_ops.empty()) { // the block's first wgmma
        e.wg_ops.assign(blockDim.x / 128, std::vector<WgOp>(kWgOps));
        for (unsigned w = 0; w < blockDim.x / 128; w++) e.wg_bar.emplace_back(128);
    }
    return e.wg_ops[wg];
}
// Thread tid's part of D = A B (+ D): the m64nNk16 accumulator fragment, per warp 16 rows, per 8
// columns 4 values: (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
inline void complete(WgOp& op, int tid) {
    if (op.a_in_regs) {
        memcpy(op.a_fixed[tid], op.a[tid], sizeof op.a_fixed[tid]);
        op.fixed[tid] = true;
    }
    const SmemDesc b = decode(op.b_desc);
    SmemDesc a{};
    if (!op.a_in_regs) a = decode(op.a_desc);
    const int warp = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    // The operands this thread's fragment needs, read once: A's rows g and g + 8 of its warp, and
    // B's columns 8 c + 2 t and 8 c + 2 t + 1.
    float av[2][16], bv[128][16];
    for (int h = 0; h < 2; h++) {
        const int row = 16 * warp + g + 8 * h;
        for (int k = 0; k < 16; k++) {
            if (op.a_in_regs) { // the mma.sync A fragment of the warp holding the row
                const int holder = (row / 16) * 32 + (row % 8) * 4 + (k % 8) / 2, reg = (row % 16 >= 8) + 2 * (k >= 8);
                av[h][k] = half_of(op.fixed[holder] ? op.a_fixed[holder][reg] : op.a[holder][reg], k & 1);
            } else {
                av[h][k] = operand(a, row, k, false);
            }
        }
    }
    for (int c = 0; c < op.n / 8; c++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 16; k++) bv[2 * c + j][k] = operand(b, 8 * c + 2 * t + j, k, op.trans_b);
    for (int i = 0; i < op.n / 2; i++) {
        const float* x = av[(i >> 1) & 1];
        const float* y = bv[2 * (i >> 2) + (i & 1)];
        float sum = 0.0f;
        for (int k = 0; k < 16; k++) sum += x[k] * y[k];
        op.d[tid][i] = (op.accumulate ? op.d[tid][i] : 0.0f) + sum;
    }
    op.left--;
}
inline void wgmma_fence() { wgmma_state().fenced = true; }
inline void wgmma_commit() {
    WgmmaState& w = wgmma_state();
    w.groups.push_back(std::move(w.uncommitted));
    w.uncommitted.clear();
}
// Completes this thread's part of all but the newest N of its groups.
template <int N> inline void wgmma_wait() {
    WgmmaState& w = wgmma_state();
    std::vector<WgOp>& ops = wg_ops(threadIdx.x / 128);
    if (w.groups.size() > size_t(N)) {
        // The operations take time: the other threads run first (and may, say, refill a stage
        // this warpgroup released too early).
        fiber_progress(); // this thread goes on once resumed: not a deadlock
        fiber_yield();
    }
    while (w.groups.size() > size_t(N)) {
        for (unsigned seq : w.groups.front()) complete(ops[seq % kWgOps], threadIdx.x % 128);
        w.groups.erase(w.groups.begin());
    }
    w.fenced = false; // the accumulators are the thread's again: the next wgmma needs a fence
}
template <int R> inline void wgmma_fence_operands(float (&)[R]) {}
template <int M> inline void wgmma_fence_operands(unsigned (&)[M][4]) {}
// The warpgroup-collective issue: every thread arrives with its accumulator and A registers
// before the operation exists for any of them.
inline void wgmma_issue(int n, bool a_in_regs, unsigned long long a_desc, unsigned long long b_desc, bool trans_b, bool accumulate,
                        float* d, const unsigned* a) {
    WgmmaState& w = wgmma_state();
    if (!w.fenced) simt_fail("wgmma.mma_async without a wgmma.fence since the thread's last wgmma.wait_group");
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const unsigned seq = w.issued++;
    WgOp& op = wg_ops(wg)[seq % kWgOps];
    if (tid == 0) {
        if (!op.done()) simt_fail("more than %u wgmma operations of one warpgroup in flight: beyond the stand-in's table", kWgOps);
        op.seq = seq;
        op.n = n;
        op.a_in_regs = a_in_regs;
        op.a_desc = a_desc;
        op.b_desc = b_desc;
        op.trans_b = trans_b;
        op.accumulate = accumulate;
        op.left = 128;
        memset(op.fixed, 0, sizeof op.fixed);
    }
    BlockExtras& e = extras();
    e.wg_bar[wg].wait(); // thread 0 has opened the operation
    if (op.seq != seq || op.n != n || op.a_in_regs != a_in_regs || op.a_desc != a_desc || op.b_desc != b_desc || op.accumulate != accumulate)
        simt_fail("wgmma.mma_async issued with different operands across the warpgroup");
    op.d[tid] = d;
    op.a[tid] = a;
    e.wg_bar[wg].wait(); // every thread has given its registers
    w.uncommitted.push_back(seq);
}
template <int N> inline void wgmma_ss(float (&d)[N / 2], unsigned long long a_desc, unsigned long long b_desc, int accumulate) {
    wgmma_issue(N, false, a_desc, b_desc, false, accumulate != 0, d, nullptr);
}
template <int N> inline void wgmma_rs_vt(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long b_desc, int accumulate) {
    wgmma_issue(N, true, 0, b_desc, true, accumulate != 0, d, a);
}
#endif // RINGBENCH_SIMT
