// The simulated GPU's own checks, against its libraries directly (built and run by tests/sim.rs
// with RINGBENCH_SIM_DELAY=1, RINGBENCH_SIM_MEMORY=64M, RINGBENCH_SIM_DEVICES=2 and a 1 s NCCL
// timeout): cuBLAS GEMM semantics against a CPU product; a missing stream wait that the delay
// mode catches; memory misuse refused with the call named; a kernel reading past its allocation
// stopped by the fault handler; NCCL between two processes, grouped and ungrouped. One line per
// case; exit status 1 on any failure.
#include <cuda.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

// cuBLAS and NCCL, declared as their headers do (the stand-ins define exactly these).
extern "C" {
typedef struct cublasContext* cublasHandle_t;
int cublasCreate_v2(cublasHandle_t*);
int cublasSetStream_v2(cublasHandle_t, CUstream);
int cublasGemmEx(cublasHandle_t, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda, const void* B,
                 int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int algo);
typedef struct {
    char internal[128];
} ncclUniqueId;
int ncclGetUniqueId(ncclUniqueId*);
int ncclCommInitRank(void** comm, int nranks, ncclUniqueId id, int rank);
int ncclSend(const void*, size_t, int type, int peer, void* comm, CUstream);
int ncclRecv(void*, size_t, int type, int peer, void* comm, CUstream);
int ncclAllReduce(const void*, void*, size_t, int type, int op, void* comm, CUstream);
int ncclAllGather(const void*, void*, size_t, int type, void* comm, CUstream);
int ncclGroupStart();
int ncclGroupEnd();
int ncclCommGetAsyncError(void*, int*);
int ncclCommAbort(void*);
}
const int kBF16 = 14, kF32 = 0, kCompute32F = 68, kNcclFloat32 = 7, kNcclSum = 0;

static int failures = 0;
static void report(const char* name, bool ok, const char* detail = "") {
    printf("%-64s %s%s%s\n", name, ok ? "PASS" : "FAIL", *detail ? ": " : "", detail);
    fflush(stdout);
    failures += !ok;
}

#define CHECK(call)                                                                                                                  \
    do {                                                                                                                             \
        CUresult r_ = (call);                                                                                                        \
        if (r_ != CUDA_SUCCESS) {                                                                                                    \
            fprintf(stderr, "%s:%d: %s returned %d\n", __FILE__, __LINE__, #call, int(r_));                                          \
            exit(2);                                                                                                                 \
        }                                                                                                                            \
    } while (0)

static float bf(uint16_t b) {
    uint32_t u = uint32_t(b) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t to_bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

static void context(int device) {
    CUdevice d;
    CUcontext c;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&d, device));
    CHECK(cuDevicePrimaryCtxRetain(&c, d));
    CHECK(cuCtxSetCurrent(c));
}

// C = op(A) op(B) (+ beta C) for every transpose pair, non-square shapes, padded leading
// dimensions; BF16 operands, BF16 output (C's NaN must not be read with beta 0) and FP32 output
// with beta 0.5. Against a double product of the same BF16 values: within FP32 accumulation
// (k ulps of the sum of magnitudes) plus, for BF16 output, one BF16 rounding.
static void check_gemm() {
    cublasHandle_t h;
    CUstream s;
    CHECK(cuStreamCreate(&s, 0));
    if (cublasCreate_v2(&h) != 0 || cublasSetStream_v2(h, s) != 0) return report("cublasCreate_v2 / cublasSetStream_v2", false);
    const int shapes[][3] = {{5, 7, 3}, {33, 17, 70}, {1, 64, 9}};
    for (auto& sh : shapes)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int out32 = 0; out32 < 2; out32++) {
                    const int m = sh[0], n = sh[1], k = sh[2];
                    const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
                    const int lda = ar + 3, ldb = br + 1, ldc = m + 2;
                    std::vector<uint16_t> A(size_t(lda) * ac), B(size_t(ldb) * bc);
                    for (size_t i = 0; i < A.size(); i++) A[i] = to_bf(float(sin(0.7 * double(i)) * 2.0));
                    for (size_t i = 0; i < B.size(); i++) B[i] = to_bf(float(cos(0.3 * double(i))));
                    const size_t cbytes = size_t(ldc) * n * (out32 ? 4 : 2);
                    std::vector<unsigned char> C0(cbytes);
                    for (size_t i = 0; i < cbytes / 2; i++) reinterpret_cast<uint16_t*>(C0.data())[i] = out32 ? 0x3f80 : 0x7fc0; // NaN / ~1
                    CUdeviceptr dA, dB, dC;
                    CHECK(cuMemAlloc(&dA, A.size() * 2));
                    CHECK(cuMemAlloc(&dB, B.size() * 2));
                    CHECK(cuMemAlloc(&dC, cbytes));
                    CHECK(cuMemcpyHtoD(dA, A.data(), A.size() * 2));
                    CHECK(cuMemcpyHtoD(dB, B.data(), B.size() * 2));
                    CHECK(cuMemcpyHtoD(dC, C0.data(), cbytes));
                    const float alpha = 1.0f, beta = out32 ? 0.5f : 0.0f;
                    int st = cublasGemmEx(h, ta, tb, m, n, k, &alpha, (void*)dA, kBF16, lda, (void*)dB, kBF16, ldb, &beta, (void*)dC,
                                          out32 ? kF32 : kBF16, ldc, kCompute32F, -1);
                    std::vector<unsigned char> C(cbytes);
                    CHECK(cuStreamSynchronize(s));
                    CHECK(cuMemcpyDtoH(C.data(), dC, cbytes));
                    double worst = 0;
                    bool ok = st == 0;
                    for (int j = 0; j < n; j++)
                        for (int i = 0; i < m; i++) {
                            double want = 0, mag = 0;
                            for (int p = 0; p < k; p++) {
                                const double a = bf(ta ? A[p + size_t(i) * lda] : A[i + size_t(p) * lda]);
                                const double b = bf(tb ? B[j + size_t(p) * ldb] : B[p + size_t(j) * ldb]);
                                want += a * b, mag += fabs(a * b);
                            }
                            const size_t at = i + size_t(j) * ldc;
                            double got;
                            if (out32) {
                                float c0;
                                memcpy(&c0, &C0[at * 4], 4);
                                want += 0.5 * c0, mag += 0.5 * fabs(c0);
                                memcpy(&c0, &C[at * 4], 4);
                                got = c0;
                            } else {
                                got = bf(reinterpret_cast<uint16_t*>(C.data())[at]);
                            }
                            double tol = 2.0 * k * ldexp(mag, -24);
                            if (!out32) tol += ldexp(fabs(want), -8);
                            const double err = fabs(got - want);
                            ok &= err <= tol; // NaN fails
                            worst = std::max(worst, err / std::max(tol, 1e-30));
                        }
                    char name[128], detail[64];
                    snprintf(name, sizeof name, "cublasGemmEx %s%s %dx%dx%d, %s out", ta ? "T" : "N", tb ? "T" : "N", m, n, k,
                             out32 ? "FP32 (beta 0.5)" : "BF16 (beta 0, C NaN)");
                    snprintf(detail, sizeof detail, "worst error %.2f of its bound", worst);
                    report(name, ok, detail);
                    CHECK(cuMemFree(dA));
                    CHECK(cuMemFree(dB));
                    CHECK(cuMemFree(dC));
                }
}

// Stream B copies what stream A uploads. Without an event between them the delay mode lets B
// run first in some of twenty trials; with cuStreamWaitEvent it never does.
static int stale_copies(bool wait) {
    const size_t n = 1 << 16;
    CUstream a, b;
    CUevent e;
    CHECK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CHECK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CHECK(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    CUdeviceptr x, y;
    CHECK(cuMemAlloc(&x, n));
    CHECK(cuMemAlloc(&y, n));
    int stale = 0;
    std::vector<unsigned char> host(n), back(n);
    for (int t = 0; t < 20; t++) {
        memset(host.data(), t + 1, n);
        CHECK(cuMemcpyHtoDAsync(x, host.data(), n, a));
        if (wait) {
            CHECK(cuEventRecord(e, a));
            CHECK(cuStreamWaitEvent(b, e, 0));
        }
        CHECK(cuMemcpyDtoDAsync(y, x, n, b));
        CHECK(cuStreamSynchronize(b));
        CHECK(cuStreamSynchronize(a));
        CHECK(cuMemcpyDtoH(back.data(), y, n));
        stale += back[0] != t + 1 || back[n - 1] != t + 1;
    }
    CHECK(cuMemFree(x));
    CHECK(cuMemFree(y));
    return stale;
}

static void check_stream_order() {
    const bool delay = getenv("RINGBENCH_SIM_DELAY") && strcmp(getenv("RINGBENCH_SIM_DELAY"), "1") == 0;
    char detail[96];
    const int without = stale_copies(false), with = stale_copies(true);
    snprintf(detail, sizeof detail, "%d of 20 trials stale without the wait, %d with it", without, with);
    report("delay mode: a missing cuStreamWaitEvent shows as stale data", delay && without > 0 && with == 0, detail);
}

// Misuse refused with the call named on stderr (tests/sim.rs checks the messages).
static void check_memory_errors() {
    CUdeviceptr p, q;
    std::vector<unsigned char> host(4096);
    CHECK(cuMemAlloc(&p, 1000));
    report("a host pointer as a copy's device destination is refused",
           cuMemcpyHtoD(CUdeviceptr(uintptr_t(host.data())), host.data(), 16) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemAlloc(&q, 1000));
    report("a copy past its allocation's end is refused", cuMemcpyDtoD(q, p, 1001) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemFree(p));
    report("a double free is refused", cuMemFree(p) == CUDA_ERROR_INVALID_VALUE);
    size_t free_b, total;
    CHECK(cuMemGetInfo(&free_b, &total));
    CUdeviceptr big;
    const bool fits = cuMemAlloc(&big, 48 << 20) == CUDA_SUCCESS;
    CUdeviceptr more;
    report("cuMemGetInfo reports RINGBENCH_SIM_MEMORY, and allocations beyond it are refused",
           total == (64u << 20) && fits && cuMemAlloc(&more, 32 << 20) == CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(cuMemFree(big));

    // A kernel from kernels/ (a PTX text naming its entry suffices to load it).
    CUmodule mod;
    CUfunction add;
    CHECK(cuModuleLoadData(&mod, ".version 8.0\n.target sm_90a\n.entry add_bf16 ()\n{ ret; }\n"));
    CHECK(cuModuleGetFunction(&add, mod, "add_bf16"));
    long long nn = 500;
    void* x = (void*)q;
    void* y = host.data();
    void* args[] = {&x, &y, &nn};
    report("a host pointer as a kernel argument is refused",
           cuLaunchKernel(add, 2, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemFree(q));
}

// The Hopper kernel's host side: cuTensorMapEncodeTiled checks its arguments as the driver
// documents them (and that the tensor is device memory), and a launch's dynamic shared memory
// must stay within the function's attribute.
static void check_tensor_maps() {
    CUdeviceptr p;
    CHECK(cuMemAlloc(&p, 256 * 512 * 2));
    CUtensorMap map;
    cuuint64_t dims[2] = {512, 256}, strides[1] = {1024};
    cuuint32_t box[2] = {64, 128}, one[2] = {1, 1};
    auto encode = [&](void* address, cuuint32_t box0, CUtensorMapSwizzle sw) {
        box[0] = box0;
        return cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, address, dims, strides, box, one,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    };
    report("cuTensorMapEncodeTiled encodes 64 x 128 boxes with the 128-byte swizzle", encode((void*)p, 64, CU_TENSOR_MAP_SWIZZLE_128B) == 0);
    report("cuTensorMapEncodeTiled refuses a box row wider than the swizzle",
           encode((void*)p, 128, CU_TENSOR_MAP_SWIZZLE_128B) == CUDA_ERROR_INVALID_VALUE);
    std::vector<unsigned char> host(256 * 1024);
    report("cuTensorMapEncodeTiled refuses host memory", encode(host.data(), 64, CU_TENSOR_MAP_SWIZZLE_128B) == CUDA_ERROR_INVALID_VALUE);
    dims[1] = 257;
    report("cuTensorMapEncodeTiled refuses a tensor past its allocation",
           encode((void*)p, 64, CU_TENSOR_MAP_SWIZZLE_128B) == CUDA_ERROR_INVALID_VALUE);
    CUmodule mod;
    CUfunction f;
    CHECK(cuModuleLoadData(&mod, ".entry flash_wgmma_d128_bf16 ()\n"));
    CHECK(cuModuleGetFunction(&f, mod, "flash_wgmma_d128_bf16"));
    report("a launch beyond the default 48 KB of dynamic shared memory is refused",
           cuLaunchKernel(f, 1, 1, 1, 384, 1, 1, 100000, nullptr, nullptr, nullptr) == CUDA_ERROR_INVALID_VALUE);
    report("cuFuncSetAttribute refuses more than the 227 KB a block may have",
           cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 300000) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemFree(p));
}

// In a child: a kernel told to read 8 KiB from a 2000-byte allocation. The fault handler must
// end the process, naming the launch and the allocation.
static void check_overrun() {
    const pid_t child = fork();
    if (child == 0) {
        context(0);
        CUdeviceptr x, y;
        CHECK(cuMemAlloc(&x, 2000));
        CHECK(cuMemAlloc(&y, 8192));
        CUmodule mod;
        CUfunction add;
        CHECK(cuModuleLoadData(&mod, ".entry add_bf16 ()\n"));
        CHECK(cuModuleGetFunction(&add, mod, "add_bf16"));
        long long n = 4096;
        void* args[] = {&y, &x, &n};
        CHECK(cuLaunchKernel(add, 16, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr));
        CHECK(cuCtxSynchronize());
        _exit(0); // not reached if the fault handler works
    }
    int status = 0;
    waitpid(child, &status, 0);
    report("a kernel reading past its allocation ends the process", WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

// Two processes, ranks 0 and 1 on devices 0 and 1: `grouped` exchanges in one group (and an
// all-reduce and an all-gather), else ungrouped sends in a cycle, which must be reported as a
// deadlock through the asynchronous error and then aborted.
static int nccl_rank(int rank, ncclUniqueId id, bool grouped) {
    context(rank);
    void* comm;
    if (ncclCommInitRank(&comm, 2, id, rank) != 0) return 3;
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    const size_t n = 1024;
    CUdeviceptr out, in;
    CHECK(cuMemAlloc(&out, n * 4));
    CHECK(cuMemAlloc(&in, n * 4 * 2));
    std::vector<float> mine(n);
    for (size_t i = 0; i < n; i++) mine[i] = float(rank * 10000 + i);
    CHECK(cuMemcpyHtoD(out, mine.data(), n * 4));
    const int peer = 1 - rank;
    if (!grouped) {
        ncclSend((void*)out, n, kNcclFloat32, peer, comm, s);
        ncclRecv((void*)in, n, kNcclFloat32, peer, comm, s);
        for (int i = 0; i < 200; i++) { // up to 10 s; the stand-in's timeout is 1 s
            int e = 0;
            ncclCommGetAsyncError(comm, &e);
            if (e != 0) {
                ncclCommAbort(comm);
                return 0;
            }
            usleep(50000);
        }
        return 4;
    }
    ncclGroupStart();
    ncclSend((void*)out, n, kNcclFloat32, peer, comm, s);
    ncclRecv((void*)in, n, kNcclFloat32, peer, comm, s);
    ncclGroupEnd();
    CHECK(cuStreamSynchronize(s));
    std::vector<float> got(2 * n);
    CHECK(cuMemcpyDtoH(got.data(), in, n * 4));
    for (size_t i = 0; i < n; i++)
        if (got[i] != float(peer * 10000 + i)) return 5;
    ncclAllReduce((void*)out, (void*)out, n, kNcclFloat32, kNcclSum, comm, s);
    ncclAllGather((void*)out, (void*)in, n, kNcclFloat32, comm, s);
    CHECK(cuStreamSynchronize(s));
    CHECK(cuMemcpyDtoH(got.data(), in, 2 * n * 4));
    for (size_t i = 0; i < 2 * n; i++)
        if (got[i] != float(10000 + 2 * (i % n))) return 6;
    ncclCommAbort(comm);
    return 0;
}

static void check_nccl(bool grouped) {
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    pid_t pids[2];
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        if (pids[r] == 0) _exit(nccl_rank(r, id, grouped));
    }
    bool ok = true;
    char detail[64] = "";
    for (int r = 0; r < 2; r++) {
        int status = 0;
        waitpid(pids[r], &status, 0);
        const bool fine = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!fine) snprintf(detail, sizeof detail, "rank %d exited with status %d", r, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        ok &= fine;
    }
    report(grouped ? "NCCL across processes: grouped send/recv, all-reduce, all-gather"
                   : "NCCL across processes: ungrouped sends in a cycle reported as a deadlock",
           ok, detail);
}

int main() {
    // The forks come first, before this process has any stream thread.
    check_overrun();
    check_nccl(true);
    check_nccl(false);
    context(0);
    check_gemm();
    check_stream_order();
    check_memory_errors();
    check_tensor_maps();
    printf("simulated GPU stand-ins: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
