//! The CUDA backend's backward ops (`Backward`), for a training step: the GEMMs' transposes on
//! cuBLAS (`gemm`), attention's backward on its kernels (`attention_backward`), and here the
//! launchers of kernels/backward.cu (RMSNorm, GELU, SwiGLU, attention's delta, FP32 adds; each
//! planned pure and tested without a GPU), RoPE's inverse (`rope_bf16` at negated positions) and
//! the FP32 buffers' host and NCCL views.

use super::device::{err, push_scalars, CudaBackend, DevMat};
use super::elementwise::over_elements;
use super::launch::{self, checked_elementwise, Planned, Scalars, MAX_GRID_X};
use crate::backend::{checks, Backward, Heads, Matrix, Span};
use anyhow::{ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

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

/// `rms_norm_backward_bf16`: one block per RMS_BACKWARD_ROWS rows, a row's FP32 gain gradient in
/// dynamic shared memory (its bytes returned); None for no rows.
pub fn rms_norm_backward(rows: usize, cols: usize) -> Result<Option<(Planned, u32)>> {
    const K: &str = "rms_norm_backward_bf16";
    if rows == 0 {
        return Ok(None);
    }
    ensure!(
        cols <= launch::RMS_BACKWARD_MAX_COLS,
        "{K}: rows of {cols} exceed the {} its shared memory holds (one FP32 gain gradient per column)",
        launch::RMS_BACKWARD_MAX_COLS
    );
    ensure!((rows as u64).div_ceil(launch::RMS_BACKWARD_ROWS as u64) <= MAX_GRID_X, "{K}: {rows} rows exceed one launch");
    let s = Scalars::new(K).int("rows", rows)?.int("cols", cols)?;
    Ok(Some((Planned { geometry: launch::rms_norm_backward(rows), scalars: s }, (cols * 4) as u32)))
}

/// `swiglu_backward_bf16`: one thread per element of dout (rows x f); None for none.
pub fn swiglu_backward(rows: usize, f: usize) -> Result<Option<Planned>> {
    const K: &str = "swiglu_backward_bf16";
    if rows == 0 || f == 0 {
        return Ok(None);
    }
    Ok(Some(Planned { geometry: checked_elementwise(K, rows * f)?, scalars: Scalars::new(K).long("rows", rows)?.int("f", f)? }))
}

/// `attention_delta_f32`: one thread per (row, head); None for none.
pub fn attention_delta(rows: usize, heads: usize, head_dim: usize) -> Result<Option<Planned>> {
    const K: &str = "attention_delta_f32";
    if rows == 0 || heads == 0 {
        return Ok(None);
    }
    let s = Scalars::new(K).int("rows", rows)?.int("heads", heads)?.int("head dim", head_dim)?;
    // The kernel's int arithmetic: a row's columns.
    Scalars::new(K).int("columns", heads * head_dim)?;
    Ok(Some(Planned { geometry: checked_elementwise(K, rows * heads)?, scalars: s }))
}

fn cfg(p: &Planned, shared: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: p.geometry.grid, block_dim: p.geometry.block, shared_mem_bytes: shared }
}

impl Backward for CudaBackend {
    fn matmul_backward_input(&self, dy: &DevMat<u16>, w: &DevMat<u16>, dx: &mut DevMat<u16>) -> Result<()> {
        self.timed(true, || self.matmul_backward_input_now(dy, w, dx))
    }

    fn matmul_backward_weight(&self, x: &DevMat<u16>, dy: &DevMat<u16>, dw: &mut DevMat<f32>) -> Result<()> {
        self.timed(true, || self.matmul_backward_weight_now(x, dy, dw))
    }

    fn rms_norm_backward(
        &self,
        x: &DevMat<u16>,
        gain: &DevMat<u16>,
        dy: &DevMat<u16>,
        dx: &mut DevMat<u16>,
        dgain: &mut DevMat<f32>,
    ) -> Result<()> {
        checks::rms_norm_backward(x, gain, dy, dx, dgain)?;
        let Some((p, shared)) = rms_norm_backward(x.rows(), x.cols())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("rms_norm_backward_bf16")?);
        l.arg(&x.data).arg(&gain.data).arg(&dy.data).arg(&mut dx.data).arg(&mut dgain.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: x, dy and dx hold rows x cols, gain and dgain 1 x cols (checked); the dynamic
        // shared memory is one FP32 per column, within the attribute set at load.
        unsafe { l.launch(cfg(&p, shared)) }.map_err(err("rms_norm_backward_bf16"))?;
        Ok(())
    }

    fn rope_backward(&self, dx: &mut DevMat<u16>, heads: Heads, span: Span, stride: usize) -> Result<()> {
        self.rope_now(dx, heads, span, stride, true)
    }

    fn gelu_backward(&self, pre: &DevMat<u16>, dy: &mut DevMat<u16>) -> Result<()> {
        checks::add(dy, pre)?;
        let Some(p) = over_elements("gelu_backward_bf16", dy.len())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("gelu_backward_bf16")?);
        l.arg(&pre.data).arg(&mut dy.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: pre and dy hold the same n elements (checked).
        unsafe { l.launch(cfg(&p, 0)) }.map_err(err("gelu_backward_bf16"))?;
        Ok(())
    }

    fn swiglu_backward(&self, gate_up: &DevMat<u16>, dout: &DevMat<u16>, d_gate_up: &mut DevMat<u16>) -> Result<()> {
        checks::swiglu(gate_up, dout)?;
        checks::swiglu(d_gate_up, dout)?;
        ensure!(gate_up.rows() == dout.rows(), "swiglu_backward: {} rows of [gate | up], {} of dout", gate_up.rows(), dout.rows());
        d_gate_up.set_rows(dout.rows());
        let Some(p) = swiglu_backward(dout.rows(), dout.cols())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("swiglu_backward_bf16")?);
        l.arg(&gate_up.data).arg(&dout.data).arg(&mut d_gate_up.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: one thread per element of dout (rows x f); gate_up and d_gate_up hold rows x 2f.
        unsafe { l.launch(cfg(&p, 0)) }.map_err(err("swiglu_backward_bf16"))?;
        Ok(())
    }

    fn attention_backward_delta(&self, o: &DevMat<u16>, d_o: &DevMat<u16>, heads: usize, delta: &mut DevMat<f32>) -> Result<()> {
        checks::attention_backward_delta(o, d_o, heads, delta)?;
        delta.set_rows(o.rows());
        let Some(p) = attention_delta(o.rows(), heads, o.cols() / heads)? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("attention_delta_f32")?);
        l.arg(&o.data).arg(&d_o.data).arg(&mut delta.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: one thread per (row, head); o and d_o hold rows x heads x head_dim, delta rows x heads.
        unsafe { l.launch(cfg(&p, 0)) }.map_err(err("attention_delta_f32"))?;
        Ok(())
    }

    fn attention_backward(
        &self,
        q: &DevMat<u16>,
        kv: &DevMat<u16>,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        d_o: &DevMat<u16>,
        lse: &DevMat<f32>,
        delta: &DevMat<f32>,
        dq: &mut DevMat<f32>,
        dkv: &mut DevMat<f32>,
    ) -> Result<()> {
        self.timed(false, || self.attention_backward_now((q, kv), heads, (qs, ks), causal, (d_o, lse, delta), dq, dkv))
    }

    fn zero_acc(&self, x: &mut DevMat<f32>) -> Result<()> {
        self.fill_f32_now(x, 0.0)
    }

    fn add_acc(&self, x: &mut DevMat<f32>, y: &DevMat<f32>) -> Result<()> {
        checks::add(x, y)?;
        let Some(p) = over_elements("add_f32", x.len())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("add_f32")?);
        l.arg(&mut x.data).arg(&y.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: x and y hold the same n elements (checked).
        unsafe { l.launch(cfg(&p, 0)) }.map_err(err("add_f32"))?;
        Ok(())
    }

    fn copy_acc(&self, src: &DevMat<f32>, dst: &mut DevMat<f32>) -> Result<()> {
        checks::copy_acc(src, dst)?;
        dst.set_rows(src.rows());
        let n = src.len();
        if n == 0 {
            return Ok(());
        }
        self.stream().memcpy_dtod(&src.data.slice(..n), &mut dst.data.slice_mut(..n)).map_err(err("copy_acc"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::declared_scalars;

    #[test]
    fn each_backward_launcher_pushes_as_many_scalars_as_its_kernel_declares() {
        let (rms, shared) = rms_norm_backward(70, 300).unwrap().unwrap();
        assert_eq!((rms.scalars.values.len(), shared, rms.geometry.grid.0), (declared_scalars("rms_norm_backward_bf16"), 1200, 3));
        for (kernel, n) in [
            ("gelu_backward_bf16", over_elements("gelu_backward_bf16", 10).unwrap().unwrap().scalars.values.len()),
            ("swiglu_backward_bf16", swiglu_backward(10, 8).unwrap().unwrap().scalars.values.len()),
            ("attention_delta_f32", attention_delta(10, 2, 64).unwrap().unwrap().scalars.values.len()),
            ("add_f32", over_elements("add_f32", 10).unwrap().unwrap().scalars.values.len()),
        ] {
            assert_eq!(n, declared_scalars(kernel), "{kernel}");
        }
        assert!(rms_norm_backward(0, 64).unwrap().is_none() && swiglu_backward(0, 8).unwrap().is_none());
        assert!(attention_delta(0, 2, 64).unwrap().is_none());
    }

    #[test]
    fn each_backward_launcher_refuses_what_its_kernel_cannot_take() {
        let e = rms_norm_backward(4, launch::RMS_BACKWARD_MAX_COLS + 1).unwrap_err().to_string();
        assert!(e.contains("rms_norm_backward_bf16: rows of 24577 exceed the 24576"), "{e}");
        let e = swiglu_backward(2, 1 << 31).unwrap_err().to_string();
        assert!(e.contains("swiglu_backward_bf16: f = 2147483648"), "{e}");
        let e = attention_delta(4, 1 << 20, 1 << 12).unwrap_err().to_string();
        assert!(e.contains("attention_delta_f32: columns = 4294967296"), "{e}");
    }
}
