//! The CPU's backward ops (`Backward`): plain FP32 arithmetic on BF16 buffers, each output
//! rounded once, the GEMMs by `matrixmultiply`. They are the twins the GPU's backward kernels
//! are checked against, and each is checked here against a finite difference of an FP64 forward.

use super::cpu::{gemm, rope_angle, silu_f32, to_f32, CpuBackend, HostMat};
use super::{checks, Backward, Heads, Matrix, Span};
use anyhow::{ensure, Result};
use half::bf16;
use half::slice::HalfFloatSliceExt;

/// Queries per tile of the attention backward: bounds its FP32 score tiles to QUERY_TILE x keys.
const QUERY_TILE: usize = 64;

/// GELU'(z) of the tanh form, in FP32.
pub fn gelu_grad_f32(z: f32) -> f32 {
    const K: f32 = 0.797_884_6;
    let t = (K * (z + 0.044715 * z * z * z)).tanh();
    0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * K * (1.0 + 3.0 * 0.044715 * z * z)
}

impl CpuBackend {
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_now(
        &self,
        q: &HostMat<bf16>,
        kv: &HostMat<bf16>,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        d_o: &HostMat<bf16>,
        lse: &HostMat<f32>,
        delta: &HostMat<f32>,
        dq: &mut HostMat<f32>,
        dkv: &mut HostMat<f32>,
    ) -> Result<()> {
        checks::attention_backward(q, kv, heads, qs, ks, d_o, lse, delta, dq, dkv)?;
        let (hd, width, kvw) = (heads.head_dim, heads.width(), heads.kv_width());
        // The model's count: the backward as twice the forward's FLOPs (docs/design.md, "Training").
        self.flops.attention(heads, qs, ks, causal);
        self.flops.attention(heads, qs, ks, causal);
        let visible = |qpos: usize| if causal { (qpos + 1).saturating_sub(ks.pos0).min(ks.len) } else { ks.len };
        if qs.len == 0 || visible(qs.pos0 + qs.len - 1) == 0 {
            return Ok(());
        }
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let kv_rows = to_f32(&kv.as_slice()[ks.row0 * kv.cols()..(ks.row0 + ks.len) * kv.cols()]);
        let mut dkv_rows = vec![0.0f32; ks.len * 2 * kvw];
        let (mut q_tile, mut do_tile) = (vec![0.0f32; QUERY_TILE * width], vec![0.0f32; QUERY_TILE * width]);
        let (mut p, mut ds) = (vec![0.0f32; QUERY_TILE * ks.len], vec![0.0f32; QUERY_TILE * ks.len]);
        for t0 in (0..qs.len).step_by(QUERY_TILE) {
            let tq = QUERY_TILE.min(qs.len - t0);
            let first_pos = qs.pos0 + t0;
            let kn = visible(first_pos + tq - 1);
            if kn == 0 {
                continue;
            }
            let row0 = qs.row0 + t0;
            q.as_slice()[row0 * width..(row0 + tq) * width].convert_to_f32_slice(&mut q_tile[..tq * width]);
            d_o.as_slice()[row0 * width..(row0 + tq) * width].convert_to_f32_slice(&mut do_tile[..tq * width]);
            for h in 0..heads.heads {
                let g = heads.kv_head(h);
                let (qh, kh, vh, doh) = (&q_tile[h * hd..], &kv_rows[g * hd..], &kv_rows[kvw + g * hd..], &do_tile[h * hd..]);
                // P = exp(scale q k^T - lse), dP = dO v^T, both [tq, kn].
                gemm((tq, hd, kn), scale, qh, (width, 1), kh, (1, 2 * kvw), &mut p, kn, false);
                gemm((tq, hd, kn), 1.0, doh, (width, 1), vh, (1, 2 * kvw), &mut ds, kn, false);
                for i in 0..tq {
                    let r = row0 + i;
                    let (l, dl) = (lse.as_slice()[r * heads.heads + h], delta.as_slice()[r * heads.heads + h]);
                    let n = visible(first_pos + i).min(kn);
                    let (pr, dr) = (&mut p[i * kn..(i + 1) * kn], &mut ds[i * kn..(i + 1) * kn]);
                    for j in 0..kn {
                        let pij = if j < n && l > f32::NEG_INFINITY { (pr[j] - l).exp() } else { 0.0 };
                        pr[j] = pij;
                        dr[j] = pij * (dr[j] - dl);
                    }
                }
                // dQ_h += scale dS K, dK_g += scale dS^T Q_h, dV_g += P^T dO_h.
                let dq_rows = &mut dq.as_mut_slice()[row0 * width + h * hd..];
                gemm((tq, kn, hd), scale, &ds, (kn, 1), kh, (2 * kvw, 1), dq_rows, width, true);
                gemm((kn, tq, hd), scale, &ds, (1, kn), qh, (width, 1), &mut dkv_rows[g * hd..], 2 * kvw, true);
                gemm((kn, tq, hd), 1.0, &p, (1, kn), doh, (width, 1), &mut dkv_rows[kvw + g * hd..], 2 * kvw, true);
            }
        }
        let out = &mut dkv.as_mut_slice()[ks.row0 * 2 * kvw..(ks.row0 + ks.len) * 2 * kvw];
        out.iter_mut().zip(&dkv_rows).for_each(|(a, b)| *a += b);
        Ok(())
    }
}

impl Backward for CpuBackend {
    fn matmul_backward_input(&self, dy: &HostMat<bf16>, w: &HostMat<bf16>, dx: &mut HostMat<bf16>) -> Result<()> {
        checks::matmul_backward_input(dy, w, dx)?;
        self.clock.time(true, || {
            let (m, n, k) = (dy.rows(), dy.cols(), w.rows());
            self.flops.gemm(m, n, k);
            dx.set_rows(m);
            let mut c = vec![0.0f32; m * k];
            gemm((m, n, k), 1.0, &to_f32(dy.as_slice()), (n, 1), &to_f32(w.as_slice()), (1, n), &mut c, k, false);
            dx.as_mut_slice().convert_from_f32_slice(&c);
        });
        Ok(())
    }

    fn matmul_backward_weight(&self, x: &HostMat<bf16>, dy: &HostMat<bf16>, dw: &mut HostMat<f32>) -> Result<()> {
        checks::matmul_backward_weight(x, dy, dw)?;
        self.clock.time(true, || {
            let (m, k, n) = (x.rows(), x.cols(), dy.cols());
            self.flops.gemm(k, m, n);
            gemm((k, m, n), 1.0, &to_f32(x.as_slice()), (1, k), &to_f32(dy.as_slice()), (n, 1), dw.as_mut_slice(), n, true);
        });
        Ok(())
    }

    fn rms_norm_backward(
        &self,
        x: &HostMat<bf16>,
        gain: &HostMat<bf16>,
        dy: &HostMat<bf16>,
        dx: &mut HostMat<bf16>,
        dgain: &mut HostMat<f32>,
    ) -> Result<()> {
        checks::rms_norm_backward(x, gain, dy, dx, dgain)?;
        let d = x.cols();
        let g = to_f32(gain.as_slice());
        let (mut xf, mut dyf) = (vec![0.0f32; d], vec![0.0f32; d]);
        for r in 0..x.rows() {
            x.as_slice()[r * d..(r + 1) * d].convert_to_f32_slice(&mut xf);
            dy.as_slice()[r * d..(r + 1) * d].convert_to_f32_slice(&mut dyf);
            let inv = 1.0 / (xf.iter().map(|v| v * v).sum::<f32>() / d as f32 + 1e-5).sqrt();
            let dot: f32 = (0..d).map(|j| g[j] * dyf[j] * xf[j]).sum();
            let k = inv * inv * inv * dot / d as f32;
            for (j, o) in dx.as_mut_slice()[r * d..(r + 1) * d].iter_mut().enumerate() {
                *o = bf16::from_f32(o.to_f32() + inv * g[j] * dyf[j] - xf[j] * k);
            }
            for (a, j) in dgain.as_mut_slice().iter_mut().zip(0..d) {
                *a += dyf[j] * xf[j] * inv;
            }
        }
        Ok(())
    }

    fn rope_backward(&self, dx: &mut HostMat<bf16>, heads: Heads, span: Span, stride: usize) -> Result<()> {
        checks::rope(dx, heads, span)?;
        let half_dim = heads.head_dim / 2;
        let cols = dx.cols();
        for r in 0..span.len {
            let pos = span.pos0 + r * stride;
            let table: Vec<(f32, f32)> =
                (0..half_dim).map(|i| rope_angle(pos, i, heads.head_dim)).map(|(c, s)| (c as f32, s as f32)).collect();
            let row = &mut dx.as_mut_slice()[(span.row0 + r) * cols..(span.row0 + r + 1) * cols];
            for h in 0..heads.heads {
                let head = &mut row[h * heads.head_dim..(h + 1) * heads.head_dim];
                for (i, &(c, s)) in table.iter().enumerate() {
                    let (a, b) = (head[i].to_f32(), head[i + half_dim].to_f32());
                    head[i] = bf16::from_f32(a * c + b * s);
                    head[i + half_dim] = bf16::from_f32(b * c - a * s);
                }
            }
        }
        Ok(())
    }

    fn gelu_backward(&self, pre: &HostMat<bf16>, dy: &mut HostMat<bf16>) -> Result<()> {
        checks::add(dy, pre)?;
        for (g, z) in dy.as_mut_slice().iter_mut().zip(pre.as_slice()) {
            *g = bf16::from_f32(g.to_f32() * gelu_grad_f32(z.to_f32()));
        }
        Ok(())
    }

    fn swiglu_backward(&self, gate_up: &HostMat<bf16>, dout: &HostMat<bf16>, d_gate_up: &mut HostMat<bf16>) -> Result<()> {
        checks::swiglu(gate_up, dout)?;
        checks::swiglu(d_gate_up, dout)?;
        ensure!(gate_up.rows() == dout.rows(), "swiglu_backward: {} rows of [gate | up], {} of dout", gate_up.rows(), dout.rows());
        let f = dout.cols();
        d_gate_up.set_rows(dout.rows());
        for r in 0..dout.rows() {
            let (gu, dy) = (&gate_up.as_slice()[r * 2 * f..(r + 1) * 2 * f], &dout.as_slice()[r * f..(r + 1) * f]);
            let out = &mut d_gate_up.as_mut_slice()[r * 2 * f..(r + 1) * 2 * f];
            for j in 0..f {
                let (a, b, g) = (gu[j].to_f32(), gu[f + j].to_f32(), dy[j].to_f32());
                let sigma = 1.0 / (1.0 + (-a).exp());
                out[j] = bf16::from_f32(g * b * sigma * (1.0 + a * (1.0 - sigma)));
                out[f + j] = bf16::from_f32(g * silu_f32(a));
            }
        }
        Ok(())
    }

    fn attention_backward_delta(&self, o: &HostMat<bf16>, d_o: &HostMat<bf16>, heads: usize, delta: &mut HostMat<f32>) -> Result<()> {
        checks::attention_backward_delta(o, d_o, heads, delta)?;
        let hd = o.cols() / heads;
        delta.set_rows(o.rows());
        for (r, row) in delta.as_mut_slice().chunks_exact_mut(heads).enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                let at = r * o.cols() + h * hd;
                *v = (at..at + hd).map(|i| o.as_slice()[i].to_f32() * d_o.as_slice()[i].to_f32()).sum();
            }
        }
        Ok(())
    }

    fn attention_backward(
        &self,
        q: &HostMat<bf16>,
        kv: &HostMat<bf16>,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        d_o: &HostMat<bf16>,
        lse: &HostMat<f32>,
        delta: &HostMat<f32>,
        dq: &mut HostMat<f32>,
        dkv: &mut HostMat<f32>,
    ) -> Result<()> {
        self.clock.time(false, || self.attention_backward_now(q, kv, heads, qs, ks, causal, d_o, lse, delta, dq, dkv))
    }

    fn zero_acc(&self, x: &mut HostMat<f32>) -> Result<()> {
        x.as_mut_slice().fill(0.0);
        Ok(())
    }

    fn add_acc(&self, x: &mut HostMat<f32>, y: &HostMat<f32>) -> Result<()> {
        checks::add(x, y)?;
        x.as_mut_slice().iter_mut().zip(y.as_slice()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn copy_acc(&self, src: &HostMat<f32>, dst: &mut HostMat<f32>) -> Result<()> {
        checks::copy_acc(src, dst)?;
        dst.set_rows(src.rows());
        dst.as_mut_slice().copy_from_slice(src.as_slice());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::generator::uniform;

    /// Inputs exactly representable in BF16 (so the FP64 forward and the CPU op see one value).
    fn values(tensor: u64, n: usize, scale: f32) -> Vec<f64> {
        (0..n).map(|i| bf16::from_f32(scale * uniform(5, tensor, i as u64)).to_f64()).collect()
    }

    fn act(be: &CpuBackend, rows: usize, cols: usize, v: &[f64]) -> HostMat<bf16> {
        let mut a = be.alloc_act(rows, cols).unwrap();
        be.upload(&mut a, &v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>()).unwrap();
        a
    }

    /// d/dx_i of sum(f(x) * g) by central differences in FP64, for every i.
    fn finite_difference(x: &[f64], g: &[f64], f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
        let h = 1e-6;
        (0..x.len())
            .map(|i| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += h;
                b[i] -= h;
                let (fa, fb) = (f(&a), f(&b));
                fa.iter().zip(&fb).zip(g).map(|((p, m), gi)| (p - m) * gi).sum::<f64>() / (2.0 * h)
            })
            .collect()
    }

    /// Each computed gradient within `ulps` BF16 ulps of the largest exact one (the ops round
    /// their outputs once to BF16 and sum in FP32, so a few ulps of the scale, no more).
    fn assert_close(what: &str, got: &[f64], want: &[f64], ulps: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let tol = ulps * crate::backend::bf16_ulp(scale);
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= tol, "{what}: worst error {worst:.3e} over {tol:.3e} (scale {scale:.3e})");
        assert!(scale > 0.0, "{what}: a zero gradient checks nothing");
    }

    fn f64s(v: &[bf16]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }

    #[test]
    fn matmul_backward_matches_finite_differences() {
        let be = CpuBackend::new();
        let (m, k, n) = (5, 7, 3);
        let (x, w, g) = (values(1, m * k, 1.0), values(2, k * n, 1.0), values(3, m * n, 1.0));
        let fwd =
            |x: &[f64], w: &[f64]| -> Vec<f64> { (0..m * n).map(|i| (0..k).map(|j| x[i / n * k + j] * w[j * n + i % n]).sum()).collect() };
        let mut dx = be.alloc_act(m, k).unwrap();
        be.matmul_backward_input(&act(&be, m, n, &g), &act(&be, k, n, &w), &mut dx).unwrap();
        assert_close("dx", &f64s(&be.download(&dx).unwrap()), &finite_difference(&x, &g, |x| fwd(x, &w)), 1.0);
        let mut dw = be.alloc_acc(k, n).unwrap();
        be.upload_acc(&mut dw, &vec![0.25; k * n]).unwrap();
        be.matmul_backward_weight(&act(&be, m, k, &x), &act(&be, m, n, &g), &mut dw).unwrap();
        let got: Vec<f64> = dw.as_slice().iter().map(|&v| v as f64 - 0.25).collect();
        assert_close("dw (accumulated)", &got, &finite_difference(&w, &g, |w| fwd(&x, w)), 0.05);
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let be = CpuBackend::new();
        let (rows, d) = (3, 11);
        let (x, gain, g) = (values(1, rows * d, 2.0), values(2, d, 1.5), values(3, rows * d, 1.0));
        let fwd = |x: &[f64], gain: &[f64]| -> Vec<f64> {
            x.chunks(d)
                .flat_map(|r| {
                    let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
                    r.iter().zip(gain).map(move |(v, gv)| v * inv * gv).collect::<Vec<_>>()
                })
                .collect()
        };
        let start = values(4, rows * d, 0.5);
        let mut dx = act(&be, rows, d, &start);
        let mut dgain = be.alloc_acc(1, d).unwrap();
        be.rms_norm_backward(&act(&be, rows, d, &x), &act(&be, 1, d, &gain), &act(&be, rows, d, &g), &mut dx, &mut dgain).unwrap();
        let got: Vec<f64> = f64s(&be.download(&dx).unwrap()).iter().zip(&start).map(|(a, s)| a - s).collect();
        // dx holds start + gradient rounded once: an ulp of the sum on top of the gradient's.
        assert_close("dx (added)", &got, &finite_difference(&x, &g, |x| fwd(x, &gain)), 2.0);
        let dg: Vec<f64> = dgain.as_slice().iter().map(|&v| v as f64).collect();
        assert_close("dgain", &dg, &finite_difference(&gain, &g, |gn| fwd(&x, gn)), 0.05);
    }

    #[test]
    fn rope_gelu_and_swiglu_backward_match_finite_differences() {
        let be = CpuBackend::new();
        let (rows, heads) = (4, Heads::mha(2, 6));
        let w = heads.width();
        let (x, g) = (values(1, rows * w, 1.0), values(3, rows * w, 1.0));
        let (pos0, stride) = (7, 3);
        let rope = |x: &[f64]| -> Vec<f64> {
            let mut y = x.to_vec();
            for r in 0..rows {
                for h in 0..2 {
                    for i in 0..3 {
                        let ang = ((pos0 + r * stride) as f64) * 10000f64.powf(-(2.0 * i as f64) / 6.0);
                        let (a, b) = (x[r * w + h * 6 + i], x[r * w + h * 6 + i + 3]);
                        y[r * w + h * 6 + i] = a * ang.cos() - b * ang.sin();
                        y[r * w + h * 6 + i + 3] = a * ang.sin() + b * ang.cos();
                    }
                }
            }
            y
        };
        let mut dx = act(&be, rows, w, &g);
        be.rope_backward(&mut dx, heads, Span { row0: 0, len: rows, pos0 }, stride).unwrap();
        assert_close("rope", &f64s(&be.download(&dx).unwrap()), &finite_difference(&x, &g, rope), 1.0);

        let gelu = |x: &[f64]| -> Vec<f64> {
            x.iter().map(|z| 0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())).collect()
        };
        let z = values(5, rows * w, 3.0);
        let mut dy = act(&be, rows, w, &g);
        be.gelu_backward(&act(&be, rows, w, &z), &mut dy).unwrap();
        let want = finite_difference(&z, &g, gelu);
        // Elementwise: each value within an ulp of its own magnitude (plus FP32's error).
        for (i, (a, b)) in f64s(&be.download(&dy).unwrap()).iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= crate::backend::bf16_ulp(*b) + 1e-6, "gelu {i}: {a} vs {b}");
        }

        let f = 5;
        let gu = values(6, rows * 2 * f, 3.0);
        let gd = values(7, rows * f, 1.0);
        let swiglu = |gu: &[f64]| -> Vec<f64> {
            (0..rows * f)
                .map(|i| (i / f, i % f))
                .map(|(r, j)| gu[r * 2 * f + j] / (1.0 + (-gu[r * 2 * f + j]).exp()) * gu[r * 2 * f + f + j])
                .collect()
        };
        let mut d = be.alloc_act(rows, 2 * f).unwrap();
        be.swiglu_backward(&act(&be, rows, 2 * f, &gu), &act(&be, rows, f, &gd), &mut d).unwrap();
        for (i, (a, b)) in f64s(&be.download(&d).unwrap()).iter().zip(&finite_difference(&gu, &gd, swiglu)).enumerate() {
            assert!((a - b).abs() <= crate::backend::bf16_ulp(*b) + 1e-6, "swiglu {i}: {a} vs {b}");
        }
    }

    /// Attention's backward over a query block split into two key blocks (as a ring does), with
    /// the forward's merged LSE, grouped K/V and the causal mask, against finite differences of an
    /// FP64 softmax attention: dQ, dK and dV.
    #[test]
    fn attention_backward_over_split_key_blocks_matches_finite_differences() {
        let be = CpuBackend::new();
        let heads = Heads { heads: 4, kv_heads: 2, head_dim: 4 };
        let (n, w, kvw) = (9, heads.width(), heads.kv_width());
        for causal in [true, false] {
            let (q, kv, g) = (values(1, n * w, 2.0), values(2, n * 2 * kvw, 2.0), values(3, n * w, 1.0));
            let fwd = |q: &[f64], kv: &[f64]| -> Vec<f64> {
                let mut o = vec![0.0; n * w];
                for h in 0..4 {
                    let kh = h / 2;
                    for i in 0..n {
                        let keys = if causal { i + 1 } else { n };
                        let s: Vec<f64> = (0..keys)
                            .map(|j| (0..4).map(|c| q[i * w + h * 4 + c] * kv[j * 2 * kvw + kh * 4 + c]).sum::<f64>() / 2.0)
                            .collect();
                        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                        for (j, sj) in s.iter().enumerate() {
                            for c in 0..4 {
                                o[i * w + h * 4 + c] += (sj - mx).exp() / z * kv[j * 2 * kvw + kvw + kh * 4 + c];
                            }
                        }
                    }
                }
                o
            };
            let (qa, kva, ga) = (act(&be, n, w, &q), act(&be, n, 2 * kvw, &kv), act(&be, n, w, &g));
            let (mut o, mut lse) = (be.alloc_acc(n, w).unwrap(), be.alloc_acc(n, 4).unwrap());
            be.attention_reset(&mut o, &mut lse).unwrap();
            let blocks = [Span { row0: 0, len: 4, pos0: 0 }, Span { row0: 4, len: 5, pos0: 4 }];
            let qs = Span { row0: 0, len: n, pos0: 0 };
            for ks in blocks {
                be.attention(&qa, &kva, heads, qs, ks, causal, &mut o, &mut lse).unwrap();
            }
            let mut out = be.alloc_act(n, w).unwrap();
            be.attention_store(&o, &mut out).unwrap();
            let mut delta = be.alloc_acc(n, 4).unwrap();
            be.attention_backward_delta(&out, &ga, 4, &mut delta).unwrap();
            let (mut dq, mut dkv) = (be.alloc_acc(n, w).unwrap(), be.alloc_acc(n, 2 * kvw).unwrap());
            for ks in blocks {
                be.attention_backward(&qa, &kva, heads, qs, ks, causal, &ga, &lse, &delta, &mut dq, &mut dkv).unwrap();
            }
            let f = |v: &HostMat<f32>| v.as_slice().iter().map(|&x| x as f64).collect::<Vec<f64>>();
            // delta from the BF16-rounded output: a BF16 ulp of O per term, so a few ulps of the scale.
            assert_close(&format!("dq causal {causal}"), &f(&dq), &finite_difference(&q, &g, |q| fwd(q, &kv)), 2.0);
            assert_close(&format!("dkv causal {causal}"), &f(&dkv), &finite_difference(&kv, &g, |kv| fwd(&q, kv)), 2.0);
        }
    }
}
