//! The decode kernel's CPU twin (kernels/decode_attention.cu): the same splits of each
//! sequence's cache, the same tiles of keys, the same FP32 operations in the same order, so the
//! kernel's source on the SIMT stand-in (tests/simt.rs) and the kernel on a GPU (`selftest`) are
//! held to it within FP32 rounding, where FP64 attention allows BF16's.

use super::{decode_splits, lse_merge, DecodeSpan, Heads, DECODE_TILE};
use half::bf16;

/// Keys per split, as the launcher cuts them: whole tiles.
pub fn chunk(len: usize, splits: usize) -> usize {
    len.div_ceil(splits).div_ceil(DECODE_TILE) * DECODE_TILE
}

/// Decode attention of `span` on host buffers (q [rows, heads x hd], kv [rows, 2 x kv_heads x
/// hd], o [rows, heads x hd], lse [rows, heads]), merged into o and lse as the kernels merge.
pub fn attention(q: &[bf16], kv: &[bf16], heads: Heads, span: DecodeSpan, o: &mut [f32], lse: &mut [f32]) {
    let (hd, group) = (heads.head_dim, heads.heads / heads.kv_heads);
    let (width, kv_width) = (heads.width(), heads.kv_width());
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let splits = decode_splits(span.count, heads.kv_heads, span.len);
    let c = chunk(span.len, splits);
    for i in 0..span.count {
        for h in 0..heads.heads {
            let g = h / group;
            let qv: Vec<f32> = (0..hd).map(|d| q[(span.q_row0 + i) * width + h * hd + d].to_f32()).collect();
            let base = (span.seq0 + i) * span.stride;
            let key = |r: usize, d: usize| kv[(base + r) * 2 * kv_width + g * hd + d].to_f32();
            let value = |r: usize, d: usize| kv[(base + r) * 2 * kv_width + kv_width + g * hd + d].to_f32();
            // Each split's normalised o and its LSE.
            let mut parts: Vec<(Vec<f32>, f32)> = Vec::with_capacity(splits);
            for s in 0..splits {
                let (k0, k1) = (s * c, span.len.min((s + 1) * c));
                let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                let mut acc = vec![0.0f32; hd];
                let mut tile = k0;
                while tile < k1 {
                    let n = DECODE_TILE.min(k1 - tile);
                    let scores: Vec<f32> = (0..n)
                        .map(|r| {
                            let mut dot = 0.0f32;
                            for (d, qd) in qv.iter().enumerate() {
                                dot += qd * key(tile + r, d);
                            }
                            dot * scale
                        })
                        .collect();
                    let mx = scores.iter().fold(m, |a, &b| a.max(b));
                    let corr = (m - mx).exp();
                    let mut sum = 0.0f32;
                    let p: Vec<f32> = scores
                        .iter()
                        .map(|&x| {
                            let p = (x - mx).exp();
                            sum += p;
                            p
                        })
                        .collect();
                    l = l * corr + sum;
                    m = mx;
                    for (d, a) in acc.iter_mut().enumerate() {
                        let mut v = *a * corr;
                        for (r, pr) in p.iter().enumerate() {
                            v += pr * value(tile + r, d);
                        }
                        *a = v;
                    }
                    tile += DECODE_TILE;
                }
                let o_part: Vec<f32> = acc.iter().map(|a| if l > 0.0 { a / l } else { 0.0 }).collect();
                parts.push((o_part, if l > 0.0 { m + l.ln() } else { f32::NEG_INFINITY }));
            }
            // The combine: the splits' LSE, each split's weight, then into the accumulators.
            let mx = parts.iter().fold(f32::NEG_INFINITY, |a, p| a.max(p.1));
            if mx == f32::NEG_INFINITY {
                continue;
            }
            let sum: f32 = parts.iter().map(|p| (p.1 - mx).exp()).sum();
            let block = mx + sum.ln();
            let merged: Vec<f32> = (0..hd)
                .map(|d| {
                    let mut v = 0.0f32;
                    for p in &parts {
                        v += (p.1 - block).exp() * p.0[d];
                    }
                    v
                })
                .collect();
            let r = span.q_row0 + i;
            lse_merge(&mut o[r * width + h * hd..r * width + (h + 1) * hd], &mut lse[r * heads.heads + h], &merged, block);
        }
    }
}
