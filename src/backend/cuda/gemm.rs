//! The linear layers and their backward: each a row-major BF16 GEMM with FP32 accumulation as
//! one cuBLAS call (`launch::row_major_gemm` and its backward twins map them onto cuBLAS's
//! column-major terms); the weight gradient accumulates into an FP32 buffer (beta = 1).

use super::device::{err, CudaBackend, DevMat};
use super::launch::{self, Operand};
use crate::backend::{checks, Matrix};
use anyhow::Result;
use cudarc::cublas::sys as cublas_sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

/// A GEMM dimension as cuBLAS's `int`, refused where it does not fit.
fn dim(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("cublasGemmEx: {what} = {v} exceeds cuBLAS's int dimensions"))
}

impl CudaBackend {
    pub(super) fn matmul_now(&self, x: &DevMat<u16>, w: &DevMat<u16>, out: &mut DevMat<u16>) -> Result<()> {
        checks::matmul(x, w, out)?;
        out.set_rows(x.rows);
        self.flops.gemm(x.rows, x.cols, w.cols);
        let g = launch::row_major_gemm(x.rows, x.cols, w.cols);
        let (pc, _rc) = out.data.device_ptr_mut(&self.stream);
        self.gemm_ex(g, (&x.data, &w.data), (pc, cublas_sys::cudaDataType::CUDA_R_16BF), 0.0)
    }

    /// dx = dy w^T (BF16 out, FP32 accumulation).
    pub(super) fn matmul_backward_input_now(&self, dy: &DevMat<u16>, w: &DevMat<u16>, dx: &mut DevMat<u16>) -> Result<()> {
        checks::matmul_backward_input(dy, w, dx)?;
        let (m, n, k) = (dy.rows, dy.cols, w.rows);
        dx.set_rows(m);
        self.flops.gemm(m, n, k);
        let (pc, _rc) = dx.data.device_ptr_mut(&self.stream);
        self.gemm_ex(launch::row_major_gemm_input_grad(m, n, k), (&dy.data, &w.data), (pc, cublas_sys::cudaDataType::CUDA_R_16BF), 0.0)
    }

    /// dw += x^T dy into the FP32 accumulator (beta = 1).
    pub(super) fn matmul_backward_weight_now(&self, x: &DevMat<u16>, dy: &DevMat<u16>, dw: &mut DevMat<f32>) -> Result<()> {
        checks::matmul_backward_weight(x, dy, dw)?;
        let (m, k, n) = (x.rows, x.cols, dy.cols);
        self.flops.gemm(k, m, n);
        let (pc, _rc) = dw.data.device_ptr_mut(&self.stream);
        self.gemm_ex(launch::row_major_gemm_weight_grad(m, k, n), (&x.data, &dy.data), (pc, cublas_sys::cudaDataType::CUDA_R_32F), 1.0)
    }

    /// One cublasGemmEx of the mapping `g` on the compute stream: BF16 operands (the op's first
    /// and second inputs, as `g` picks them), C of type `c.1` at `c.0`, FP32 compute; beta 0
    /// overwrites C, 1 accumulates into it.
    fn gemm_ex(
        &self,
        g: launch::ColMajorGemm,
        (first, second): (&CudaSlice<u16>, &CudaSlice<u16>),
        c: (cudarc::driver::sys::CUdeviceptr, cublas_sys::cudaDataType),
        beta: f32,
    ) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let pick = |o: Operand| if o == Operand::X { first } else { second };
        let (pa, _ra) = pick(g.a).device_ptr(&self.stream);
        let (pb, _rb) = pick(g.b).device_ptr(&self.stream);
        let (m, n, k) = (dim("m", g.m)?, dim("n", g.n)?, dim("k", g.k)?);
        let (lda, ldb, ldc) = (dim("lda", g.lda)?, dim("ldb", g.ldb)?, dim("ldc", g.ldc)?);
        let op = |t: bool| if t { cublas_sys::cublasOperation_t::CUBLAS_OP_T } else { cublas_sys::cublasOperation_t::CUBLAS_OP_N };
        let alpha = 1.0f32;
        // SAFETY: op(A) is m x k and op(B) k x n with the leading dimensions the mapping gives for
        // the callers' checked shapes, all BF16 inside their buffers; C is m x n (ld m) of its type
        // inside its buffer; alpha and beta are host FP32 as cuBLAS's default pointer mode expects
        // for an FP32 compute type.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(g.ta),
                op(g.tb),
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
                c.0 as *mut _,
                c.1,
                ldc,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(err("cublasGemmEx"))?;
        Ok(())
    }
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
