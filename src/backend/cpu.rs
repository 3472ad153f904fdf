//! The CPU backend: BF16 host buffers, FP32 arithmetic, matrix products by `matrixmultiply`.
//! It is the reference every GPU kernel is checked against, so it favours plain, exact-to-spec
//! code over speed; attention still runs its inner products as GEMMs over query tiles so that
//! CPU runs of realistic lengths finish.

use super::Tracker;
use super::{checks, lse_merge, Backend, BlockCopy, Heads, Instruments, Matrix, MemoryStats, Span};
use crate::generator::{Init, Region};
use anyhow::{ensure, Result};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use std::sync::Arc;

/// A row-major host matrix with room for `capacity_rows` rows; its bytes count towards the
/// backend's memory high-water mark while it lives.
#[derive(Debug)]
pub struct HostMat<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    tracker: Option<Arc<Tracker>>,
}

impl<T: Copy + Default> HostMat<T> {
    fn new(rows: usize, cols: usize, tracker: Option<Arc<Tracker>>) -> Self {
        let m = HostMat { data: vec![T::default(); rows * cols], rows, cols, tracker };
        if let Some(t) = &m.tracker {
            t.add(m.bytes());
        }
        m
    }
}

impl<T: Copy> HostMat<T> {
    /// Host values into the rows in use (exactly as many as they hold).
    fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        ensure!(data.len() == self.len(), "upload: {} values into a buffer of {}", data.len(), self.len());
        self.as_mut_slice().copy_from_slice(data);
        Ok(())
    }
}

impl<T> HostMat<T> {
    fn bytes(&self) -> u64 {
        (self.data.len() * std::mem::size_of::<T>()) as u64
    }
}

impl<T: Clone> Clone for HostMat<T> {
    fn clone(&self) -> Self {
        if let Some(t) = &self.tracker {
            t.add(self.bytes());
        }
        HostMat { data: self.data.clone(), rows: self.rows, cols: self.cols, tracker: self.tracker.clone() }
    }
}

impl<T> Drop for HostMat<T> {
    fn drop(&mut self) {
        if let Some(t) = &self.tracker {
            t.sub(self.bytes());
        }
    }
}

impl<T> HostMat<T> {
    /// The rows in use.
    pub fn as_slice(&self) -> &[T] {
        &self.data[..self.rows * self.cols]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data[..self.rows * self.cols]
    }

    fn row(&self, r: usize) -> &[T] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

impl<T> Matrix for HostMat<T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn capacity_rows(&self) -> usize {
        self.data.len().checked_div(self.cols).unwrap_or(self.rows)
    }
    fn set_rows(&mut self, rows: usize) {
        assert!(rows <= self.capacity_rows(), "set_rows {rows} beyond capacity {}", self.capacity_rows());
        self.rows = rows;
    }
}

/// Queries per attention tile: bounds the FP32 score tile to QUERY_TILE x keys.
const QUERY_TILE: usize = 64;

#[derive(Default)]
pub struct CpuBackend {
    memory: Arc<Tracker>,
    pub(super) flops: super::FlopCounter,
    pub(super) clock: super::OpClock,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend::default()
    }

    fn matmul_now(&self, x: &HostMat<bf16>, w: &HostMat<bf16>, out: &mut HostMat<bf16>) -> Result<()> {
        checks::matmul(x, w, out)?;
        let (m, k, n) = (x.rows, x.cols, w.cols);
        out.set_rows(m);
        self.flops.gemm(m, k, n);
        let (xf, wf) = (to_f32(x.as_slice()), to_f32(w.as_slice()));
        let mut c = vec![0.0f32; m * n];
        sgemm(m, k, n, &xf, &wf, &mut c);
        out.as_mut_slice().convert_from_f32_slice(&c);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_now(
        &self,
        q: &HostMat<bf16>,
        kv: &HostMat<bf16>,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        o: &mut HostMat<f32>,
        lse: &mut HostMat<f32>,
    ) -> Result<()> {
        checks::attention(q, kv, heads, qs, ks, o, lse)?;
        let (hd, width, kvw) = (heads.head_dim, heads.width(), heads.kv_width());
        self.flops.attention(heads, qs, ks, causal);
        // Causal: query at position p sees keys at positions <= p; how many of this block's keys that is.
        let visible = |qpos: usize| -> usize {
            if causal {
                (qpos + 1).saturating_sub(ks.pos0).min(ks.len)
            } else {
                ks.len
            }
        };
        if qs.len == 0 || visible(qs.pos0 + qs.len - 1) == 0 {
            return Ok(()); // fully masked: nothing to add
        }
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let kv_rows = to_f32(&kv.data[ks.row0 * kv.cols..(ks.row0 + ks.len) * kv.cols]);
        let mut q_tile = vec![0.0f32; QUERY_TILE * width];
        let mut scores = vec![0.0f32; QUERY_TILE * ks.len];
        let mut out_tile = vec![0.0f32; QUERY_TILE * hd];
        for t0 in (0..qs.len).step_by(QUERY_TILE) {
            let tq = QUERY_TILE.min(qs.len - t0);
            let first_pos = qs.pos0 + t0;
            // Keys past the tile's last query are masked for every query in it: leave them out of the GEMMs.
            let kn = visible(first_pos + tq - 1);
            if kn == 0 {
                continue;
            }
            let row0 = qs.row0 + t0;
            q.data[row0 * width..(row0 + tq) * width].convert_to_f32_slice(&mut q_tile[..tq * width]);
            for h in 0..heads.heads {
                let g = heads.kv_head(h);
                let (qh, kh, vh) = (&q_tile[h * hd..], &kv_rows[g * hd..], &kv_rows[kvw + g * hd..]);
                // scores[tq, kn] = scale q_h k_g^T
                gemm((tq, hd, kn), scale, qh, (width, 1), kh, (1, 2 * kvw), &mut scores, kn, false);
                let mut tile_lse = [f32::NEG_INFINITY; QUERY_TILE];
                for i in 0..tq {
                    let row = &mut scores[i * kn..(i + 1) * kn];
                    let n = visible(first_pos + i).min(kn);
                    let m = row[..n].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    if n == 0 {
                        row.fill(0.0);
                        continue;
                    }
                    let mut sum = 0.0f32;
                    for s in row[..n].iter_mut() {
                        *s = (*s - m).exp();
                        sum += *s;
                    }
                    row[n..].fill(0.0);
                    let inv = 1.0 / sum;
                    row[..n].iter_mut().for_each(|s| *s *= inv);
                    tile_lse[i] = m + sum.ln();
                }
                // out_tile[tq, hd] = p v_h
                gemm((tq, kn, hd), 1.0, &scores, (kn, 1), vh, (2 * kvw, 1), &mut out_tile, hd, false);
                for i in 0..tq {
                    let r = row0 + i;
                    lse_merge(
                        &mut o.data[r * width + h * hd..r * width + (h + 1) * hd],
                        &mut lse.data[r * heads.heads + h],
                        &out_tile[i * hd..(i + 1) * hd],
                        tile_lse[i],
                    );
                }
            }
        }
        Ok(())
    }
}

/// "cpu: <model name> x<logical cores>" from /proc/cpuinfo.
fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("cpu: {} x{cores}", model.unwrap_or_else(|| std::env::consts::ARCH.to_string()))
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// c[m, n] = a[m, k] b[k, n] in FP32, all row-major and contiguous.
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm((m, k, n), 1.0, a, (k, 1), b, (n, 1), c, n, false);
}

/// c[m, n] (+)= alpha a b with (row, column) strides for a and b, c row-major `ldc` wide;
/// `accumulate` adds to c instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || a.len() > (m - 1) * sa.0 + (k - 1) * sa.1);
    assert!(k == 0 || b.len() > (k - 1) * sb.0 + (n - 1) * sb.1);
    assert!(c.len() >= (m - 1) * ldc + n);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the asserts above keep every element matrixmultiply touches inside the slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            sa.0 as isize,
            sa.1 as isize,
            b.as_ptr(),
            sb.0 as isize,
            sb.1 as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

pub(super) fn to_f32(x: &[bf16]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    x.convert_to_f32_slice(&mut out);
    out
}

/// GELU, tanh form, in FP32.
pub fn gelu_f32(z: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * z * (1.0 + (SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)).tanh())
}

/// silu(z) = z / (1 + e^-z), in FP32: SwiGLU's gate. CPU twin of swiglu_bf16.
pub fn silu_f32(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// RoPE's (cos, sin) for position `pos` and pair `i` of a head of `head_dim`; the angle in FP64
/// because at 100K positions an FP32 angle is off by milliradians.
pub fn rope_angle(pos: usize, i: usize, head_dim: usize) -> (f64, f64) {
    let angle = pos as f64 * 10000f64.powf(-2.0 * i as f64 / head_dim as f64);
    (angle.cos(), angle.sin())
}

impl Instruments for CpuBackend {
    fn device_name(&self) -> String {
        cpu_name()
    }

    /// Unknown: a CPU's BF16 peak depends on vector units this backend does not use; no MFU.
    fn peak_flops(&self) -> Option<f64> {
        None
    }

    fn counted_flops(&self) -> (f64, f64) {
        self.flops.total()
    }

    fn set_op_timing(&self, on: bool) {
        self.clock.set(on);
    }

    fn take_op_seconds(&self) -> Result<(f64, f64)> {
        Ok(self.clock.take())
    }

    fn reset_peak_memory(&self) {
        self.memory.reset_peak();
        // Linux resets VmHWM to the current RSS on "5"; where that is not allowed the peak
        // stays process-wide, which only overstates a later run.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    fn memory(&self) -> MemoryStats {
        MemoryStats { buffers_peak_bytes: self.memory.peak(), device_peak_bytes: peak_rss_bytes() }
    }

    fn memory_budget(&self, sharing: usize) -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024 / sharing.max(1) as u64)
    }
}

impl super::Storage for CpuBackend {
    type Act = HostMat<bf16>;
    type Acc = HostMat<f32>;
}

impl Backend for CpuBackend {
    fn alloc_act(&self, rows: usize, cols: usize) -> Result<Self::Act> {
        Ok(HostMat::new(rows, cols, Some(self.memory.clone())))
    }

    fn alloc_acc(&self, rows: usize, cols: usize) -> Result<Self::Acc> {
        Ok(HostMat::new(rows, cols, Some(self.memory.clone())))
    }

    fn fill(&self, out: &mut Self::Act, dst_row0: usize, region: &Region, seed: u64, init: Init) -> Result<()> {
        checks::fill(out, dst_row0, region)?;
        let cols = out.cols;
        region.generate_into(seed, init, &mut out.data[dst_row0 * cols..(dst_row0 + region.rows) * cols]);
        Ok(())
    }

    fn matmul(&self, x: &Self::Act, w: &Self::Act, out: &mut Self::Act) -> Result<()> {
        self.clock.time(true, || self.matmul_now(x, w, out))
    }

    fn rms_norm(&self, x: &Self::Act, gain: &Self::Act, out: &mut Self::Act) -> Result<()> {
        checks::rms_norm(x, gain, out)?;
        out.set_rows(x.rows);
        let d = x.cols;
        let g = to_f32(gain.row(0));
        let mut xf = vec![0.0f32; d];
        for r in 0..x.rows {
            x.row(r).convert_to_f32_slice(&mut xf);
            let ms = xf.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            for (o, (v, gv)) in out.data[r * d..(r + 1) * d].iter_mut().zip(xf.iter().zip(&g)) {
                *o = bf16::from_f32(v * inv * gv);
            }
        }
        Ok(())
    }

    fn rope(&self, x: &mut Self::Act, heads: Heads, span: Span, stride: usize) -> Result<()> {
        checks::rope(x, heads, span)?;
        let half_dim = heads.head_dim / 2;
        let cols = x.cols;
        for r in 0..span.len {
            let pos = span.pos0 + r * stride;
            let table: Vec<(f32, f32)> =
                (0..half_dim).map(|i| rope_angle(pos, i, heads.head_dim)).map(|(c, s)| (c as f32, s as f32)).collect();
            let row = &mut x.data[(span.row0 + r) * cols..(span.row0 + r + 1) * cols];
            for h in 0..heads.heads {
                let head = &mut row[h * heads.head_dim..(h + 1) * heads.head_dim];
                for (i, &(c, s)) in table.iter().enumerate() {
                    let (a, b) = (head[i].to_f32(), head[i + half_dim].to_f32());
                    head[i] = bf16::from_f32(a * c - b * s);
                    head[i + half_dim] = bf16::from_f32(a * s + b * c);
                }
            }
        }
        Ok(())
    }

    fn gelu(&self, x: &mut Self::Act) -> Result<()> {
        for v in x.as_mut_slice() {
            *v = bf16::from_f32(gelu_f32(v.to_f32()));
        }
        Ok(())
    }

    fn swiglu(&self, gate_up: &Self::Act, out: &mut Self::Act) -> Result<()> {
        let f = out.cols;
        checks::swiglu(gate_up, out)?;
        out.set_rows(gate_up.rows);
        for r in 0..gate_up.rows {
            let (gu, o) = (&gate_up.data[r * 2 * f..(r + 1) * 2 * f], &mut out.data[r * f..(r + 1) * f]);
            for (j, y) in o.iter_mut().enumerate() {
                *y = bf16::from_f32(silu_f32(gu[j].to_f32()) * gu[f + j].to_f32());
            }
        }
        Ok(())
    }

    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()> {
        checks::add(x, y)?;
        for (a, b) in x.as_mut_slice().iter_mut().zip(y.as_slice()) {
            *a = bf16::from_f32(a.to_f32() + b.to_f32());
        }
        Ok(())
    }

    fn attention_reset(&self, o: &mut Self::Acc, lse: &mut Self::Acc) -> Result<()> {
        o.as_mut_slice().fill(0.0);
        lse.as_mut_slice().fill(f32::NEG_INFINITY);
        Ok(())
    }

    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
    ) -> Result<()> {
        self.clock.time(false, || self.attention_now(q, kv, heads, qs, ks, causal, o, lse))
    }

    fn attention_store(&self, o: &Self::Acc, out: &mut Self::Act) -> Result<()> {
        checks::attention_store(o, out)?;
        out.set_rows(o.rows);
        out.as_mut_slice().convert_from_f32_slice(o.as_slice());
        Ok(())
    }

    fn attention_decode(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        span: super::DecodeSpan,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
        _scratch: &mut Self::Acc,
    ) -> Result<()> {
        for i in 0..span.count {
            let qs = Span { row0: span.q_row0 + i, len: 1, pos0: 0 };
            let ks = Span { row0: (span.seq0 + i) * span.stride, len: span.len, pos0: 0 };
            self.attention(q, kv, heads, qs, ks, false, o, lse)?;
        }
        Ok(())
    }

    fn attention_merge(&self, o: &mut Self::Acc, lse: &mut Self::Acc, o_in: &Self::Acc, lse_in: &Self::Acc, in_row0: usize) -> Result<()> {
        checks::attention_merge(o, lse, o_in, lse_in, in_row0)?;
        let (heads, width) = (lse.cols, o.cols);
        let hd = width / heads;
        for r in 0..o.rows {
            for h in 0..heads {
                let src = &o_in.data[(in_row0 + r) * width + h * hd..][..hd];
                let l_new = lse_in.data[(in_row0 + r) * heads + h];
                super::lse_merge(&mut o.data[r * width + h * hd..][..hd], &mut lse.data[r * heads + h], src, l_new);
            }
        }
        Ok(())
    }

    fn pack_acc(&self, acc: &Self::Acc, wire: &mut Self::Act) -> Result<()> {
        checks::packed(acc, wire, acc.rows)?;
        wire.set_rows(acc.rows);
        for (pair, v) in wire.as_mut_slice().chunks_exact_mut(2).zip(acc.as_slice()) {
            let bits = v.to_bits();
            pair[0] = half::bf16::from_bits(bits as u16);
            pair[1] = half::bf16::from_bits((bits >> 16) as u16);
        }
        Ok(())
    }

    fn unpack_acc(&self, wire: &Self::Act, acc: &mut Self::Acc) -> Result<()> {
        checks::packed(acc, wire, wire.rows)?;
        acc.set_rows(wire.rows);
        for (v, pair) in acc.as_mut_slice().iter_mut().zip(wire.as_slice().chunks_exact(2)) {
            *v = f32::from_bits(pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16);
        }
        Ok(())
    }

    fn copy_rows(&self, src: &Self::Act, src_row0: usize, dst: &mut Self::Act, dst_row0: usize, rows: usize) -> Result<()> {
        checks::copy_rows(src, src_row0, dst, dst_row0, rows)?;
        let c = src.cols;
        dst.data[dst_row0 * c..(dst_row0 + rows) * c].copy_from_slice(&src.data[src_row0 * c..(src_row0 + rows) * c]);
        Ok(())
    }

    fn copy_block(&self, src: &Self::Act, dst: &mut Self::Act, c: BlockCopy) -> Result<()> {
        c.check(src, dst)?;
        for r in 0..c.rows {
            let from = (c.src_row0 + r) * src.cols + c.src_col0;
            let to = (c.dst_row0 + r) * dst.cols + c.dst_col0;
            dst.data[to..to + c.cols].copy_from_slice(&src.data[from..from + c.cols]);
        }
        Ok(())
    }

    fn download(&self, x: &Self::Act) -> Result<Vec<bf16>> {
        Ok(x.as_slice().to_vec())
    }

    fn upload(&self, x: &mut Self::Act, data: &[bf16]) -> Result<()> {
        x.copy_from_host(data)
    }

    fn download_acc(&self, x: &Self::Acc) -> Result<Vec<f32>> {
        Ok(x.as_slice().to_vec())
    }

    fn upload_acc(&self, x: &mut Self::Acc, data: &[f32]) -> Result<()> {
        x.copy_from_host(data)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::uniform;

    fn act_from(be: &CpuBackend, rows: usize, cols: usize, f: impl Fn(usize) -> f32) -> HostMat<bf16> {
        let mut a = be.alloc_act(rows, cols).unwrap();
        for (i, v) in a.as_mut_slice().iter_mut().enumerate() {
            *v = bf16::from_f32(f(i));
        }
        a
    }

    /// FP64 softmax attention of one head, causal by the given positions: [nq, hd].
    #[allow(clippy::too_many_arguments)]
    fn attention_f64(q: &[f64], k: &[f64], v: &[f64], qpos: &[usize], kpos: &[usize], hd: usize, causal: bool) -> Vec<f64> {
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0.0; qpos.len() * hd];
        for (i, &p) in qpos.iter().enumerate() {
            let s: Vec<f64> =
                kpos.iter()
                    .enumerate()
                    .map(|(j, &kp)| {
                        if causal && kp > p {
                            f64::NEG_INFINITY
                        } else {
                            (0..hd).map(|c| q[i * hd + c] * k[j * hd + c]).sum::<f64>() * scale
                        }
                    })
                    .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (j, x) in s.iter().enumerate() {
                for c in 0..hd {
                    out[i * hd + c] += (x - m).exp() / z * v[j * hd + c];
                }
            }
        }
        out
    }

    #[test]
    fn attention_split_into_blocks_matches_fp64_softmax() {
        // One sequence of 150 tokens, 2 heads of 8; keys split into blocks of awkward sizes at
        // shuffled offsets, as a ring delivers them; sharp scores (x4) so masking errors show.
        let be = CpuBackend::new();
        let heads = Heads::mha(2, 8);
        let (n, w) = (150usize, heads.width());
        let q = act_from(&be, n, w, |i| 4.0 * uniform(3, 1, i as u64));
        let kv = act_from(&be, n, 2 * w, |i| 4.0 * uniform(3, 2, i as u64));
        for causal in [true, false] {
            let mut o = be.alloc_acc(n, w).unwrap();
            let mut lse = be.alloc_acc(n, heads.heads).unwrap();
            be.attention_reset(&mut o, &mut lse).unwrap();
            for (start, len) in [(97, 53), (0, 1), (1, 70), (71, 26)] {
                let ks = Span { row0: start, len, pos0: start };
                be.attention(&q, &kv, heads, Span { row0: 0, len: n, pos0: 0 }, ks, causal, &mut o, &mut lse).unwrap();
            }
            let pos: Vec<usize> = (0..n).collect();
            let (mut max_err, mut max_ref) = (0.0f64, 0.0f64);
            for h in 0..heads.heads {
                let col = |m: &HostMat<bf16>, off: usize| -> Vec<f64> {
                    (0..n).flat_map(|r| (0..8).map(move |c| (r, c))).map(|(r, c)| m.row(r)[off + h * 8 + c].to_f64()).collect()
                };
                let want = attention_f64(&col(&q, 0), &col(&kv, 0), &col(&kv, w), &pos, &pos, 8, causal);
                for r in 0..n {
                    for c in 0..8 {
                        let got = o.row(r)[h * 8 + c] as f64;
                        max_err = max_err.max((got - want[r * 8 + c]).abs());
                        max_ref = max_ref.max(want[r * 8 + c].abs());
                    }
                }
            }
            // FP32 arithmetic on exact BF16 inputs: errors of a few FP32 ulps of the scores' scale.
            println!("causal {causal}: max abs error {max_err:.3e} (outputs up to {max_ref:.2})");
            assert!(max_err < 1e-4, "max abs error {max_err}");
        }
    }

    #[test]
    fn a_query_block_before_every_key_is_skipped_under_the_mask() {
        let be = CpuBackend::new();
        let heads = Heads::mha(1, 4);
        let q = act_from(&be, 3, 4, |i| i as f32);
        let kv = act_from(&be, 3, 8, |i| i as f32);
        let mut o = be.alloc_acc(3, 4).unwrap();
        let mut lse = be.alloc_acc(3, 1).unwrap();
        be.attention_reset(&mut o, &mut lse).unwrap();
        be.attention(&q, &kv, heads, Span { row0: 0, len: 3, pos0: 10 }, Span { row0: 0, len: 3, pos0: 13 }, true, &mut o, &mut lse)
            .unwrap();
        assert!(lse.as_slice().iter().all(|&l| l == f32::NEG_INFINITY));
        assert!(o.as_slice().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rope_rotates_by_global_position() {
        let be = CpuBackend::new();
        let heads = Heads::mha(2, 4);
        let x = act_from(&be, 3, 8, |i| uniform(9, 9, i as u64));
        let mut y = x.clone();
        // Rows hold positions 1000, 1001, 1002 (a late zigzag chunk).
        be.rope(&mut y, heads, Span { row0: 0, len: 3, pos0: 1000 }, 1).unwrap();
        for r in 0..3 {
            for h in 0..2 {
                for i in 0..2 {
                    let (c, s) = rope_angle(1000 + r, i, 4);
                    let (a, b) = (x.row(r)[h * 4 + i].to_f64(), x.row(r)[h * 4 + i + 2].to_f64());
                    let (want_a, want_b) = (a * c - b * s, a * s + b * c);
                    let (got_a, got_b) = (y.row(r)[h * 4 + i].to_f64(), y.row(r)[h * 4 + i + 2].to_f64());
                    // One BF16 rounding of a value below 1: within 2^-8.
                    assert!((got_a - want_a).abs() <= 2f64.powi(-8) && (got_b - want_b).abs() <= 2f64.powi(-8));
                }
            }
        }
        // Position 0 is the identity.
        let mut z = x.clone();
        be.rope(&mut z, heads, Span { row0: 0, len: 1, pos0: 0 }, 1).unwrap();
        assert_eq!(z.row(0), x.row(0));
    }

    #[test]
    fn buffers_count_towards_the_high_water_mark_while_they_live() {
        let be = CpuBackend::new();
        let a = be.alloc_act(10, 10).unwrap(); // 200 B
        {
            let _b = be.alloc_acc(10, 10).unwrap(); // 400 B
            let _c = a.clone(); // 200 B
        }
        assert_eq!(be.memory().buffers_peak_bytes, 800);
        be.reset_peak_memory();
        assert_eq!(be.memory().buffers_peak_bytes, 200);
        drop(a);
        let _d = be.alloc_act(1, 1).unwrap();
        assert_eq!(be.memory().buffers_peak_bytes, 200);
        assert!(be.memory().device_peak_bytes.unwrap() > 0);
    }

    #[test]
    fn matmul_matches_fp64_on_awkward_sizes() {
        let be = CpuBackend::new();
        let (m, k, n) = (113, 37, 29);
        let x = act_from(&be, m, k, |i| uniform(1, 1, i as u64));
        let w = act_from(&be, k, n, |i| uniform(1, 2, i as u64));
        let mut out = be.alloc_act(m, n).unwrap();
        be.matmul(&x, &w, &mut out).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: f64 = (0..k).map(|j| x.row(r)[j].to_f64() * w.row(j)[c].to_f64()).sum();
                let got = out.row(r)[c].to_f64();
                // One BF16 rounding of the FP32 sum.
                assert!((got - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-6, "[{r},{c}] {got} vs {want}");
            }
        }
    }
}
