//! The backward ops' cases of `selftest` (`Backward`): each op on fresh inputs at awkward sizes,
//! its outputs poisoned or started from known values (an accumulator must add, not overwrite),
//! and each case's tolerance derived per value from what the two sides may round differently:
//! one BF16 rounding for element-wise BF16 outputs; for sums, the FP32 error bound of the sum (its
//! terms' magnitudes times (n + 2) 2^-24, for both sides), and one BF16 rounding more where the
//! sum is stored in BF16; for the flash backward kernel, which rounds P and dS to BF16, 2^-8 of
//! its terms' magnitudes more.

use super::case::{act, poisoned, ring_calls, values, Output, Tolerance};
use crate::backend::cuda::device::AttentionKernel;
use crate::backend::{bf16_ulp, Backend, Backward, Heads, Span};
use anyhow::Result;
use half::bf16;

/// One backward op with its inputs (host data) and shapes.
pub enum Step {
    /// dx [m, k] = dy [m, n] w [k, n]^T.
    MatmulInput {
        m: usize,
        n: usize,
        k: usize,
        dy: Vec<bf16>,
        w: Vec<bf16>,
    },
    /// dw [k, n] = start + x [m, k]^T dy [m, n], FP32.
    MatmulWeight {
        m: usize,
        k: usize,
        n: usize,
        x: Vec<bf16>,
        dy: Vec<bf16>,
        start: Vec<f32>,
    },
    /// dx (starting at `dx`) and dgain (starting at 0.25) of RMSNorm; returns dx then dgain.
    RmsNorm {
        rows: usize,
        cols: usize,
        x: Vec<bf16>,
        gain: Vec<bf16>,
        dy: Vec<bf16>,
        dx: Vec<bf16>,
    },
    Rope {
        rows: usize,
        heads: Heads,
        x: Vec<bf16>,
        span: Span,
        stride: usize,
    },
    Gelu {
        pre: Vec<bf16>,
        dy: Vec<bf16>,
    },
    Swiglu {
        rows: usize,
        f: usize,
        gate_up: Vec<bf16>,
        dout: Vec<bf16>,
    },
    Delta {
        rows: usize,
        heads: usize,
        o: Vec<bf16>,
        d_o: Vec<bf16>,
    },
    /// Two backward calls (earlier keys, then the diagonal) into dq and dkv started at 0.5, from
    /// the forward's final lse and delta (`forward_stats`, on the CPU, the same for both sides);
    /// returns dq then dkv.
    Attention {
        rows: usize,
        heads: Heads,
        q: Vec<bf16>,
        kv: Vec<bf16>,
        d_o: Vec<bf16>,
        calls: [(Span, Span); 2],
        causal: bool,
    },
    /// zero_acc, add_acc and copy_acc on NaN-poisoned buffers; returns the zeroed, the sum, the copy.
    Accumulators {
        x: Vec<f32>,
        y: Vec<f32>,
    },
}

fn acc<B: Backend>(be: &B, rows: usize, cols: usize, data: &[f32]) -> Result<B::Acc> {
    let mut a = be.alloc_acc(rows, cols)?;
    be.upload_acc(&mut a, data)?;
    Ok(a)
}

/// Run one backward step on a backend.
pub fn execute<B: Backend>(be: &B, step: &Step) -> Result<Output> {
    Ok(match step {
        Step::MatmulInput { m, n, k, dy, w } => {
            let (dy, w) = (act(be, *m, *n, dy)?, act(be, *k, *n, w)?);
            let mut dx = poisoned(be, *m, *k)?;
            be.matmul_backward_input(&dy, &w, &mut dx)?;
            Output::Bf16(be.download(&dx)?)
        }
        Step::MatmulWeight { m, k, n, x, dy, start } => {
            let (x, dy) = (act(be, *m, *k, x)?, act(be, *m, *n, dy)?);
            let mut dw = acc(be, *k, *n, start)?;
            be.matmul_backward_weight(&x, &dy, &mut dw)?;
            Output::F32(be.download_acc(&dw)?)
        }
        Step::RmsNorm { rows, cols, x, gain, dy, dx } => {
            let (x, g, dy) = (act(be, *rows, *cols, x)?, act(be, 1, *cols, gain)?, act(be, *rows, *cols, dy)?);
            let mut dx = act(be, *rows, *cols, dx)?;
            let mut dgain = acc(be, 1, *cols, &vec![0.25; *cols])?;
            be.rms_norm_backward(&x, &g, &dy, &mut dx, &mut dgain)?;
            let mut all: Vec<f32> = be.download(&dx)?.iter().map(|v| v.to_f32()).collect();
            all.extend(be.download_acc(&dgain)?);
            Output::F32(all)
        }
        Step::Rope { rows, heads, x, span, stride } => {
            let mut x = act(be, *rows, x.len() / rows, x)?;
            be.rope_backward(&mut x, *heads, *span, *stride)?;
            Output::Bf16(be.download(&x)?)
        }
        Step::Gelu { pre, dy } => {
            let (pre, mut dy) = (act(be, 1, pre.len(), pre)?, act(be, 1, dy.len(), dy)?);
            be.gelu_backward(&pre, &mut dy)?;
            Output::Bf16(be.download(&dy)?)
        }
        Step::Swiglu { rows, f, gate_up, dout } => {
            let (gu, dout) = (act(be, *rows, 2 * f, gate_up)?, act(be, *rows, *f, dout)?);
            let mut d = poisoned(be, *rows, 2 * f)?;
            be.swiglu_backward(&gu, &dout, &mut d)?;
            Output::Bf16(be.download(&d)?)
        }
        Step::Delta { rows, heads, o, d_o } => {
            let cols = o.len() / rows;
            let (o, d_o) = (act(be, *rows, cols, o)?, act(be, *rows, cols, d_o)?);
            let mut delta = acc(be, *rows, *heads, &vec![f32::NAN; rows * heads])?;
            be.attention_backward_delta(&o, &d_o, *heads, &mut delta)?;
            Output::F32(be.download_acc(&delta)?)
        }
        Step::Attention { rows, heads, q, kv, d_o, calls, causal } => {
            let (lse, delta) = forward_stats(*rows, *heads, q, kv, d_o, calls, *causal)?;
            let (w, kvw) = (heads.width(), 2 * heads.kv_width());
            let (q, kv, d_o) = (act(be, *rows, w, q)?, act(be, *rows, kvw, kv)?, act(be, *rows, w, d_o)?);
            let (lse, delta) = (acc(be, *rows, heads.heads, &lse)?, acc(be, *rows, heads.heads, &delta)?);
            let (mut dq, mut dkv) = (acc(be, *rows, w, &vec![0.5; rows * w])?, acc(be, *rows, kvw, &vec![0.5; rows * kvw])?);
            for (qs, ks) in calls {
                be.attention_backward(&q, &kv, *heads, *qs, *ks, *causal, &d_o, &lse, &delta, &mut dq, &mut dkv)?;
            }
            let mut all = be.download_acc(&dq)?;
            all.extend(be.download_acc(&dkv)?);
            Output::F32(all)
        }
        Step::Accumulators { x, y } => {
            let n = x.len();
            let mut zeroed = acc(be, 1, n, &vec![f32::NAN; n])?;
            be.zero_acc(&mut zeroed)?;
            let (mut sum, y) = (acc(be, 1, n, x)?, acc(be, 1, n, y)?);
            be.add_acc(&mut sum, &y)?;
            let mut copy = acc(be, 1, n, &vec![f32::NAN; n])?;
            be.copy_acc(&sum, &mut copy)?;
            let mut all = be.download_acc(&zeroed)?;
            all.extend(be.download_acc(&sum)?);
            all.extend(be.download_acc(&copy)?);
            Output::F32(all)
        }
    })
}

/// The FP32 error bound of a sum of `n` terms whose magnitudes add to `mag`, for each side.
fn fp32_sum(n: usize, mag: f64) -> f64 {
    2.0 * (n + 2) as f64 * 2f64.powi(-24) * mag
}

fn f(v: &[bf16], i: usize) -> f64 {
    v[i].to_f64()
}

/// A step's tolerance as `steps` states it: bit for bit for the accumulators' copies and sums,
/// one BF16 rounding for element-wise BF16 outputs, and for sums derived per value from the inputs
/// (`bounds`, once the case runs), the flash backward kernel's rounding included where `kernel`
/// runs it at the case's head dim.
pub fn tolerance(step: &Step, kernel: AttentionKernel) -> Tolerance {
    match step {
        Step::Accumulators { .. } => Tolerance::Exact,
        Step::MatmulInput { .. } | Step::MatmulWeight { .. } | Step::RmsNorm { .. } | Step::Delta { .. } => {
            Tolerance::Derived { flash: false }
        }
        Step::Attention { heads, .. } => Tolerance::Derived { flash: kernel.backward_flash(heads.head_dim).is_some() },
        _ => Tolerance::OneUlp,
    }
}

/// The per-value bounds of a step whose outputs are FP32 sums (`Tolerance::Derived`), from its
/// inputs; `flash` where the GPU's attention backward rounds P and dS to BF16.
pub fn bounds(step: &Step, flash: bool) -> Result<Tolerance> {
    Ok(match step {
        // BF16 outputs of FP32 sums: one BF16 rounding of values an FP32 error apart (a sum that
        // cancels to near zero can differ by more than its own ulp).
        Step::MatmulInput { m, n, k, dy, w } => Tolerance::Bounds(
            (0..m * k)
                .map(|i| {
                    let (r, c) = (i / k, i % k);
                    let terms = (0..*n).map(|p| f(dy, r * n + p) * f(w, c * n + p));
                    let (sum, mag) = terms.fold((0.0f64, 0.0f64), |(s, a), t| (s + t, a + t.abs()));
                    bf16_ulp(sum.abs() + fp32_sum(*n, mag)) + fp32_sum(*n, mag)
                })
                .collect(),
        ),
        Step::MatmulWeight { m, k, n, x, dy, start } => Tolerance::Bounds(
            (0..k * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    let mag: f64 = (0..*m).map(|p| (f(x, p * k + r) * f(dy, p * n + c)).abs()).sum();
                    fp32_sum(*m, mag + start[i].abs() as f64)
                })
                .collect(),
        ),
        Step::RmsNorm { rows, cols, x, gain, dy, dx } => {
            let (mut b, mut mag_g) = (Vec::with_capacity(rows * cols + cols), vec![0.25f64; *cols]);
            for r in 0..*rows {
                let at = |j: usize| r * cols + j;
                let ss: f64 = (0..*cols).map(|j| f(x, at(j)).powi(2)).sum();
                let inv = 1.0 / (ss / *cols as f64 + 1e-5).sqrt();
                let dot_mag: f64 = (0..*cols).map(|j| (f(gain, j) * f(dy, at(j)) * f(x, at(j))).abs()).sum();
                let dot: f64 = (0..*cols).map(|j| f(gain, j) * f(dy, at(j)) * f(x, at(j))).sum();
                for (j, g_mag) in mag_g.iter_mut().enumerate() {
                    let grad = inv * f(gain, j) * f(dy, at(j)) - f(x, at(j)) * inv.powi(3) * dot / *cols as f64;
                    let mag = f(dx, at(j)).abs()
                        + (inv * f(gain, j) * f(dy, at(j))).abs()
                        + f(x, at(j)).abs() * inv.powi(3) * dot_mag / *cols as f64;
                    // One BF16 rounding of values an FP32 error apart.
                    b.push(bf16_ulp((f(dx, at(j)) + grad).abs() + fp32_sum(*cols, mag)) + fp32_sum(*cols, mag));
                    *g_mag += (f(dy, at(j)) * f(x, at(j)) * inv).abs();
                }
            }
            // dgain's terms carry each row's inverse norm (itself an FP32 sum over the row).
            b.extend(mag_g.iter().map(|&m| fp32_sum(rows + cols, m)));
            Tolerance::Bounds(b)
        }
        Step::Delta { rows, heads, o, d_o } => {
            let hd = o.len() / rows / heads;
            Tolerance::Bounds(
                (0..rows * heads).map(|i| fp32_sum(hd, (0..hd).map(|e| (f(o, i * hd + e) * f(d_o, i * hd + e)).abs()).sum())).collect(),
            )
        }
        Step::Attention { rows, heads, q, kv, d_o, calls, causal } => {
            let (lse, delta) = forward_stats(*rows, *heads, q, kv, d_o, calls, *causal)?;
            attention_bounds(*rows, *heads, (q, kv, d_o), (&lse, &delta), calls, *causal, flash)
        }
        _ => anyhow::bail!("selftest: a backward case without derived bounds"),
    })
}

/// Per value of [dq | dkv]: the flash kernel's BF16 rounding of P and dS (2^-8 of the terms'
/// magnitudes, where it runs) and the FP32 error of the sums, on both sides, plus the FP32
/// rounding of adding to the accumulators' start.
fn attention_bounds(
    rows: usize,
    heads: Heads,
    (q, kv, d_o): (&[bf16], &[bf16], &[bf16]),
    (lse, delta): (&[f32], &[f32]),
    calls: &[(Span, Span); 2],
    causal: bool,
    flash: bool,
) -> Tolerance {
    let (hd, w, kvw) = (heads.head_dim, heads.width(), heads.kv_width());
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut mag_q, mut mag_kv) = (vec![0.0f64; rows * w], vec![0.0f64; rows * 2 * kvw]);
    let (mut n_q, mut n_kv) = (vec![0usize; rows * w], vec![0usize; rows * 2 * kvw]);
    for (qs, ks) in calls {
        for i in 0..qs.len {
            let r = qs.row0 + i;
            for h in 0..heads.heads {
                let (l, dl) = (lse[r * heads.heads + h] as f64, delta[r * heads.heads + h] as f64);
                if l == f64::NEG_INFINITY {
                    continue;
                }
                let g = heads.kv_head(h);
                for j in 0..ks.len {
                    if causal && ks.pos0 + j > qs.pos0 + i {
                        continue;
                    }
                    let kr = ks.row0 + j;
                    let (qa, ka, va) = (r * w + h * hd, kr * 2 * kvw + g * hd, kr * 2 * kvw + kvw + g * hd);
                    let s: f64 = (0..hd).map(|e| f(q, qa + e) * f(kv, ka + e)).sum::<f64>() * scale;
                    let p = (s - l).exp();
                    let dp_mag: f64 = (0..hd).map(|e| (f(d_o, qa + e) * f(kv, va + e)).abs()).sum();
                    let ds_mag = p * (dp_mag + dl.abs());
                    for e in 0..hd {
                        mag_q[qa + e] += scale * ds_mag * f(kv, ka + e).abs();
                        n_q[qa + e] += 1;
                        mag_kv[ka + e] += scale * ds_mag * f(q, qa + e).abs();
                        mag_kv[va + e] += p * f(d_o, qa + e).abs();
                        n_kv[ka + e] += 1;
                        n_kv[va + e] += 1;
                    }
                }
            }
        }
    }
    let rounding = if flash { 2f64.powi(-8) } else { 0.0 };
    let bound = |mag: f64, n: usize| 2.0 * (rounding * mag + fp32_sum(n + hd, mag) / 2.0) + 2f64.powi(-23) * (0.5 + mag);
    let b = mag_q.iter().zip(&n_q).chain(mag_kv.iter().zip(&n_kv)).map(|(&m, &n)| 2.0 * bound(m, n)).collect();
    Tolerance::Bounds(b)
}

/// The forward's final lse and delta = rowsum(dO O) of an attention case, on the CPU backend:
/// realistic inputs for its backward (P = exp(S - lse) at most 1).
fn forward_stats(
    rows: usize,
    heads: Heads,
    q: &[bf16],
    kv: &[bf16],
    d_o: &[bf16],
    calls: &[(Span, Span); 2],
    causal: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let be = crate::backend::cpu::CpuBackend::new();
    let (w, kvw) = (heads.width(), 2 * heads.kv_width());
    let (q, kv, d_o) = (act(&be, rows, w, q)?, act(&be, rows, kvw, kv)?, act(&be, rows, w, d_o)?);
    let (mut o, mut lse) = (be.alloc_acc(rows, w)?, be.alloc_acc(rows, heads.heads)?);
    be.attention_reset(&mut o, &mut lse)?;
    for (qs, ks) in calls {
        be.attention(&q, &kv, heads, *qs, *ks, causal, &mut o, &mut lse)?;
    }
    let mut out = be.alloc_act(rows, w)?;
    be.attention_store(&o, &mut out)?;
    let mut delta = be.alloc_acc(rows, heads.heads)?;
    be.attention_backward_delta(&out, &d_o, heads.heads, &mut delta)?;
    Ok((be.download_acc(&lse)?, be.download_acc(&delta)?))
}

/// The backward cases, named as `selftest` prints them.
pub fn steps() -> Vec<(String, Step)> {
    let mut v = Vec::new();
    for (i, &(m, n, k)) in [(1usize, 96usize, 64usize), (113, 29, 37), (257, 512, 256)].iter().enumerate() {
        let (dy, w) = (values(110 + i as u64, m * n, 1.0), values(120 + i as u64, k * n, 0.1));
        v.push((format!("matmul_backward_input {m} x {n} x {k}"), Step::MatmulInput { m, n, k, dy, w }));
        let (x, start) = (values(130 + i as u64, m * k, 1.0), values(140 + i as u64, k * n, 0.5).iter().map(|v| v.to_f32()).collect());
        let dy = values(150 + i as u64, m * n, 1.0);
        v.push((format!("matmul_backward_weight {m} x {k} x {n} (accumulated)"), Step::MatmulWeight { m, k, n, x, dy, start }));
    }
    for (i, &(rows, cols)) in [(1usize, 64usize), (33, 4096), (300, 200)].iter().enumerate() {
        let s = 160 + 4 * i as u64;
        let (x, gain, dy, dx) =
            (values(s, rows * cols, 2.0), values(s + 1, cols, 1.0), values(s + 2, rows * cols, 1.0), values(s + 3, rows * cols, 0.5));
        v.push((format!("rms_norm_backward {rows} x {cols} (added)"), Step::RmsNorm { rows, cols, x, gain, dy, dx }));
    }
    for (i, &(rows, heads, hd, pos0, stride)) in [(97usize, 4usize, 128usize, 99_903usize, 1usize), (97, 2, 128, 5, 16)].iter().enumerate()
    {
        let h = Heads::mha(heads, hd);
        let span = Span { row0: rows / 3, len: rows - rows / 3, pos0 };
        v.push((
            format!("rope_backward {rows} rows, {heads} x {hd}, from position {pos0}, every {stride}"),
            Step::Rope { rows, heads: h, x: values(180 + i as u64, rows * 2 * h.width(), 1.0), span, stride },
        ));
    }
    for n in [1usize, 100_003] {
        v.push((format!("gelu_backward {n}"), Step::Gelu { pre: values(190, n, 4.0), dy: values(191, n, 1.0) }));
    }
    for (rows, f) in [(1usize, 1usize), (97, 333)] {
        v.push((
            format!("swiglu_backward {rows} x {f}"),
            Step::Swiglu { rows, f, gate_up: values(192, rows * 2 * f, 6.0), dout: values(193, rows * f, 1.0) },
        ));
    }
    v.push((
        "attention_backward_delta 97 x 3 heads of 80".into(),
        Step::Delta { rows: 97, heads: 3, o: values(194, 97 * 240, 2.0), d_o: values(195, 97 * 240, 2.0) },
    ));
    // Head dims 64 and 128 run the flash backward kernel on the GPU, the others the plain pair;
    // lengths straddle its 64-key tiles, the queries start off a tile boundary.
    for (i, &(rows, hd, causal, nh, nkv)) in [
        (1usize, 64usize, true, 2usize, 2usize),
        (97, 128, true, 2, 2),
        (150, 64, false, 4, 2),
        (201, 128, true, 4, 1),
        (190, 32, true, 2, 2),
        (129, 80, false, 2, 2),
    ]
    .iter()
    .enumerate()
    {
        let heads = Heads { heads: nh, kv_heads: nkv, head_dim: hd };
        let calls = ring_calls(rows);
        let s = 200 + 3 * i as u64;
        let (qv, kv, d_o) = (
            values(s, rows * heads.width(), 3.0),
            values(s + 1, rows * 2 * heads.kv_width(), 3.0),
            values(s + 2, rows * heads.width(), 1.0),
        );
        let kv_label = if nkv == nh { String::new() } else { format!(" ({nkv} K/V)") };
        v.push((
            format!("attention_backward {rows} rows, {nh} x {hd}{kv_label}, {}", if causal { "causal" } else { "full" }),
            Step::Attention { rows, heads, q: qv, kv, d_o, calls, causal },
        ));
    }
    let (x, y) = (values(230, 1023, 8.0), values(231, 1023, 8.0));
    v.push((
        "zero_acc, add_acc, copy_acc 1023".into(),
        Step::Accumulators { x: x.iter().map(|v| v.to_f32()).collect(), y: y.iter().map(|v| v.to_f32()).collect() },
    ));
    v
}
