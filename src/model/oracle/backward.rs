//! The FP64 oracle of a training step: the forward pass of `super` kept whole, then the backward
//! from the upstream gradient G (tensor 3), by hand in FP64, sharing no code with the backends'
//! backward ops it checks: attention's backward by the softmax Jacobian row by row (not
//! FlashAttention's delta), RMSNorm's by its own derivation.

use super::{gelu, matmul, rms_norm, rotate_qk, weights};
use crate::config::{MlpAct, ModelConfig};
use crate::generator::{value_bf16, Init, GRAD_TENSOR, INPUT_TENSOR};

/// One layer's weight gradients, in the whole tensors' shapes: norm1 [d], w_qkv [d, d + 2
/// kv_dim], w_o [d, d], norm2 [d], w_up [d, F or 2F], w_down [F, d].
#[derive(Clone, Debug, Default)]
pub struct LayerGradients {
    pub norm1: Vec<f64>,
    pub w_qkv: Vec<f64>,
    pub w_o: Vec<f64>,
    pub norm2: Vec<f64>,
    pub w_up: Vec<f64>,
    pub w_down: Vec<f64>,
}

impl LayerGradients {
    /// (name, value) of each, in the order the outputs name them.
    pub fn named(&self) -> [(&'static str, &[f64]); 6] {
        [
            ("norm1", &self.norm1),
            ("w_qkv", &self.w_qkv),
            ("w_o", &self.w_o),
            ("norm2", &self.norm2),
            ("w_up", &self.w_up),
            ("w_down", &self.w_down),
        ]
    }
}

/// The gradients of L = sum(Y G) over sequences `seqs`: of the input [seqs, seq_len, d] and of
/// every layer's weights (summed over those sequences).
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    pub input: Vec<f64>,
    pub layers: Vec<LayerGradients>,
}

/// t = a^T b: a [m, k], b [m, n] -> [k, n].
fn matmul_tn(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    matmul(&transpose(a, m, k), b, k, m, n)
}

/// a b^T: a [m, n], b [k, n] -> [m, k].
fn matmul_nt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    matmul(a, &transpose(b, k, n), m, n, k)
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols).map(|i| a[(i % rows) * cols + i / rows]).collect()
}

fn add_into(acc: &mut [f64], x: &[f64]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// RMSNorm's backward for rows of `d`: dx = d(x r g)/dx^T dy with r = (mean x^2 + eps)^-1/2,
/// whose derivative dr/dx_j = -r^3 x_j / d; adds dy x r to dgain.
fn rms_norm_backward(x: &[f64], gain: &[f64], dy: &[f64], d: usize, dgain: &mut [f64]) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    for ((xr, dyr), dxr) in x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
        let through_r: f64 = (0..d).map(|k| dyr[k] * gain[k] * xr[k]).sum::<f64>() * (-r * r * r / d as f64);
        for j in 0..d {
            dxr[j] = dyr[j] * gain[j] * r + through_r * xr[j];
            dgain[j] += dyr[j] * xr[j] * r;
        }
    }
    dx
}

/// The exact derivative of the tanh-form GELU.
fn gelu_derivative(z: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let u = k * (z + 0.044715 * z.powi(3));
    let sech2 = 1.0 / u.cosh().powi(2);
    0.5 * (1.0 + u.tanh()) + 0.5 * z * sech2 * k * (1.0 + 3.0 * 0.044715 * z * z)
}

/// Every gradient of a training step over sequences `seqs` (docs/design.md, "Training").
pub fn train(m: &ModelConfig, seed: u64, causal: bool, seqs: std::ops::Range<usize>) -> Gradients {
    let (d, f, s_len, h, hd) = (m.d_model, m.mlp, m.seq_len, m.heads, m.head_dim());
    let (kvd, group) = (m.kv_heads * hd, m.heads / m.kv_heads);
    let up_cols = f * if m.mlp_act == MlpAct::Swiglu { 2 } else { 1 };
    let qkv_cols = d + 2 * kvd;
    let weights = weights(m, seed, &|_, t| t);
    let mut grads = Gradients {
        input: Vec::new(),
        layers: (0..m.layers)
            .map(|_| LayerGradients {
                norm1: vec![0.0; d],
                w_qkv: vec![0.0; d * qkv_cols],
                w_o: vec![0.0; d * d],
                norm2: vec![0.0; d],
                w_up: vec![0.0; d * up_cols],
                w_down: vec![0.0; f * d],
            })
            .collect(),
    };
    let scale = 1.0 / (hd as f64).sqrt();
    // Column of query head `head` (part 0), or of its K/V head's key (1) or value (2).
    let col = |head: usize, part: usize| match part {
        0 => head * hd,
        1 => d + (head / group) * hd,
        _ => d + kvd + (head / group) * hd,
    };
    for seq in seqs {
        let base = (seq * s_len * d) as u64;
        let mut x: Vec<f64> = (0..(s_len * d) as u64).map(|i| value_bf16(seed, INPUT_TENSOR, base + i, Init::Uniform).to_f64()).collect();
        // The forward, keeping what the backward reads: (x_in, qkv after RoPE, attention, x_mid, pre-activation).
        let mut tape = Vec::with_capacity(m.layers);
        for [g1, w_qkv, w_o, g2, w_up, w_down] in &weights {
            let x_in = x.clone();
            let mut qkv = matmul(&rms_norm(&x, g1, d), w_qkv, s_len, d, qkv_cols);
            rotate_qk(&mut qkv, m, s_len, 1.0);
            let mut attn = vec![0.0; s_len * d];
            for head in 0..h {
                for p in 0..s_len {
                    let probs = softmax_row(&qkv, qkv_cols, hd, scale, col(head, 0), col(head, 1), p, if causal { p + 1 } else { s_len });
                    for (k, w) in probs.iter().enumerate() {
                        for c in 0..hd {
                            attn[p * d + head * hd + c] += w * qkv[k * qkv_cols + col(head, 2) + c];
                        }
                    }
                }
            }
            add_into(&mut x, &matmul(&attn, w_o, s_len, d, d));
            let x_mid = x.clone();
            let pre = matmul(&rms_norm(&x, g2, d), w_up, s_len, d, up_cols);
            add_into(&mut x, &matmul(&activate(m.mlp_act, &pre, s_len, f), w_down, s_len, f, d));
            tape.push((x_in, qkv, attn, x_mid, pre));
        }
        // The backward from dL/dY = G.
        let mut dx: Vec<f64> = (0..(s_len * d) as u64).map(|i| value_bf16(seed, GRAD_TENSOR, base + i, Init::Uniform).to_f64()).collect();
        for (l, (x_in, qkv, attn, x_mid, pre)) in tape.iter().enumerate().rev() {
            let [g1, w_qkv, w_o, g2, w_up, w_down] = &weights[l];
            let g = &mut grads.layers[l];
            // MLP: x_out = x_mid + act(norm2(x_mid) W_up) W_down.
            add_into(&mut g.w_down, &matmul_tn(&activate(m.mlp_act, pre, s_len, f), &dx, s_len, f, d));
            let d_act = matmul_nt(&dx, w_down, s_len, d, f);
            let d_pre: Vec<f64> = match m.mlp_act {
                MlpAct::Gelu => pre.iter().zip(&d_act).map(|(z, dg)| dg * gelu_derivative(*z)).collect(),
                MlpAct::Swiglu => {
                    let mut out = vec![0.0; s_len * up_cols];
                    for p in 0..s_len {
                        for j in 0..f {
                            let (a, b, dy) = (pre[p * up_cols + j], pre[p * up_cols + f + j], d_act[p * f + j]);
                            let sig = 1.0 / (1.0 + (-a).exp());
                            // d(a sig(a))/da = sig + a sig (1 - sig).
                            out[p * up_cols + j] = dy * b * (sig + a * sig * (1.0 - sig));
                            out[p * up_cols + f + j] = dy * a * sig;
                        }
                    }
                    out
                }
            };
            add_into(&mut g.w_up, &matmul_tn(&rms_norm(x_mid, g2, d), &d_pre, s_len, d, up_cols));
            let d_n2 = matmul_nt(&d_pre, w_up, s_len, up_cols, d);
            add_into(&mut dx, &rms_norm_backward(x_mid, g2, &d_n2, d, &mut g.norm2));
            // Attention: x_mid = x_in + attn W_o.
            add_into(&mut g.w_o, &matmul_tn(attn, &dx, s_len, d, d));
            let d_attn = matmul_nt(&dx, w_o, s_len, d, d);
            let mut d_qkv = vec![0.0; s_len * qkv_cols];
            for head in 0..h {
                let (qc, kc, vc) = (col(head, 0), col(head, 1), col(head, 2));
                for p in 0..s_len {
                    let visible = if causal { p + 1 } else { s_len };
                    let probs = softmax_row(qkv, qkv_cols, hd, scale, qc, kc, p, visible);
                    let d_o = &d_attn[p * d + head * hd..][..hd];
                    // dP_k = dO . V_k; dS = P (dP - sum_j P_j dP_j): the softmax's Jacobian.
                    let d_p: Vec<f64> = (0..visible).map(|k| (0..hd).map(|c| d_o[c] * qkv[k * qkv_cols + vc + c]).sum()).collect();
                    let mean: f64 = probs.iter().zip(&d_p).map(|(a, b)| a * b).sum();
                    for k in 0..visible {
                        let ds = probs[k] * (d_p[k] - mean) * scale;
                        for c in 0..hd {
                            d_qkv[p * qkv_cols + qc + c] += ds * qkv[k * qkv_cols + kc + c];
                            d_qkv[k * qkv_cols + kc + c] += ds * qkv[p * qkv_cols + qc + c];
                            d_qkv[k * qkv_cols + vc + c] += probs[k] * d_o[c];
                        }
                    }
                }
            }
            // RoPE is a rotation: its transpose turns back by the same angle.
            rotate_qk(&mut d_qkv, m, s_len, -1.0);
            add_into(&mut g.w_qkv, &matmul_tn(&rms_norm(x_in, g1, d), &d_qkv, s_len, d, qkv_cols));
            let d_n1 = matmul_nt(&d_qkv, w_qkv, s_len, qkv_cols, d);
            add_into(&mut dx, &rms_norm_backward(x_in, g1, &d_n1, d, &mut g.norm1));
        }
        grads.input.extend_from_slice(&dx);
    }
    grads
}

/// The MLP's activation of the pre-activation rows ([rows, F] GELU, or [rows, 2F] = [gate | up]
/// to silu(gate) up).
fn activate(act: MlpAct, pre: &[f64], rows: usize, f: usize) -> Vec<f64> {
    match act {
        MlpAct::Gelu => pre.iter().map(|&z| gelu(z)).collect(),
        MlpAct::Swiglu => (0..rows * f)
            .map(|i| {
                let (p, j) = (i / f, i % f);
                let (g, u) = (pre[p * 2 * f + j], pre[p * 2 * f + f + j]);
                g / (1.0 + (-g).exp()) * u
            })
            .collect(),
    }
}

/// Softmax over the first `visible` keys of query row p's scores against the key columns at `kc`.
#[allow(clippy::too_many_arguments)]
fn softmax_row(qkv: &[f64], cols: usize, hd: usize, scale: f64, qc: usize, kc: usize, p: usize, visible: usize) -> Vec<f64> {
    let s: Vec<f64> = (0..visible).map(|k| (0..hd).map(|c| qkv[p * cols + qc + c] * qkv[k * cols + kc + c]).sum::<f64>() * scale).collect();
    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
    s.iter().map(|v| (v - mx).exp() / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{layer_tensor_id, LayerTensor};

    /// The oracle's gradients are the derivatives of the oracle's forward (`super::forward`,
    /// written apart from the tape here): L = sum(Y G) by central differences in values of the
    /// input and of every weight tensor of both layers, GELU with MHA causal and SwiGLU with GQA
    /// not.
    #[test]
    fn every_gradient_is_the_derivative_of_the_forward() {
        for (act, kv_heads, causal) in [(MlpAct::Gelu, 4, true), (MlpAct::Swiglu, 2, false)] {
            let m = ModelConfig { layers: 2, d_model: 16, heads: 4, kv_heads, mlp: 12, mlp_act: act, seq_len: 5, batch: 1 };
            let g = train(&m, 7, causal, 0..1);
            let loss = |tensor: u64, index: usize, h: f64| -> f64 {
                let y = super::super::forward_perturbed(&m, 7, causal, (tensor, index, h));
                y.iter().enumerate().map(|(i, v)| v * value_bf16(7, GRAD_TENSOR, i as u64, Init::Uniform).to_f64()).sum()
            };
            let mut checks: Vec<(u64, usize, f64)> = [0usize, 17, 79].iter().map(|&i| (INPUT_TENSOR, i, g.input[i])).collect();
            for (l, lg) in g.layers.iter().enumerate() {
                let tensors =
                    [LayerTensor::Norm1, LayerTensor::Qkv, LayerTensor::Out, LayerTensor::Norm2, LayerTensor::Up, LayerTensor::Down];
                for (t, (_, grad)) in tensors.iter().zip(lg.named()) {
                    for index in [3 % grad.len(), grad.len() / 2 + 1, grad.len() - 2] {
                        checks.push((layer_tensor_id(l, *t), index, grad[index]));
                    }
                }
            }
            for (tensor, index, want) in checks {
                let h = 1e-5;
                let fd = (loss(tensor, index, h) - loss(tensor, index, -h)) / (2.0 * h);
                assert!(
                    (fd - want).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{act:?}: tensor {tensor} value {index}: {fd} by differences, {want} by the backward"
                );
                assert!(want != 0.0, "tensor {tensor} value {index}: a zero gradient checks nothing");
            }
        }
    }
}
