//! The CPU twin of the flash kernel (kernels/flash_attention.cu): its arithmetic step by step, so
//! that the kernel can be held to a few BF16 ulps of it instead of to FP64 attention's much looser
//! distance. Per query row and head, keys in tiles of `tile` from the start of the key span (64 for
//! the mma.sync kernel, 128 for the wgmma one: where the running max is taken decides how P rounds); scores in
//! log2 units (scale x log2 e, FP32); an online softmax with the running max; P = exp2(s - max) in
//! FP32, summed unrounded into the row sum and rounded to BF16 for P V; the epilogue's merge into
//! the (o, lse) accumulators exactly as the kernel writes it.
//!
//! What cannot be the same is the order of FP32 additions inside a dot product (tensor cores, or
//! the SIMT stand-in's fragment order), which moves P by a few parts in 10^6, and so, rarely, its
//! rounding to BF16 by one ulp. `Bound` says how far the kernel may be from the twin because of
//! that: one BF16 ulp of every P within 2^-12 of a rounding boundary, weighted by its row's
//! largest |V|, plus the FP32 summation error of the row's sums. A key let through or masked
//! wrongly moves the output by its whole weight, far more.

use super::{Heads, Span};
use half::bf16;

/// Keys per tile of the mma.sync kernel (FA_BN in kernels/flash_attention.cu) and of the wgmma
/// one (FW_BN in kernels/flash_wgmma.cu).
pub const MMA_SYNC_TILE: usize = 64;
pub const WGMMA_TILE: usize = 128;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;
/// P within this relative distance of a BF16 rounding boundary may round the other way in the kernel.
const FLIP_RISK: f64 = 1.0 / 4096.0;

/// How far the kernel's result for one (query row, head) may lie from the twin's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bound {
    /// On each of the row's o values (absolute).
    pub o: f64,
    /// On its LSE (absolute).
    pub lse: f64,
}

/// Whether the BF16 rounding of `p` is within FLIP_RISK of going the other way.
fn near_rounding_boundary(p: f32) -> bool {
    let lo = bf16::from_f32((p as f64 * (1.0 - FLIP_RISK)) as f32);
    let hi = bf16::from_f32((p as f64 * (1.0 + FLIP_RISK)) as f32);
    lo != hi
}

/// The spacing of BF16 values at `x`.
fn bf16_ulp(x: f32) -> f64 {
    crate::backend::bf16_ulp(x as f64)
}

/// The kernel's attention of `qs` against `ks` on host buffers, keys in tiles of `tile` (q: rows x heads*hd, kv: rows x
/// 2*kv_heads*hd = [K | V], query head h with K/V head h / (heads / kv_heads), o: rows x heads*hd, lse: rows x heads), merged into o and lse; returns
/// the bound per (query of the span, head), row-major.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[bf16],
    kv: &[bf16],
    heads: Heads,
    qs: Span,
    ks: Span,
    causal: bool,
    tile: usize,
    o: &mut [f32],
    lse: &mut [f32],
) -> Vec<Bound> {
    let (hd, width, kvw) = (heads.head_dim, heads.width(), heads.kv_width());
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let scale2 = scale * LOG2E;
    let mut bounds = vec![Bound::default(); qs.len * heads.heads];
    let (mut s, mut p) = (vec![0f32; tile], vec![0f32; tile]);
    for i in 0..qs.len {
        let (row, qpos) = (qs.row0 + i, qs.pos0 + i);
        // A causal query sees a prefix of the keys: later tiles add nothing, as in the kernel.
        let visible = if causal { (qpos + 1).saturating_sub(ks.pos0).min(ks.len) } else { ks.len };
        if visible == 0 {
            continue;
        }
        for h in 0..heads.heads {
            let g = heads.kv_head(h);
            let qv = &q[row * width + h * hd..row * width + (h + 1) * hd];
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let mut acc = vec![0f32; hd];
            let (mut flip, mut magnitude) = (0f64, 0f64); // sum of at-risk ulp(p)|v|, and of p|v|
            for n0 in (0..visible).step_by(tile) {
                let n = tile.min(visible - n0);
                let mut mx = m;
                for j in 0..n {
                    let k = &kv[(ks.row0 + n0 + j) * 2 * kvw + g * hd..][..hd];
                    let dot = qv.iter().zip(k).fold(0f32, |a, (x, y)| a + x.to_f32() * y.to_f32());
                    s[j] = dot * scale2;
                    mx = mx.max(s[j]);
                }
                let reference = if mx == f32::NEG_INFINITY { 0.0 } else { mx };
                let corr = (m - reference).exp2();
                m = mx;
                let mut part = 0f32;
                for j in 0..n {
                    p[j] = (s[j] - reference).exp2();
                    part += p[j];
                }
                l = l * corr + part;
                acc.iter_mut().for_each(|a| *a *= corr);
                flip *= corr as f64;
                magnitude *= corr as f64;
                for j in 0..n {
                    let v = &kv[(ks.row0 + n0 + j) * 2 * kvw + kvw + g * hd..][..hd];
                    let pb = bf16::from_f32(p[j]).to_f32();
                    let mut vmax = 0f64;
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += pb * x.to_f32();
                        vmax = vmax.max(x.to_f64().abs());
                    }
                    if near_rounding_boundary(p[j]) {
                        flip += bf16_ulp(p[j]) * vmax;
                    }
                    magnitude += p[j] as f64 * vmax;
                }
            }
            if l <= 0.0 {
                continue;
            }
            // The epilogue: merge (acc / l, max ln 2 + ln l) into the accumulators.
            let block = m * LN2 + l.ln();
            let lrow = &mut lse[row * heads.heads + h];
            let old = *lrow;
            let (merged, w_old, w_new) = if old == f32::NEG_INFINITY {
                (block, 0f32, 1f32)
            } else {
                let mm = old.max(block);
                let merged = mm + ((old - mm).exp() + (block - mm).exp()).ln();
                (merged, (old - merged).exp(), (block - merged).exp())
            };
            let inv_l = w_new / l;
            let orow = &mut o[row * width + h * hd..row * width + (h + 1) * hd];
            for (x, a) in orow.iter_mut().zip(&acc) {
                let prev = if old == f32::NEG_INFINITY { 0.0 } else { *x };
                *x = prev * w_old + a * inv_l;
            }
            *lrow = merged;
            // FP32 sums of `visible` terms (dot products, row sums, P V), four times their
            // worst-case relative error, on the output's scale.
            let sums = 4.0 * (visible + hd) as f64 * f64::from(f32::EPSILON) / 2.0;
            bounds[i * heads.heads + h] = Bound {
                o: (flip + sums * magnitude) / l as f64 * w_new as f64,
                lse: FLIP_RISK * 0.5 + sums * (merged.abs() as f64).max(1.0),
            };
        }
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    fn values(seed: u64, n: usize) -> Vec<bf16> {
        (0..n).map(|i| bf16::from_f32(3.0 * crate::generator::uniform(seed, 5, i as u64))).collect()
    }

    #[test]
    fn the_twin_is_attention_within_p_rounding_of_the_fp32_backend_and_a_wrong_key_leaves_its_bound() {
        let heads = Heads::mha(2, 64);
        let (w, rows) = (heads.width(), 150usize);
        let (q, kv) = (values(1, rows * w), values(2, rows * 2 * w));
        let qs = Span { row0: 70, len: 80, pos0: 1070 };
        let calls = [(qs, Span { row0: 0, len: 70, pos0: 1000 }), (qs, qs)];
        let (mut o, mut lse) = (vec![0f32; rows * w], vec![f32::NEG_INFINITY; rows * heads.heads]);
        let mut bound = vec![Bound::default(); qs.len * heads.heads];
        for (a, b) in calls {
            for (x, y) in bound.iter_mut().zip(attention(&q, &kv, heads, a, b, true, MMA_SYNC_TILE, &mut o, &mut lse)) {
                (x.o, x.lse) = (x.o + y.o, x.lse + y.lse);
            }
        }
        // The FP32 backend (P unrounded): within the BF16 rounding of P, 2^-9 of max |V| = 3.
        let be = CpuBackend::new();
        let mut qb = be.alloc_act(rows, w).unwrap();
        be.upload(&mut qb, &q).unwrap();
        let mut kvb = be.alloc_act(rows, 2 * w).unwrap();
        be.upload(&mut kvb, &kv).unwrap();
        let (mut ob, mut lb) = (be.alloc_acc(rows, w).unwrap(), be.alloc_acc(rows, heads.heads).unwrap());
        be.attention_reset(&mut ob, &mut lb).unwrap();
        for (a, b) in calls {
            be.attention(&qb, &kvb, heads, a, b, true, &mut ob, &mut lb).unwrap();
        }
        let (fo, fl) = (be.download_acc(&ob).unwrap(), be.download_acc(&lb).unwrap());
        let r = qs.row0;
        for i in r * w..(r + qs.len) * w {
            assert!((o[i] - fo[i]).abs() <= 2.0 * 3.0 / 512.0, "o[{i}]: twin {} vs fp32 {}", o[i], fo[i]);
        }
        for i in r * heads.heads..(r + qs.len) * heads.heads {
            assert!((lse[i] - fl[i]).abs() <= 1e-4, "lse[{i}]");
        }
        // The bounds are a few ulps' worth where P rounds near a boundary, and never looser than
        // the old tolerance against FP64 (2 x 2^-9 of max |V|); mostly far tighter.
        let worst = bound.iter().map(|b| b.o).fold(0.0, f64::max);
        let mean = bound.iter().map(|b| b.o).sum::<f64>() / bound.len() as f64;
        println!("o bounds: worst {worst:.2e}, mean {mean:.2e}");
        assert!(worst < 2.0 * 3.0 / 512.0 && mean < 1.5e-3, "bounds: worst {worst}, mean {mean}");
        let (mut o2, mut lse2) = (vec![0f32; rows * w], vec![f32::NEG_INFINITY; rows * heads.heads]);
        attention(&q, &kv, heads, calls[0].0, calls[0].1, true, MMA_SYNC_TILE, &mut o2, &mut lse2);
        // One key more on the diagonal (the mask off by one): some row leaves its bound.
        attention(&q, &kv, heads, qs, Span { pos0: qs.pos0 - 1, ..qs }, true, MMA_SYNC_TILE, &mut o2, &mut lse2);
        let moved = (0..qs.len * heads.heads).any(|k| {
            let (i, h) = (k / heads.heads, k % heads.heads);
            let base = (r + i) * w + h * heads.head_dim;
            (0..heads.head_dim).any(|e| ((o2[base + e] - o[base + e]).abs() as f64) > bound[k].o)
        });
        assert!(moved, "a wrong key stays within the bounds");
    }
}
