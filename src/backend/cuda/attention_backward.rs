//! The attention backward kernels' launchers (kernels/flash_backward.cu for head dims 64 and 128,
//! kernels/attention_backward.cu for the others): each one's grid and checked arguments (pure,
//! tested without a GPU) and the dispatch the backend's `attention_backward` runs.

use super::attention::{query_blocks, span_ints};
use super::device::{err, push_scalars, CudaBackend, DevMat};
use super::launch::{self, check_grid_heads, Planned, Scalars, ATTENTION_WARPS, MAX_GRID_X, MAX_HEAD_DIM};
use crate::backend::{checks, Heads, Span};
use anyhow::{bail, ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The scalars both families take after their head counts: the spans, the mask and the scale.
fn spans(s: Scalars, qs: Span, ks: Span, causal: bool, scale: f32) -> Result<Scalars> {
    Ok(span_ints(span_ints(s, "query", qs, true)?, "key", ks, true)?.code(i32::from(causal)).float(scale))
}

/// The plain pair: `attention_backward_dq_bf16` (one warp per query row and head) and
/// `attention_backward_dkv_bf16` (one warp per key row and K/V head), same arguments.
pub fn plain(heads: Heads, qs: Span, ks: Span, causal: bool, scale: f32) -> Result<[(&'static str, Planned); 2]> {
    const DQ: &str = "attention_backward_dq_bf16";
    const DKV: &str = "attention_backward_dkv_bf16";
    ensure!(heads.head_dim <= MAX_HEAD_DIM, "{DQ}: head dim {} above the kernel's {MAX_HEAD_DIM}", heads.head_dim);
    check_grid_heads(DQ, heads.heads)?;
    query_blocks(DQ, qs.len, ATTENTION_WARPS as usize)?;
    query_blocks(DKV, ks.len, ATTENTION_WARPS as usize)?;
    let s = |k: &'static str| -> Result<Scalars> {
        let s = Scalars::new(k).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?.int("head dim", heads.head_dim)?;
        spans(s, qs, ks, causal, scale)
    };
    let geometry = |rows: usize, h: usize| launch::Geometry {
        grid: (rows.div_ceil(ATTENTION_WARPS as usize).max(1) as u32, h as u32, 1),
        block: (32 * ATTENTION_WARPS, 1, 1),
    };
    Ok([
        (DQ, Planned { geometry: geometry(qs.len, heads.heads), scalars: s(DQ)? }),
        (DKV, Planned { geometry: geometry(ks.len, heads.kv_heads), scalars: s(DKV)? }),
    ])
}

/// The mma.sync flash backward kernel: head dims 64 and 128; its dynamic shared memory.
pub fn flash(heads: Heads, qs: Span, ks: Span, causal: bool, scale: f32) -> Result<(&'static str, Planned, u32)> {
    let Some(kernel) = launch::flash_backward_kernel(heads.head_dim) else {
        bail!("flash_backward: head dim {}: the kernel is built for head dims 64 and 128", heads.head_dim);
    };
    check_grid_heads(kernel, heads.kv_heads)?;
    if (ks.len as u64).div_ceil(launch::FLASH_BACKWARD_KEYS as u64) > MAX_GRID_X {
        bail!("{kernel}: {} keys exceed one launch", ks.len);
    }
    let s = Scalars::new(kernel).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?;
    let planned = Planned { geometry: launch::flash_backward(ks.len, heads.kv_heads), scalars: spans(s, qs, ks, causal, scale)? };
    Ok((kernel, planned, launch::flash_backward_shared_bytes(heads.head_dim)))
}

impl CudaBackend {
    /// The backend's `attention_backward`: the flash kernel where it has the head dim (unless
    /// `--kernel plain` asks for the plain kernels), else the plain pair, on the compute stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward_now(
        &self,
        (q, kv): (&DevMat<u16>, &DevMat<u16>),
        heads: Heads,
        (qs, ks): (Span, Span),
        causal: bool,
        (d_o, lse, delta): (&DevMat<u16>, &DevMat<f32>, &DevMat<f32>),
        dq: &mut DevMat<f32>,
        dkv: &mut DevMat<f32>,
    ) -> Result<()> {
        checks::attention_backward(q, kv, heads, qs, ks, d_o, lse, delta, dq, dkv)?;
        if qs.len == 0 || ks.len == 0 {
            return Ok(());
        }
        // The model's count: the backward as twice the forward's FLOPs (docs/design.md, "Training").
        self.count_attention(heads, qs, ks, causal);
        self.count_attention(heads, qs, ks, causal);
        let scale = (1.0 / (heads.head_dim as f64).sqrt()) as f32;
        let launches: Vec<(&'static str, Planned, u32)> = match self.attention_kernel().backward_flash(heads.head_dim) {
            Some(_) => vec![flash(heads, qs, ks, causal, scale)?],
            None => plain(heads, qs, ks, causal, scale)?.into_iter().map(|(k, p)| (k, p, 0)).collect(),
        };
        for (kernel, p, shared) in launches {
            let mut l = self.stream().launch_builder(self.f(kernel)?);
            l.arg(&q.data).arg(&kv.data).arg(&d_o.data).arg(&lse.data).arg(&delta.data).arg(&mut dq.data).arg(&mut dkv.data);
            push_scalars(&mut l, &p.scalars.values);
            let cfg = LaunchConfig { grid_dim: p.geometry.grid, block_dim: p.geometry.block, shared_mem_bytes: shared };
            // SAFETY: arguments in the kernels' signature order with their types; the grid covers
            // the key (flash, dkv) or query (dq) rows of the spans and the heads; every row and
            // column read or added to lies inside its buffer (checked above); the flash kernel's
            // dynamic shared memory is its layout's (FbSmem), allowed by the attribute set at load.
            unsafe { l.launch(cfg) }.map_err(err(kernel))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::declared_scalars;

    fn span(row0: usize, len: usize) -> Span {
        Span { row0, len, pos0: row0 }
    }

    #[test]
    fn each_backward_launcher_pushes_its_signature_and_covers_its_rows() {
        let gqa = Heads { heads: 32, kv_heads: 8, head_dim: 128 };
        let [(dq, a), (dkv, b)] = plain(Heads { head_dim: 80, ..gqa }, span(0, 6250), span(100, 70), true, 0.5).unwrap();
        assert_eq!((dq, dkv), ("attention_backward_dq_bf16", "attention_backward_dkv_bf16"));
        // heads, kv heads, head dim, q (row0, len, pos0), k (row0, len, pos0), causal, scale.
        assert_eq!((a.scalars.values.len(), b.scalars.values.len()), (11, 11));
        assert_eq!((a.geometry.grid, b.geometry.grid), ((1563, 32, 1), (18, 8, 1)));
        let (k, f, shared) = flash(gqa, span(0, 100), span(0, 130), true, 0.5).unwrap();
        assert_eq!((k, f.scalars.values.len(), shared), ("flash_backward_d128_bf16", 10, 79_360));
        // The entry points are macro-made: the shared body's signature is what they forward to.
        assert_eq!(declared_scalars("flash_backward"), 10);
        assert_eq!(f.geometry.grid, (3, 8, 1));
    }

    #[test]
    fn the_backward_launchers_refuse_what_their_kernels_cannot_take() {
        let hd96 = Heads { heads: 4, kv_heads: 4, head_dim: 96 };
        assert!(flash(hd96, span(0, 10), span(0, 10), true, 0.5).unwrap_err().to_string().contains("head dim 96"));
        let hd512 = Heads { heads: 1, kv_heads: 1, head_dim: 512 };
        assert!(plain(hd512, span(0, 10), span(0, 10), true, 0.5).unwrap_err().to_string().contains("head dim 512 above"));
        let e = plain(hd96, span(0, 10), span(0, 1 << 31), true, 0.5).unwrap_err().to_string();
        assert!(e.contains("key length = 2147483648"), "{e}");
    }
}
