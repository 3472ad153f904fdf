//! The attention kernels' launchers (kernels/attention.cu, flash_attention.cu, flash_wgmma.cu):
//! which kernel runs a call, each one's grid and checked arguments (`plain`, `flash`, `wgmma`,
//! pure and tested without a GPU), the tensor maps the wgmma kernel loads through, and the
//! dispatch the backend's `attention` runs.

pub use super::choice::AttentionKernel;
use super::device::{err, push_scalars, CudaBackend, DevMat};
use super::launch::{self, check_grid_heads, Geometry, Planned, Scalars, ATTENTION_WARPS, MAX_GRID_X, MAX_HEAD_DIM};
use crate::backend::{checks, Heads, Span};
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// The spans' scalars every attention kernel takes after its head counts, checked: each start
/// and length as `int`, and each span's end too (the kernels index rows as row0 + i).
pub(super) fn span_ints(s: Scalars, name: &str, span: Span, with_row0: bool) -> Result<Scalars> {
    let s = if with_row0 { s.int(&format!("{name} row0"), span.row0)? } else { s };
    let s = s.int(&format!("{name} length"), span.len)?.int(&format!("{name} position"), span.pos0)?;
    for (what, v) in [("end", span.row0 + span.len), ("last position", span.pos0 + span.len)] {
        ensure!(v <= i32::MAX as usize, "{}: {name} {what} = {v} exceeds the kernel's int arithmetic (at most {})", s.kernel, i32::MAX);
    }
    Ok(s)
}

/// The blocks of `rows` query rows that cover a span, refused beyond the grid.
pub(super) fn query_blocks(kernel: &str, q_len: usize, rows: usize) -> Result<()> {
    if (q_len as u64).div_ceil(rows as u64) > MAX_GRID_X {
        bail!("{kernel}: {q_len} query rows exceed one launch");
    }
    Ok(())
}

/// The plain kernel (one warp per query row and head): any head dim up to `MAX_HEAD_DIM`.
pub fn plain(heads: Heads, qs: Span, ks: Span, causal: bool, scale: f32) -> Result<Planned> {
    const K: &str = "attention_bf16";
    ensure!(heads.head_dim <= MAX_HEAD_DIM, "{K}: head dim {} above the kernel's {MAX_HEAD_DIM}", heads.head_dim);
    check_grid_heads(K, heads.heads)?;
    query_blocks(K, qs.len, ATTENTION_WARPS as usize)?;
    let s = Scalars::new(K).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?.int("head dim", heads.head_dim)?;
    let s = span_ints(span_ints(s, "query", qs, true)?, "key", ks, true)?;
    Ok(Planned { geometry: launch::attention(qs.len, heads.heads, heads.head_dim), scalars: s.code(i32::from(causal)).float(scale) })
}

/// The mma.sync flash kernel with `rows` query rows per block: head dims 64 and 128 only (its
/// tiles are 16-column MMA fragments of a fixed head dim).
pub fn flash(heads: Heads, qs: Span, ks: Span, causal: bool, scale: f32, rows: usize) -> Result<(&'static str, Planned)> {
    let Some(kernel) = launch::flash_kernel(heads.head_dim, rows) else {
        bail!("flash_attention: head dim {} with {rows} query rows per block: the kernel is built for head dims 64 and 128 and blocks of 64 or 128 rows", heads.head_dim);
    };
    check_grid_heads(kernel, heads.heads)?;
    query_blocks(kernel, qs.len, rows)?;
    let s = Scalars::new(kernel).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?;
    let s = span_ints(span_ints(s, "query", qs, true)?, "key", ks, true)?;
    Ok((kernel, Planned { geometry: launch::flash_attention(qs.len, heads.heads, rows), scalars: s.code(i32::from(causal)).float(scale) }))
}

/// The wgmma kernel: head dims 64 and 128, rows read through tensor maps (so the key span's
/// start is the map's, not an argument), whose row strides must be multiples of 16 bytes.
pub fn wgmma(heads: Heads, qs: Span, ks: Span, causal: bool, scale: f32) -> Result<(&'static str, Planned, u32)> {
    let Some(kernel) = launch::wgmma_kernel(heads.head_dim) else {
        bail!("flash_wgmma: head dim {}: the kernel is built for head dims 64 and 128", heads.head_dim);
    };
    for (what, width) in [("q", heads.width()), ("kv", 2 * heads.kv_width())] {
        ensure!(
            (width * 2) % 16 == 0 && width >= launch::WGMMA_BOX[0] as usize,
            "{kernel}: {what} rows of {width} BF16 cannot be loaded by TMA (a row must be a multiple of 16 bytes and at least one 64-column box)"
        );
    }
    check_grid_heads(kernel, heads.heads)?;
    query_blocks(kernel, qs.len, launch::WGMMA_ROWS)?;
    let s = Scalars::new(kernel).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?;
    let s = span_ints(span_ints(s, "query", qs, true)?, "key", ks, false)?;
    let planned = Planned { geometry: launch::wgmma_attention(qs.len, heads.heads), scalars: s.code(i32::from(causal)).float(scale) };
    Ok((kernel, planned, launch::wgmma_shared_bytes(heads.head_dim)))
}

fn cfg(g: Geometry, shared: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: g.grid, block_dim: g.block, shared_mem_bytes: shared }
}

impl CudaBackend {
    /// The backend's `attention`: the kernel this backend's choice runs for the head dim, checked
    /// and launched on the compute stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_now(
        &self,
        q: &DevMat<u16>,
        kv: &DevMat<u16>,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        o: &mut DevMat<f32>,
        lse: &mut DevMat<f32>,
    ) -> Result<()> {
        checks::attention(q, kv, heads, qs, ks, o, lse)?;
        if qs.len == 0 || ks.len == 0 {
            return Ok(());
        }
        let scale = (1.0 / (heads.head_dim as f64).sqrt()) as f32;
        let choice = self.attention_kernel();
        if choice.wgmma_kernel(heads.head_dim).is_some() {
            let (kernel, p, shared) = wgmma(heads, qs, ks, causal, scale)?;
            // The spans as tensor maps: row 0 the span's first row, as many rows as the span has,
            // so the TMA reads rows past a span as zeros.
            let q_map = self.tensor_map(&q.data, heads.width(), qs.row0, qs.len)?;
            let kv_map = self.tensor_map(&kv.data, 2 * heads.kv_width(), ks.row0, ks.len)?;
            self.count_attention(heads, qs, ks, causal);
            let mut l = self.stream().launch_builder(self.f(kernel)?);
            l.arg(&q_map).arg(&kv_map).arg(&mut o.data).arg(&mut lse.data);
            push_scalars(&mut l, &p.scalars.values);
            // SAFETY: the tensor maps cover rows inside the buffers (checked above) and outlive the
            // launch call, which copies them; the dynamic shared memory is what the kernel's layout
            // needs (FwSmem), allowed by the attribute set at load; o and lse rows inside the buffers.
            unsafe { l.launch(cfg(p.geometry, shared)) }.map_err(err("flash_wgmma"))?;
            return Ok(());
        }
        let flash_rows = choice.flash_rows().filter(|&r| launch::flash_kernel(heads.head_dim, r).is_some());
        let (kernel, p) = match flash_rows {
            Some(rows) => flash(heads, qs, ks, causal, scale, rows)?,
            None => ("attention_bf16", plain(heads, qs, ks, causal, scale)?),
        };
        self.count_attention(heads, qs, ks, causal);
        let mut l = self.stream().launch_builder(self.f(kernel)?);
        l.arg(&q.data).arg(&kv.data).arg(&mut o.data).arg(&mut lse.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: arguments in the kernel's signature order with its types; the grid covers the
        // span's query rows and heads, rows and columns inside the buffers (checked above); the
        // flash kernel's shared memory is static (two padded 64-row tiles).
        unsafe { l.launch(cfg(p.geometry, 0)) }.map_err(err(kernel))?;
        Ok(())
    }
}

/// A CUtensorMap passed by value as a kernel argument (`const __grid_constant__ TensorMap` in
/// kernels/wgmma.cuh): 128 bytes, aligned as cuda.h aligns it.
#[repr(transparent)]
pub struct TensorMapArg(cudarc::driver::sys::CUtensorMap);

// SAFETY: a plain 128-byte value with the kernel parameter's layout (kernels/wgmma.cuh's
// TensorMap); the driver copies it at the launch.
unsafe impl cudarc::driver::DeviceRepr for TensorMapArg {}

impl CudaBackend {
    /// The tensor map the wgmma kernel loads a span through: rows [row0, row0 + len) of a row-major
    /// BF16 buffer `width` elements wide, boxes of 64 columns x 128 rows, 128-byte swizzle, zeros
    /// outside.
    fn tensor_map(&self, data: &CudaSlice<u16>, width: usize, row0: usize, len: usize) -> Result<TensorMapArg> {
        use cudarc::driver::sys::*;
        use cudarc::driver::DevicePtr;
        let (base, _sync) = data.device_ptr(&self.stream);
        let address = base + (row0 * width * 2) as u64;
        let dims = [width as u64, len as u64];
        let strides = [(width * 2) as u64];
        let (boxes, element_strides) = (launch::WGMMA_BOX, [1u32, 1]);
        // SAFETY: CUtensorMap is plain bytes the call fills; every pointer argument points at
        // an array of the rank's length (strides: rank - 1); the address is device memory.
        let mut map: CUtensorMap = unsafe { std::mem::zeroed() };
        let r = unsafe {
            cuTensorMapEncodeTiled(
                &mut map,
                CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                2,
                address as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        r.result().map_err(|e| anyhow!("cuTensorMapEncodeTiled ({len} rows x {width} BF16 from row {row0}): {e:?}"))?;
        Ok(TensorMapArg(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MHA128: Heads = Heads { heads: 32, kv_heads: 32, head_dim: 128 };

    fn span(row0: usize, len: usize) -> Span {
        Span { row0, len, pos0: row0 }
    }

    #[test]
    fn each_attention_launcher_pushes_its_signature_and_covers_the_span() {
        let p = plain(MHA128, span(0, 6250), span(0, 6250), true, 0.5).unwrap();
        // heads, kv heads, head dim, q (row0, len, pos0), k (row0, len, pos0), causal, scale.
        assert_eq!(p.scalars.values.len(), 11);
        assert_eq!(p.geometry, launch::attention(6250, 32, 128));
        let (k, f) = flash(MHA128, span(0, 100), span(0, 100), false, 0.5, 128).unwrap();
        assert_eq!((k, f.scalars.values.len()), ("flash_attention_d128_m128_bf16", 10));
        let (k, w, shared) = wgmma(MHA128, span(0, 100), span(7, 100), true, 0.5).unwrap();
        // The key span's row0 is the tensor map's: not an argument.
        assert_eq!((k, w.scalars.values.len(), shared), ("flash_wgmma_d128_bf16", 9, launch::wgmma_shared_bytes(128)));
    }

    #[test]
    fn the_attention_launchers_refuse_what_their_kernels_cannot_take() {
        // A length past the kernels' int.
        let long = span(0, 1 << 31);
        let e = plain(MHA128, long, span(0, 10), true, 0.5).unwrap_err().to_string();
        assert!(e.contains("attention_bf16: query length = 2147483648 exceeds the kernel's int argument"), "{e}");
        let e = flash(MHA128, span(0, 10), long, true, 0.5, 64).unwrap_err().to_string();
        assert!(e.contains("key length = 2147483648"), "{e}");
        // A span that starts inside int but ends past it.
        let e = plain(MHA128, span(i32::MAX as usize - 5, 10), span(0, 10), true, 0.5).unwrap_err().to_string();
        assert!(e.contains("query end"), "{e}");
        // Head dims the kernels are not built for.
        let hd96 = Heads { heads: 4, kv_heads: 4, head_dim: 96 };
        assert!(flash(hd96, span(0, 10), span(0, 10), true, 0.5, 128).unwrap_err().to_string().contains("head dim 96"));
        assert!(wgmma(hd96, span(0, 10), span(0, 10), true, 0.5).unwrap_err().to_string().contains("head dim 96"));
        let hd512 = Heads { heads: 1, kv_heads: 1, head_dim: 512 };
        assert!(plain(hd512, span(0, 10), span(0, 10), true, 0.5).unwrap_err().to_string().contains("head dim 512 above"));
        // A row TMA cannot load: one 64-wide head of K/V is fine, but not narrower.
        let narrow = Heads { heads: 1, kv_heads: 1, head_dim: 64 };
        assert!(wgmma(narrow, span(0, 10), span(0, 10), true, 0.5).is_ok());
        // More heads than the grid's y dimension.
        let many = Heads { heads: 70_000, kv_heads: 70_000, head_dim: 64 };
        assert!(plain(many, span(0, 10), span(0, 10), true, 0.5).unwrap_err().to_string().contains("70000 heads exceed"));
    }
}
