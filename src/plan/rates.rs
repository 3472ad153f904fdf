//! How fast the work of one rank runs at its size, not at the hardware's best: GEMMs by their
//! shape (a short or narrow GEMM runs below the large-shape rate, and no GEMM beats the HBM
//! roofline of its operands), attention by how well its blocks fill the GPU's SMs (a short span
//! leaves part of the last wave idle), and each call between GPUs by a latency before its bytes.
//! Constant efficiencies overstate small per-rank chunks, which is where sweeps place their
//! crossovers.

use super::hardware::{Hardware, ATTENTION_BLOCK_ROWS};
use crate::config::RunConfig;
use crate::strategy::Placement;

/// The fraction of the large-shape GEMM efficiency a GEMM whose smallest dimension is `dim`
/// reaches on `hw`'s curve.
pub fn gemm_shape_factor(hw: &Hardware, dim: f64) -> f64 {
    let curve = &hw.gemm_shape_curve;
    let (Some(first), Some(last)) = (curve.first(), curve.last()) else { return 1.0 };
    if dim <= first.0 {
        return first.1;
    }
    if dim >= last.0 {
        return last.1;
    }
    let i = curve.iter().position(|p| p.0 >= dim).unwrap_or(curve.len() - 1);
    let (a, b) = (curve[i - 1], curve[i]);
    let t = (dim.log2() - a.0.log2()) / (b.0.log2() - a.0.log2());
    a.1 + t * (b.1 - a.1)
}

/// Seconds of one BF16 GEMM of `m x n x k` on `hw`: its FLOPs at the shape's rate, or its
/// operands and result through HBM once, whichever is longer.
pub fn gemm_s(hw: &Hardware, m: f64, n: f64, k: f64) -> f64 {
    let flops = 2.0 * m * n * k;
    let rate = hw.peak_flops * hw.gemm_efficiency * gemm_shape_factor(hw, m.min(n).min(k));
    let bytes = 2.0 * (m * k + k * n + m * n);
    (flops / rate).max(bytes / hw.hbm_bytes_per_s)
}

/// The GEMMs of one layer on one micro-batch of the rank at `place`: (m, n, k).
pub fn layer_gemms(cfg: &RunConfig, place: &Placement) -> Vec<(f64, f64, f64)> {
    let m = &cfg.model;
    let rows = (cfg.micro_batch * place.tokens.len()) as f64;
    let heads = place.shard.heads(m);
    let (d, mlp) = (m.d_model as f64, place.shard.mlp.len() as f64);
    vec![
        (rows, (heads.width() + 2 * heads.kv_width()) as f64, d),
        (rows, d, heads.width() as f64),
        (rows, mlp * m.mlp_act.up_factor() as f64, d),
        (rows, d, mlp),
    ]
}

/// The seconds of `linear_flops` of the rank at `place`, at the rates of its own GEMM shapes
/// (their FLOP-weighted time per FLOP).
pub fn linear_s(hw: &Hardware, cfg: &RunConfig, place: &Placement, linear_flops: f64) -> f64 {
    let gemms: Vec<(f64, f64, f64)> = layer_gemms(cfg, place).into_iter().filter(|g| g.0 * g.1 * g.2 > 0.0).collect();
    let flops: f64 = gemms.iter().map(|g| 2.0 * g.0 * g.1 * g.2).sum();
    if flops <= 0.0 {
        return linear_flops / (hw.peak_flops * hw.gemm_efficiency);
    }
    let secs: f64 = gemms.iter().map(|g| gemm_s(hw, g.0, g.1, g.2)).sum();
    linear_flops * secs / flops
}

/// The fraction of the GPU's SMs an attention call of the rank at `place` keeps busy over its
/// waves: blocks of 128 query rows per head and sequence, `hw.sm_count` at a time (1 where the
/// profile states no SM count).
pub fn attention_wave_fraction(hw: &Hardware, cfg: &RunConfig, place: &Placement) -> f64 {
    if hw.sm_count == 0 {
        return 1.0;
    }
    let blocks = place.attention_tokens.len().div_ceil(ATTENTION_BLOCK_ROWS) * place.attention_heads.len().max(1) * cfg.micro_batch;
    if blocks == 0 {
        return 1.0;
    }
    blocks as f64 / (blocks.div_ceil(hw.sm_count) * hw.sm_count) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Profile;

    #[test]
    fn a_short_or_narrow_gemm_runs_below_the_large_shape_rate() {
        let hw = Profile::H100Sxm.hardware();
        let rate = |m: f64, n: f64, k: f64| 2.0 * m * n * k / gemm_s(&hw, m, n, k) / 1e12;
        // The measured points come back: 660 and ~772 TFLOP/s (0.78 of 989).
        assert!((rate(100_000.0, 4096.0, 512.0) - 660.0).abs() < 2.0, "{}", rate(100_000.0, 4096.0, 512.0));
        assert!((rate(8192.0, 8192.0, 8192.0) - 771.4).abs() < 1.0, "{}", rate(8192.0, 8192.0, 8192.0));
        // One row (decode's GEMM) is bound by reading its weights: 2 bytes per weight at 3.35 TB/s.
        let one = gemm_s(&hw, 1.0, 4096.0, 4096.0);
        assert!((one / (2.0 * 4096.0 * 4096.0 / 3.35e12) - 1.0).abs() < 1e-3, "{one}");
        // Monotone: a smaller dimension never runs faster per FLOP.
        let mut last = f64::MAX;
        for dim in [16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 8192.0] {
            let per_flop = gemm_s(&hw, dim, 4096.0, 4096.0) / (2.0 * dim * 4096.0 * 4096.0);
            assert!(per_flop <= last * (1.0 + 1e-12), "{dim}");
            last = per_flop;
        }
    }
}
