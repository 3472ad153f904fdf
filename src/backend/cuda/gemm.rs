//! The linear layers: a row-major BF16 GEMM with FP32 accumulation as one cuBLAS call
//! (`launch::row_major_gemm` maps it onto cuBLAS's column-major terms).

use super::device::{err, CudaBackend, DevMat};
use super::launch::{self, Operand};
use crate::backend::{checks, Matrix};
use anyhow::Result;
use cudarc::cublas::sys as cublas_sys;

/// A GEMM dimension as cuBLAS's `int`, refused where it does not fit.
fn dim(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("cublasGemmEx: {what} = {v} exceeds cuBLAS's int dimensions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gemm_dimension_past_int_is_refused() {
        assert_eq!(dim("m", 4096).unwrap(), 4096);
        let e = dim("m", 1 << 31).unwrap_err().to_string();
        assert!(e.contains("cublasGemmEx: m = 2147483648 exceeds cuBLAS's int dimensions"), "{e}");
    }
}

impl CudaBackend {
    pub(super) fn matmul_now(&self, x: &DevMat<u16>, w: &DevMat<u16>, out: &mut DevMat<u16>) -> Result<()> {
        checks::matmul(x, w, out)?;
        out.set_rows(x.rows);
        self.flops.gemm(x.rows, x.cols, w.cols);
        let g = launch::row_major_gemm(x.rows, x.cols, w.cols);
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let (a, b) = match (g.a, g.b) {
            (Operand::W, Operand::X) => (&w.data, &x.data),
            _ => (&x.data, &w.data),
        };
        let (m, n, k) = (dim("m", g.m)?, dim("n", g.n)?, dim("k", g.k)?);
        let (lda, ldb, ldc) = (dim("lda", g.lda)?, dim("ldb", g.ldb)?, dim("ldc", g.ldc)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let (pa, _ra) = a.device_ptr(&self.stream);
        let (pb, _rb) = b.device_ptr(&self.stream);
        let (pc, _rc) = out.data.device_ptr_mut(&self.stream);
        // SAFETY: A is m x k (ld m), B is k x n (ld k), C is m x n (ld m) in column-major terms,
        // all BF16 inside their buffers (checked shapes above); alpha and beta are host FP32 as
        // cuBLAS's default pointer mode expects for an FP32 compute type.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha as *const f32 as *const _,
                pa as *const _,
                cublas_sys::cudaDataType::CUDA_R_16BF,
                lda,
                pb as *const _,
                cublas_sys::cudaDataType::CUDA_R_16BF,
                ldb,
                &beta as *const f32 as *const _,
                pc as *mut _,
                cublas_sys::cudaDataType::CUDA_R_16BF,
                ldc,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(err("cublasGemmEx"))?;
        Ok(())
    }
}
