//! The launchers of kernels/generate.cu and kernels/elementwise.cu: each plans its grid and its
//! checked scalar arguments in signature order (pure, tested without a GPU), and the backend's
//! op pushes its buffers around them and launches on the compute stream.

use super::device::{err, push_scalars, CudaBackend, DevMat};
use super::launch::{checked_elementwise, per_row, Planned, Scalars, MAX_GRID_X};
use crate::backend::{checks, BlockCopy, Heads, Matrix, Span};
use crate::generator::{Init, Region};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

fn cfg(p: &Planned) -> LaunchConfig {
    LaunchConfig { grid_dim: p.geometry.grid, block_dim: p.geometry.block, shared_mem_bytes: 0 }
}

/// `generate_bf16`: rows x width generated values written from row `dst_row0` of a buffer
/// `width` wide; the region's column blocks (at most three) and the init's kind and scale.
pub fn generate(width: usize, dst_row0: usize, region: &Region, seed: u64, init: Init) -> Result<Planned> {
    const K: &str = "generate_bf16";
    ensure!(region.col_blocks.len() <= 3, "{K}: at most three column blocks, {} given", region.col_blocks.len());
    let b = |i: usize| region.col_blocks.get(i).copied().unwrap_or((0, 0));
    let (kind, scale) = match init {
        Init::Uniform => (0, 1.0f32),
        Init::Weight { fan_in } => (1, (1.0 / (fan_in as f64).sqrt()) as f32),
        Init::Gain => (2, 1.0),
    };
    let s = Scalars::new(K).int("dst_row0", dst_row0)?.int("rows", region.rows)?.int("width", width)?;
    Scalars::new(K).int("the last row", dst_row0 + region.rows)?;
    let s = s.u64(seed).u64(region.tensor).u64(region.global_cols as u64).u64(region.row0 as u64).u64(region.row_stride as u64);
    let s = s.int("block 0 start", b(0).0)?.int("block 0 width", b(0).1)?.int("block 1 start", b(1).0)?;
    let s = s.int("block 1 width", b(1).1)?.int("block 2 start", b(2).0)?.code(kind).float(scale);
    Ok(Planned { geometry: checked_elementwise(K, region.rows * width)?, scalars: s })
}

/// `rms_norm_bf16`: one block per row; None for no rows.
pub fn rms_norm(rows: usize, cols: usize) -> Result<Option<Planned>> {
    const K: &str = "rms_norm_bf16";
    if rows == 0 {
        return Ok(None);
    }
    ensure!(rows as u64 <= MAX_GRID_X, "{K}: {rows} rows exceed one launch (one block per row)");
    Ok(Some(Planned { geometry: per_row(rows), scalars: Scalars::new(K).int("cols", cols)? }))
}

/// `rope_bf16`: one thread per (row, head, pair) of the span; None for none. `inverse` rotates
/// by minus the angles (`rope_backward`): the positions and their stride negated, which the
/// kernel's FP64 angle, cosine and sine turn into exactly the CPU twin's inverse rotation.
pub fn rope(cols: usize, heads: Heads, span: Span, stride: usize, inverse: bool) -> Result<Option<Planned>> {
    const K: &str = "rope_bf16";
    let n = span.len * heads.heads * heads.head_dim / 2;
    if n == 0 {
        return Ok(None);
    }
    ensure!(heads.head_dim % 2 == 0, "{K}: head dim {} is odd; RoPE rotates pairs", heads.head_dim);
    let s = Scalars::new(K).int("cols", cols)?.int("heads", heads.heads)?.int("head dim", heads.head_dim)?;
    let sign = if inverse { -1 } else { 1 };
    let s = s.int("row0", span.row0)?.int("length", span.len)?;
    let s = s.signed("position", sign * span.pos0 as i64)?.signed("position stride", sign * stride as i64)?;
    // The kernel's int arithmetic: the span's last row, and a row's pairs.
    Scalars::new(K).int("the span's end", span.row0 + span.len)?.int("pairs per row", heads.heads * heads.head_dim / 2)?;
    Ok(Some(Planned { geometry: checked_elementwise(K, n)?, scalars: s }))
}

/// A kernel over `n` elements taking `n` as `long long` (gelu, add, fill_f32, f32_to_bf16);
/// None for none.
pub fn over_elements(kernel: &'static str, n: usize) -> Result<Option<Planned>> {
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(Planned { geometry: checked_elementwise(kernel, n)?, scalars: Scalars::new(kernel).long("elements", n)? }))
}

/// `swiglu_bf16`: one thread per output element of rows x f; None for none.
pub fn swiglu(rows: usize, f: usize) -> Result<Option<Planned>> {
    const K: &str = "swiglu_bf16";
    if rows == 0 || f == 0 {
        return Ok(None);
    }
    Ok(Some(Planned { geometry: checked_elementwise(K, rows * f)?, scalars: Scalars::new(K).long("rows", rows)?.int("f", f)? }))
}

/// `copy_block_bf16`: (src_cols, src_off) then (dst_cols, dst_off, rows, cols), split by the
/// destination buffer in the signature; None for an empty block.
pub fn copy_block(src_cols: usize, dst_cols: usize, c: BlockCopy) -> Result<Option<Planned>> {
    const K: &str = "copy_block_bf16";
    let n = c.rows * c.cols;
    if n == 0 {
        return Ok(None);
    }
    let s = Scalars::new(K).int("source width", src_cols)?.long("source offset", c.src_row0 * src_cols + c.src_col0)?;
    let s = s.int("destination width", dst_cols)?.long("destination offset", c.dst_row0 * dst_cols + c.dst_col0)?;
    let s = s.int("rows", c.rows)?.int("cols", c.cols)?;
    Ok(Some(Planned { geometry: checked_elementwise(K, n)?, scalars: s }))
}

/// `lse_merge_f32`: one thread per (row, head) of the merged rows; None for none.
pub fn lse_merge(rows: usize, heads: usize, head_dim: usize, in_row0: usize) -> Result<Option<Planned>> {
    const K: &str = "lse_merge_f32";
    if rows == 0 || heads == 0 {
        return Ok(None);
    }
    let s = Scalars::new(K).int("rows", rows)?.int("heads", heads)?.int("head dim", head_dim)?.int("first partial row", in_row0)?;
    // The kernel's int arithmetic: the last partial row.
    Scalars::new(K).int("the partials' end", in_row0 + rows)?;
    Ok(Some(Planned { geometry: checked_elementwise(K, rows * heads)?, scalars: s }))
}

impl CudaBackend {
    pub(super) fn generate_now(&self, out: &mut DevMat<u16>, dst_row0: usize, region: &Region, seed: u64, init: Init) -> Result<()> {
        checks::fill(out, dst_row0, region)?;
        let p = generate(out.cols(), dst_row0, region, seed, init)?;
        let mut l = self.stream().launch_builder(self.f("generate_bf16")?);
        l.arg(&mut out.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: arguments in the kernel's signature order with its types; the grid covers rows x
        // width elements of a buffer holding at least (dst_row0 + rows) x width (checked).
        unsafe { l.launch(cfg(&p)) }.map_err(err("generate_bf16"))?;
        Ok(())
    }

    pub(super) fn rms_norm_now(&self, x: &DevMat<u16>, gain: &DevMat<u16>, out: &mut DevMat<u16>) -> Result<()> {
        checks::rms_norm(x, gain, out)?;
        out.set_rows(x.rows());
        let Some(p) = rms_norm(x.rows(), x.cols())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("rms_norm_bf16")?);
        l.arg(&x.data).arg(&gain.data).arg(&mut out.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: one block per row of x; x, gain and out hold rows x cols, 1 x cols, rows x cols.
        unsafe { l.launch(cfg(&p)) }.map_err(err("rms_norm_bf16"))?;
        Ok(())
    }

    pub(super) fn rope_now(&self, x: &mut DevMat<u16>, heads: Heads, span: Span, stride: usize, inverse: bool) -> Result<()> {
        checks::rope(x, heads, span)?;
        let Some(p) = rope(x.cols(), heads, span, stride, inverse)? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("rope_bf16")?);
        l.arg(&mut x.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: one thread per (row, head, pair) of the span, inside the buffer (checked).
        unsafe { l.launch(cfg(&p)) }.map_err(err("rope_bf16"))?;
        Ok(())
    }

    pub(super) fn gelu_now(&self, x: &mut DevMat<u16>) -> Result<()> {
        let Some(p) = over_elements("gelu_bf16", x.len())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("gelu_bf16")?);
        l.arg(&mut x.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: n elements of the buffer's rows.
        unsafe { l.launch(cfg(&p)) }.map_err(err("gelu_bf16"))?;
        Ok(())
    }

    pub(super) fn swiglu_now(&self, gate_up: &DevMat<u16>, out: &mut DevMat<u16>) -> Result<()> {
        checks::swiglu(gate_up, out)?;
        out.set_rows(gate_up.rows());
        let Some(p) = swiglu(gate_up.rows(), out.cols())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("swiglu_bf16")?);
        l.arg(&gate_up.data).arg(&mut out.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: one thread per output element; gate_up holds rows x 2f, out rows x f (checked).
        unsafe { l.launch(cfg(&p)) }.map_err(err("swiglu_bf16"))?;
        Ok(())
    }

    pub(super) fn add_now(&self, x: &mut DevMat<u16>, y: &DevMat<u16>) -> Result<()> {
        checks::add(x, y)?;
        let Some(p) = over_elements("add_bf16", x.len())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("add_bf16")?);
        l.arg(&mut x.data).arg(&y.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: x and y hold the same n elements (checked).
        unsafe { l.launch(cfg(&p)) }.map_err(err("add_bf16"))?;
        Ok(())
    }

    pub(super) fn fill_f32_now(&self, buf: &mut DevMat<f32>, value: f32) -> Result<()> {
        let Some(p) = over_elements("fill_f32", buf.len())? else { return Ok(()) };
        let scalars = p.scalars.clone().float(value);
        let mut l = self.stream().launch_builder(self.f("fill_f32")?);
        l.arg(&mut buf.data);
        push_scalars(&mut l, &scalars.values);
        // SAFETY: n elements of the buffer's rows, then the value, as the signature has them.
        unsafe { l.launch(cfg(&p)) }.map_err(err("fill_f32"))?;
        Ok(())
    }

    pub(super) fn store_now(&self, o: &DevMat<f32>, out: &mut DevMat<u16>) -> Result<()> {
        checks::attention_store(o, out)?;
        out.set_rows(o.rows());
        let Some(p) = over_elements("f32_to_bf16", o.len())? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("f32_to_bf16")?);
        l.arg(&o.data).arg(&mut out.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: n elements in both buffers.
        unsafe { l.launch(cfg(&p)) }.map_err(err("f32_to_bf16"))?;
        Ok(())
    }

    pub(super) fn merge_now(
        &self,
        o: &mut DevMat<f32>,
        lse: &mut DevMat<f32>,
        o_in: &DevMat<f32>,
        lse_in: &DevMat<f32>,
        in_row0: usize,
    ) -> Result<()> {
        checks::attention_merge(o, lse, o_in, lse_in, in_row0)?;
        let (rows, heads) = (o.rows(), lse.cols());
        let Some(p) = lse_merge(rows, heads, o.cols() / heads, in_row0)? else { return Ok(()) };
        let mut l = self.stream().launch_builder(self.f("lse_merge_f32")?);
        l.arg(&mut o.data).arg(&mut lse.data).arg(&o_in.data).arg(&lse_in.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: rows x heads threads, each inside both pairs of buffers (checked above).
        unsafe { l.launch(cfg(&p)) }.map_err(err("lse_merge_f32"))?;
        Ok(())
    }

    /// `pack_acc`: a device copy of the FP32 buffer's bytes into the BF16-sized wire.
    pub(super) fn pack_now(&self, acc: &DevMat<f32>, wire: &mut DevMat<u16>) -> Result<()> {
        checks::packed(acc, wire, acc.rows())?;
        wire.set_rows(acc.rows());
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the first n FP32 values are 2n u16 halves of the same bytes, all initialised.
        let from = unsafe { acc.data.transmute::<u16>(2 * n) }.ok_or_else(|| anyhow::anyhow!("pack_acc: view of {n} values"))?;
        self.stream().memcpy_dtod(&from, &mut wire.data.slice_mut(..2 * n)).map_err(err("pack_acc"))?;
        Ok(())
    }

    /// `unpack_acc`: the reverse copy.
    pub(super) fn unpack_now(&self, wire: &DevMat<u16>, acc: &mut DevMat<f32>) -> Result<()> {
        checks::packed(acc, wire, wire.rows())?;
        acc.set_rows(wire.rows());
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        // SAFETY: as pack_acc's, the other way: 2n u16 halves are the bytes of n FP32 values.
        let mut to = unsafe { acc.data.transmute_mut::<u16>(2 * n) }.ok_or_else(|| anyhow::anyhow!("unpack_acc: view of {n} values"))?;
        self.stream().memcpy_dtod(&wire.data.slice(..2 * n), &mut to).map_err(err("unpack_acc"))?;
        Ok(())
    }

    /// `copy_rows` queued on `stream` (the compute stream, or a transfer's).
    pub fn copy_rows_on(
        &self,
        stream: &Arc<CudaStream>,
        src: &DevMat<u16>,
        src_row0: usize,
        dst: &mut DevMat<u16>,
        dst_row0: usize,
        rows: usize,
    ) -> Result<()> {
        ensure!(src.cols == dst.cols && src_row0 + rows <= src.rows && dst_row0 + rows <= dst.rows, "copy_rows: outside the buffers");
        if rows == 0 {
            return Ok(());
        }
        let c = src.cols;
        let from = src.data.slice(src_row0 * c..(src_row0 + rows) * c);
        let mut to = dst.data.slice_mut(dst_row0 * c..(dst_row0 + rows) * c);
        stream.memcpy_dtod(&from, &mut to).map_err(err("copy_rows"))?;
        Ok(())
    }

    pub(super) fn copy_block_now(&self, src: &DevMat<u16>, dst: &mut DevMat<u16>, c: BlockCopy) -> Result<()> {
        c.check(src, dst)?;
        let Some(p) = copy_block(src.cols(), dst.cols(), c)? else { return Ok(()) };
        let (before_dst, after_dst) = p.scalars.values.split_at(2);
        let mut l = self.stream().launch_builder(self.f("copy_block_bf16")?);
        l.arg(&src.data);
        push_scalars(&mut l, before_dst);
        l.arg(&mut dst.data);
        push_scalars(&mut l, after_dst);
        // SAFETY: the block lies inside both buffers' rows in use (checked above).
        unsafe { l.launch(cfg(&p)) }.map_err(err("copy_block_bf16"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::declared_scalars;

    #[test]
    fn each_launcher_pushes_as_many_scalars_as_its_kernel_declares() {
        let region = Region::rows(7, 64, 0, 10);
        let span = Span { row0: 0, len: 10, pos0: 0 };
        let heads = Heads { heads: 4, kv_heads: 4, head_dim: 16 };
        let c = BlockCopy { src_row0: 0, src_col0: 0, dst_row0: 0, dst_col0: 0, rows: 2, cols: 3 };
        for (kernel, n) in [
            ("generate_bf16", generate(64, 0, &region, 1, Init::Uniform).unwrap().scalars.values.len()),
            ("rms_norm_bf16", rms_norm(10, 64).unwrap().unwrap().scalars.values.len()),
            ("rope_bf16", rope(64, heads, span, 1, false).unwrap().unwrap().scalars.values.len()),
            ("gelu_bf16", over_elements("gelu_bf16", 10).unwrap().unwrap().scalars.values.len()),
            ("add_bf16", over_elements("add_bf16", 10).unwrap().unwrap().scalars.values.len()),
            ("f32_to_bf16", over_elements("f32_to_bf16", 10).unwrap().unwrap().scalars.values.len()),
            ("fill_f32", over_elements("fill_f32", 10).unwrap().unwrap().scalars.values.len() + 1),
            ("swiglu_bf16", swiglu(10, 8).unwrap().unwrap().scalars.values.len()),
            ("copy_block_bf16", copy_block(8, 8, c).unwrap().unwrap().scalars.values.len()),
            ("lse_merge_f32", lse_merge(3, 2, 4, 5).unwrap().unwrap().scalars.values.len()),
        ] {
            assert_eq!(n, declared_scalars(kernel), "{kernel}");
        }
        // Nothing to do is no launch.
        assert!(rms_norm(0, 64).unwrap().is_none() && swiglu(0, 8).unwrap().is_none() && over_elements("add_bf16", 0).unwrap().is_none());
    }

    #[test]
    fn each_elementwise_launcher_refuses_what_its_kernel_cannot_take() {
        let big = 1usize << 31;
        let e = generate(64, big, &Region::rows(7, 64, 0, 1), 1, Init::Uniform).unwrap_err().to_string();
        assert!(e.contains("generate_bf16: dst_row0 = 2147483648 exceeds the kernel's int argument"), "{e}");
        let e = rms_norm(10, big).unwrap_err().to_string();
        assert!(e.contains("rms_norm_bf16: cols = 2147483648"), "{e}");
        let heads = Heads { heads: 4, kv_heads: 4, head_dim: 16 };
        let e = rope(64, heads, Span { row0: big - 4, len: 8, pos0: 0 }, 1, false).unwrap_err().to_string();
        assert!(e.contains("rope_bf16: the span's end = 2147483652"), "{e}");
        let odd = Heads { heads: 1, kv_heads: 1, head_dim: 15 };
        assert!(rope(64, odd, Span { row0: 0, len: 8, pos0: 0 }, 1, true).unwrap_err().to_string().contains("head dim 15 is odd"));
        let e = swiglu(2, big).unwrap_err().to_string();
        assert!(e.contains("swiglu_bf16: f = 2147483648"), "{e}");
        let c = BlockCopy { src_row0: 0, src_col0: 0, dst_row0: 0, dst_col0: 0, rows: 1, cols: 1 };
        assert!(copy_block(big, 8, c).unwrap_err().to_string().contains("copy_block_bf16: source width = 2147483648"));
        // More elements than one launch's grid holds.
        let e = over_elements("gelu_bf16", usize::MAX / 2).unwrap_err().to_string();
        assert!(e.contains("gelu_bf16") && e.contains("exceed one launch"), "{e}");
    }
}
