//! The decode attention kernels' launchers (kernels/decode_attention.cu): which calls the split
//! kernel takes, how many parts each sequence's cache is split into, each launch's grid and
//! checked arguments (pure, tested without a GPU), and the backend's `attention_decode`.

use super::device::{err, push_scalars, CudaBackend, DevMat};
use super::launch::{check_grid_heads, Geometry, Planned, Scalars, MAX_GRID_X};
use crate::backend::{checks, decode_splits, DecodeSpan, Heads, Span};
use anyhow::{ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The split kernel's limits (kernels/decode_attention.cu): threads per block, query heads per
/// K/V head, head dim (a multiple of 8, for its 16-byte loads).
pub const DEC_THREADS: u32 = 128;
pub const DEC_MAX_GROUP: usize = 16;
pub const DEC_MAX_DIM: usize = 128;

/// Whether the split kernel takes these heads; the others go row by row through `attention`.
pub fn takes(heads: Heads) -> bool {
    heads.head_dim <= DEC_MAX_DIM && heads.head_dim % 8 == 0 && heads.heads / heads.kv_heads <= DEC_MAX_GROUP
}

pub use crate::backend::decode_twin::chunk;

/// `decode_split_bf16`: grid (splits, K/V heads, sequences).
pub fn split(heads: Heads, span: DecodeSpan, splits: usize, scale: f32) -> Result<Planned> {
    const K: &str = "decode_split_bf16";
    ensure!(
        takes(heads),
        "{K}: head dim {} or {} query heads per K/V head beyond the kernel",
        heads.head_dim,
        heads.heads / heads.kv_heads
    );
    check_grid_heads(K, heads.kv_heads)?;
    ensure!(span.count <= super::launch::MAX_GRID_Y, "{K}: {} sequences exceed the grid's z dimension", span.count);
    let s = Scalars::new(K).int("heads", heads.heads)?.int("K/V heads", heads.kv_heads)?.int("head dim", heads.head_dim)?;
    let s = s.int("query row0", span.q_row0)?.int("first sequence", span.seq0)?.int("cache rows per sequence", span.stride)?;
    let s = s.int("cache length", span.len)?.int("splits", splits)?.int("keys per split", chunk(span.len, splits))?.float(scale);
    // The kernel's int arithmetic: the last query row, the last sequence's first cache row.
    Scalars::new(K).int("the query rows' end", span.q_row0 + span.count)?.int("the sequences' end", span.seq0 + span.count)?;
    let geometry = Geometry { grid: (splits as u32, heads.kv_heads as u32, span.count as u32), block: (DEC_THREADS, 1, 1) };
    Ok(Planned { geometry, scalars: s })
}

/// `decode_combine_f32`: a block per (sequence, head), a thread per value of the head.
pub fn combine(heads: Heads, span: DecodeSpan, splits: usize) -> Result<Planned> {
    const K: &str = "decode_combine_f32";
    let n = span.count * heads.heads;
    ensure!(n as u64 <= MAX_GRID_X, "{K}: {n} (sequence, head) pairs exceed one launch");
    ensure!(heads.head_dim <= DEC_THREADS as usize, "{K}: head dim {} beyond its {DEC_THREADS} threads", heads.head_dim);
    let s = Scalars::new(K).int("heads", heads.heads)?.int("head dim", heads.head_dim)?.int("query row0", span.q_row0)?;
    let s = s.int("sequences", span.count)?.int("splits", splits)?;
    Ok(Planned { geometry: Geometry { grid: (n as u32, 1, 1), block: (DEC_THREADS, 1, 1) }, scalars: s })
}

fn cfg(g: Geometry) -> LaunchConfig {
    LaunchConfig { grid_dim: g.grid, block_dim: g.block, shared_mem_bytes: 0 }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_now(
        &self,
        q: &DevMat<u16>,
        kv: &DevMat<u16>,
        heads: Heads,
        span: DecodeSpan,
        o: &mut DevMat<f32>,
        lse: &mut DevMat<f32>,
        scratch: &mut DevMat<f32>,
    ) -> Result<()> {
        let splits = decode_splits(span.count, heads.kv_heads, span.len);
        checks::attention_decode(q, kv, heads, span, o, lse, scratch, splits)?;
        if span.count == 0 || span.len == 0 {
            return Ok(());
        }
        if !takes(heads) {
            for i in 0..span.count {
                let qs = Span { row0: span.q_row0 + i, len: 1, pos0: 0 };
                let ks = Span { row0: (span.seq0 + i) * span.stride, len: span.len, pos0: 0 };
                self.attention_now(q, kv, heads, qs, ks, false, o, lse)?;
            }
            return Ok(());
        }
        let scale = (1.0 / (heads.head_dim as f64).sqrt()) as f32;
        let p = split(heads, span, splits, scale)?;
        self.count_attention(heads, Span { row0: span.q_row0, len: span.count, pos0: 0 }, Span { row0: 0, len: span.len, pos0: 0 }, false);
        let mut l = self.stream().launch_builder(self.f("decode_split_bf16")?);
        l.arg(&q.data).arg(&kv.data).arg(&mut scratch.data);
        push_scalars(&mut l, &p.scalars.values);
        // SAFETY: arguments in the kernel's signature order with its types; every query row, cache
        // row and partial lies inside its buffer (checked above); static shared memory.
        unsafe { l.launch(cfg(p.geometry)) }.map_err(err("decode_split_bf16"))?;
        let c = combine(heads, span, splits)?;
        let mut l = self.stream().launch_builder(self.f("decode_combine_f32")?);
        l.arg(&scratch.data).arg(&mut o.data).arg(&mut lse.data);
        push_scalars(&mut l, &c.scalars.values);
        // SAFETY: as above; a block per (sequence, head) of rows inside o and lse.
        unsafe { l.launch(cfg(c.geometry)) }.map_err(err("decode_combine_f32"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid reaches the target blocks, whole tiles per split, and the split covers the cache.
    #[test]
    fn each_sequence_s_cache_is_split_into_whole_tiles_that_cover_it() {
        let heads = Heads { heads: 64, kv_heads: 8, head_dim: 128 };
        for (count, len) in [(1usize, 131072usize), (1, 1), (1, 127), (4, 4097), (128, 100_000)] {
            let splits = decode_splits(count, heads.kv_heads, len);
            let c = chunk(len, splits);
            assert!(
                c % crate::backend::DECODE_TILE == 0 && c * splits >= len && c * (splits - 1) < len.max(1),
                "{count} {len}: {splits} x {c}"
            );
            let p = split(heads, DecodeSpan { q_row0: 0, count, seq0: 0, stride: len, len }, splits, 0.1).unwrap();
            assert_eq!(p.geometry.grid, (splits as u32, 8, count as u32));
        }
        // One long sequence on 8 K/V heads: 33 splits, 264 blocks.
        assert_eq!(decode_splits(1, 8, 131072), 33);
        assert!(!takes(Heads { heads: 64, kv_heads: 2, head_dim: 128 }) && !takes(Heads::mha(8, 256)));
    }
}
