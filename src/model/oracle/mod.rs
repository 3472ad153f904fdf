//! The FP64 oracle: the normative model computed in FP64 on the same BF16 weights and inputs, with
//! no intermediate rounding. It is written independently of `Backend` (plain loops, whole-sequence
//! attention) so that it checks the BF16 pipeline rather than repeating it. `verify` measures how far
//! the BF16 reference strays from it and derives its tolerance from that (STYLE.md, item 9).

use crate::config::{MlpAct, ModelConfig};
use crate::generator::{layer_tensor_id, value_bf16, Init, LayerTensor, DECODE_TENSOR, INPUT_TENSOR};

pub mod backward;

/// RoPE's rotation for position `p` and pair `i` of a head of `hd`, from docs/design.md's formula
/// (angle = p * 10000^(-2i/hd)), written here on its own: the oracle shares no arithmetic with
/// the backends it checks. The frequency as e^(-(2i/hd) ln 10000).
fn rotation(p: usize, i: usize, hd: usize) -> (f64, f64) {
    let frequency = (-(2.0 * i as f64 / hd as f64) * 10000f64.ln()).exp();
    let (sin, cos) = (p as f64 * frequency).sin_cos();
    (cos, sin)
}

/// Every layer's [norm1, W_qkv, W_o, norm2, W_up, W_down], whole, each through `bump` (which may
/// move one value, for a finite difference).
fn weights(m: &ModelConfig, seed: u64, bump: &dyn Fn(u64, Vec<f64>) -> Vec<f64>) -> Vec<[Vec<f64>; 6]> {
    let (d, f, kvd) = (m.d_model, m.mlp, m.kv_heads * m.head_dim());
    let up_cols = f * if m.mlp_act == MlpAct::Swiglu { 2 } else { 1 };
    (0..m.layers)
        .map(|l| {
            let id = |t| layer_tensor_id(l, t);
            let read = |t, n, init| bump(id(t), tensor(seed, id(t), n, init));
            [
                read(LayerTensor::Norm1, d, Init::Gain),
                read(LayerTensor::Qkv, d * (d + 2 * kvd), Init::Weight { fan_in: d }),
                read(LayerTensor::Out, d * d, Init::Weight { fan_in: d }),
                read(LayerTensor::Norm2, d, Init::Gain),
                read(LayerTensor::Up, d * up_cols, Init::Weight { fan_in: d }),
                read(LayerTensor::Down, f * d, Init::Weight { fan_in: f }),
            ]
        })
        .collect()
}

/// RoPE on every query head (columns 0 .. d) and every key head (d .. d + kv_dim) of the `rows`
/// rows of [Q | K | V] (row p at position p), by each angle times `sign`: 1 the rotation, -1
/// its transpose (the backward's).
fn rotate_qk(qkv: &mut [f64], m: &ModelConfig, rows: usize, sign: f64) {
    let (d, hd) = (m.d_model, m.head_dim());
    let cols = d + 2 * m.kv_heads * hd;
    for p in 0..rows {
        for col0 in (0..d + m.kv_heads * hd).step_by(hd) {
            let base = p * cols + col0;
            for i in 0..hd / 2 {
                let (c, s) = rotation(p, i, hd);
                let s = s * sign;
                let (a, b) = (qkv[base + i], qkv[base + i + hd / 2]);
                qkv[base + i] = a * c - b * s;
                qkv[base + i + hd / 2] = a * s + b * c;
            }
        }
    }
}

fn tensor(seed: u64, id: u64, n: usize, init: Init) -> Vec<f64> {
    (0..n as u64).map(|i| value_bf16(seed, id, i, init).to_f64()).collect()
}

/// c[m, n] = a[m, k] b[k, n].
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    // SAFETY: a is m x k, b is k x n, c is m x n, all contiguous row-major (checked by the slice lengths).
    assert!(a.len() == m * k && b.len() == k * n);
    unsafe {
        matrixmultiply::dgemm(m, k, n, 1.0, a.as_ptr(), k as isize, 1, b.as_ptr(), n as isize, 1, 0.0, c.as_mut_ptr(), n as isize, 1);
    }
    c
}

fn rms_norm(x: &[f64], gain: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
            row.iter().zip(gain).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

fn gelu(z: f64) -> f64 {
    0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
}

/// Final hidden states of sequences `seqs` of the batch, [seqs.len(), seq_len, d_model] row-major.
pub fn forward(m: &ModelConfig, seed: u64, causal: bool, seqs: std::ops::Range<usize>) -> Vec<f64> {
    forward_extended(m, seed, causal, seqs, 0, None)
}

/// The final hidden states of sequence 0 with value `index` of tensor `tensor` (the input, or a
/// layer's weight) moved by `h`: what a finite-difference check of the gradients differentiates.
pub fn forward_perturbed(m: &ModelConfig, seed: u64, causal: bool, (tensor, index, h): (u64, usize, f64)) -> Vec<f64> {
    forward_extended(m, seed, causal, 0..1, 0, Some((tensor, index, h)))
}

/// The final hidden states of the last `decode` rows of each of sequences `seqs`, [seqs.len(),
/// decode, d_model]: a causal prefill of seq_len + decode tokens whose inputs are the prompt's
/// rows followed by the decode rows (tensor 2, step-major), which is what generating those tokens
/// one at a time must give (docs/design.md, "Decode").
pub fn decode(m: &ModelConfig, seed: u64, seqs: std::ops::Range<usize>, decode: usize) -> Vec<f64> {
    let (d, total) = (m.d_model, m.seq_len + decode);
    let full = forward_extended(m, seed, true, seqs, decode, None);
    full.chunks(total * d).flat_map(|seq| seq[m.seq_len * d..].iter().copied()).collect()
}

/// Every row of sequences `seqs` over seq_len prompt tokens and `decode` more, [seqs.len(),
/// seq_len + decode, d_model].
fn forward_extended(
    m: &ModelConfig,
    seed: u64,
    causal: bool,
    seqs: std::ops::Range<usize>,
    decode: usize,
    perturb: Option<(u64, usize, f64)>,
) -> Vec<f64> {
    let bump = |id: u64, mut t: Vec<f64>| {
        if let Some((_, index, h)) = perturb.filter(|p| p.0 == id) {
            t[index] += h;
        }
        t
    };
    let (d, f, prompt, h, hd) = (m.d_model, m.mlp, m.seq_len, m.heads, m.head_dim());
    let s_len = prompt + decode;
    // W_qkv is [d, d + 2 kv_dim] = [Q | K | V]; query head h attends with K/V head h / group.
    let (kvd, group, up_cols) = (m.kv_heads * hd, m.heads / m.kv_heads, f * if m.mlp_act == MlpAct::Swiglu { 2 } else { 1 });
    let qkv_cols = d + 2 * kvd;
    let layers = weights(m, seed, &bump);
    let mut out = Vec::with_capacity(seqs.len() * s_len * d);
    for seq in seqs {
        let base = (seq * prompt * d) as u64;
        let input = (0..(prompt * d) as u64).map(|i| value_bf16(seed, INPUT_TENSOR, base + i, Init::Uniform).to_f64()).collect();
        let mut x: Vec<f64> = bump(INPUT_TENSOR, input);
        for step in 0..decode {
            let row = ((step * m.batch + seq) * d) as u64;
            x.extend((0..d as u64).map(|j| value_bf16(seed, DECODE_TENSOR, row + j, Init::Uniform).to_f64()));
        }
        for [g1, w_qkv, w_o, g2, w_up, w_down] in &layers {
            let mut qkv = matmul(&rms_norm(&x, g1, d), w_qkv, s_len, d, qkv_cols);
            rotate_qk(&mut qkv, m, s_len, 1.0);
            let mut attn = vec![0.0; s_len * d];
            let scale = 1.0 / (hd as f64).sqrt();
            for head in 0..h {
                let kv_head = head / group;
                let col = |p: usize, part: usize| {
                    let at = match part {
                        0 => head * hd,
                        1 => d + kv_head * hd,
                        _ => d + kvd + kv_head * hd,
                    };
                    &qkv[p * qkv_cols + at..][..hd]
                };
                for p in 0..s_len {
                    let visible = if causal { p + 1 } else { s_len };
                    let scores: Vec<f64> =
                        (0..visible).map(|k| col(p, 0).iter().zip(col(k, 1)).map(|(a, b)| a * b).sum::<f64>() * scale).collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                    let o = &mut attn[p * d + head * hd..][..hd];
                    for (k, s) in scores.iter().enumerate() {
                        let wgt = (s - mx).exp() / z;
                        for (oi, vi) in o.iter_mut().zip(col(k, 2)) {
                            *oi += wgt * vi;
                        }
                    }
                }
            }
            for (xi, yi) in x.iter_mut().zip(matmul(&attn, w_o, s_len, d, d)) {
                *xi += yi;
            }
            let up_out = matmul(&rms_norm(&x, g2, d), w_up, s_len, d, up_cols);
            let up: Vec<f64> = match m.mlp_act {
                MlpAct::Gelu => up_out.into_iter().map(gelu).collect(),
                // [gate | up] per token: silu(gate) * up.
                MlpAct::Swiglu => (0..s_len * f)
                    .map(|i| {
                        let (p, j) = (i / f, i % f);
                        let (g, u) = (up_out[p * up_cols + j], up_out[p * up_cols + f + j]);
                        g / (1.0 + (-g).exp()) * u
                    })
                    .collect(),
            };
            for (xi, yi) in x.iter_mut().zip(matmul(&up, w_down, s_len, f, d)) {
                *xi += yi;
            }
        }
        out.extend_from_slice(&x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_follows_the_formula_and_the_cpu_backend_agrees() {
        // hd 4, pair 1: 10000^(-1/2) = 1/100, so position 1000 turns by 10 radians.
        let (c, s) = rotation(1000, 1, 4);
        assert!((c - 10f64.cos()).abs() < 1e-12 && (s - 10f64.sin()).abs() < 1e-12);
        assert_eq!(rotation(0, 5, 128), (1.0, 0.0));
        // Two implementations written apart agree at the positions a long sequence reaches.
        for (p, i, hd) in [(99_999usize, 0usize, 128usize), (6250, 17, 128), (31, 31, 64), (100_000, 63, 128)] {
            let (a, b) = (rotation(p, i, hd), crate::backend::cpu::rope_angle(p, i, hd));
            assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9, "{p} {i} {hd}: {a:?} vs {b:?}");
        }
    }
}
