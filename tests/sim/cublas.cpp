// libcublas.so.12 of the simulated GPU: the handle, its stream, and cublasGemmEx with cuBLAS's
// column-major semantics (C = alpha op(A) op(B) + beta C, op = N or T, leading dimensions), BF16
// or FP32 operands, FP32 accumulation in order of k, run in its stream's order. The types and
// codes are cuBLAS's (cublas_api.h and library_types.h; CI has no cuBLAS headers, so they are
// written out here with the values cudarc's bindings carry).
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "sim.h"

#define SIM_API extern "C" __attribute__((visibility("default")))

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 } cublasComputeType_t;
typedef int cublasGemmAlgo_t;
typedef enum { MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2 } libraryPropertyType;
typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;

struct cublasContext {
    void* stream = nullptr;
    cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};
typedef cublasContext* cublasHandle_t;

SIM_API cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
    if (!sim::context_current("cublasCreate_v2")) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasSetStream_v2(cublasHandle_t h, void* stream) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasGetStream_v2(cublasHandle_t h, void** stream) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    *stream = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t h, cublasPointerMode_t mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }

// What this library stands in for; `info` labels it as the simulated device's.
SIM_API cublasStatus_t cublasGetProperty(libraryPropertyType type, int* value) {
    switch (type) {
    case MAJOR_VERSION: *value = 12; break;
    case MINOR_VERSION: *value = 0; break;
    case PATCH_LEVEL: *value = 0; break;
    default: return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

SIM_API cublasStatus_t cublasGetVersion_v2(cublasHandle_t, int* v) {
    *v = 120000;
    return CUBLAS_STATUS_SUCCESS;
}



static size_t elem_size(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

// Element (i, j) of a column-major matrix with leading dimension ld, as FP32.
static float load(const void* p, cudaDataType t, int64_t i, int64_t j, int ld) {
    const int64_t at = i + j * int64_t(ld);
    return t == CUDA_R_16BF ? sim::bf16_bits_to_float(static_cast<const uint16_t*>(p)[at]) : static_cast<const float*>(p)[at];
}

// The extent in bytes of a rows x cols column-major operand with leading dimension ld.
static size_t extent(int rows, int cols, int ld, cudaDataType t) {
    return rows == 0 || cols == 0 ? 0 : (size_t(cols - 1) * size_t(ld) + size_t(rows)) * elem_size(t);
}

SIM_API cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha,
                                    const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                                    void* C, cudaDataType ct, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t) {
    const char* call = "cublasGemmEx";
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
        sim::report("%s: m %d, n %d, k %d, transa %d, transb %d: invalid", call, m, n, k, int(ta), int(tb));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    // op(A) is m x k: A is m x k (N) or k x m (T); op(B) is k x n: B is k x n or n x k.
    const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
    const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
    if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
        sim::report("%s: leading dimensions %d, %d, %d below the rows %d, %d, %d", call, lda, ldb, ldc, a_rows, b_rows, m);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC) {
        sim::report("%s: compute type %d is not simulated (FP32 only)", call, int(compute));
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    for (cudaDataType t : {at, bt, ct})
        if (t != CUDA_R_16BF && t != CUDA_R_32F) {
            sim::report("%s: data type %d is not simulated (BF16 and FP32)", call, int(t));
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
    if (h->pointer_mode != CUBLAS_POINTER_MODE_HOST) {
        sim::report("%s: device pointer mode is not simulated", call);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const auto dev = [](const void* p) { return uint64_t(uintptr_t(p)); };
    if (!sim::device_range(dev(A), extent(a_rows, a_cols, lda, at), call, "A") ||
        !sim::device_range(dev(B), extent(b_rows, b_cols, ldb, bt), call, "B") ||
        !sim::device_range(dev(C), extent(m, n, ldc, ct), call, "C"))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    sim::enqueue(sim::stream_of(h->stream), call, [=] {
        // op(A) as FP32, column-major m x k, so the inner loop runs down contiguous columns.
        std::vector<float> opa(size_t(m) * k), acc(m);
        for (int p = 0; p < k; p++)
            for (int i = 0; i < m; i++) opa[size_t(p) * m + i] = ta == CUBLAS_OP_N ? load(A, at, i, p, lda) : load(A, at, p, i, lda);
        for (int j = 0; j < n; j++) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int p = 0; p < k; p++) {
                const float bv = tb == CUBLAS_OP_N ? load(B, bt, p, j, ldb) : load(B, bt, j, p, ldb);
                const float* col = &opa[size_t(p) * m];
                for (int i = 0; i < m; i++) acc[i] += col[i] * bv;
            }
            for (int i = 0; i < m; i++) {
                const int64_t at_c = i + int64_t(j) * ldc;
                // beta = 0: C is not read (it may hold anything, NaN included), as cuBLAS specifies.
                float v = a * acc[i];
                if (b != 0.0f) v += b * load(C, ct, i, j, ldc);
                if (ct == CUDA_R_16BF)
                    static_cast<uint16_t*>(C)[at_c] = sim::float_to_bf16_bits(v);
                else
                    static_cast<float*>(C)[at_c] = v;
            }
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}
