//! The CUDA backend's backward ops: not written yet. A training step (`--train`) is refused on
//! this backend before any work starts (`config`'s check names the flag); these answer the same
//! if a caller reaches them anyway, so nothing falls back to the CPU silently.

use super::device::{CudaBackend, DevMat};
use crate::backend::{Backward, Heads, Span};
use anyhow::{bail, Result};

/// What every backward op of this backend answers.
pub const NO_BACKWARD: &str =
    "the CUDA backend has no backward ops yet: a training step (--train) runs on --backend cpu until the GPU training kernels land";

/// FP32 buffers on the host and through NCCL: the gradient all-reduce's transports.
impl DevMat<f32> {
    /// The rows in use, copied to the host (waits for the work queued on them).
    pub fn to_host_f32(&self) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(&self.data.slice(..self.rows * self.cols)).map_err(|e| anyhow::anyhow!("device to host: {e:?}"))
    }

    /// The rows in use, read-only (NCCL's send buffer).
    pub(crate) fn f32_view(&self) -> cudarc::driver::CudaView<'_, f32> {
        self.data.slice(..self.rows * self.cols)
    }

    /// The rows in use (NCCL reduces them as FP32).
    pub(crate) fn f32_view_mut(&mut self) -> cudarc::driver::CudaViewMut<'_, f32> {
        let n = self.rows * self.cols;
        self.data.slice_mut(..n)
    }

    /// Host values into the rows in use, queued on the buffer's stream.
    pub fn from_host_f32(&mut self, values: &[f32]) -> Result<()> {
        let n = self.rows * self.cols;
        anyhow::ensure!(values.len() == n, "{} values into a buffer of {n}", values.len());
        self.stream.memcpy_htod(values, &mut self.data.slice_mut(..n)).map_err(|e| anyhow::anyhow!("host to device: {e:?}"))
    }
}

impl Backward for CudaBackend {
    fn matmul_backward_input(&self, _: &DevMat<u16>, _: &DevMat<u16>, _: &mut DevMat<u16>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn matmul_backward_weight(&self, _: &DevMat<u16>, _: &DevMat<u16>, _: &mut DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn rms_norm_backward(&self, _: &DevMat<u16>, _: &DevMat<u16>, _: &DevMat<u16>, _: &mut DevMat<u16>, _: &mut DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn rope_backward(&self, _: &mut DevMat<u16>, _: Heads, _: Span, _: usize) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn gelu_backward(&self, _: &DevMat<u16>, _: &mut DevMat<u16>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn swiglu_backward(&self, _: &DevMat<u16>, _: &DevMat<u16>, _: &mut DevMat<u16>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn attention_backward_delta(&self, _: &DevMat<u16>, _: &DevMat<u16>, _: usize, _: &mut DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn attention_backward(
        &self,
        _: &DevMat<u16>,
        _: &DevMat<u16>,
        _: Heads,
        _: Span,
        _: Span,
        _: bool,
        _: &DevMat<u16>,
        _: &DevMat<f32>,
        _: &DevMat<f32>,
        _: &mut DevMat<f32>,
        _: &mut DevMat<f32>,
    ) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn zero_acc(&self, _: &mut DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn add_acc(&self, _: &mut DevMat<f32>, _: &DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }

    fn copy_acc(&self, _: &DevMat<f32>, _: &mut DevMat<f32>) -> Result<()> {
        bail!(NO_BACKWARD)
    }
}
