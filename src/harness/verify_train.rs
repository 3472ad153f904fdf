//! `verify --train`: a strategy's training step once, its input gradients and every weight
//! gradient gathered whole on rank 0, each compared with the single-rank reference's and with
//! the FP64 oracle's backward, at tolerances derived as the forward's are.

use super::verify::{judge, tolerance, within, Diff, REFERENCE_VS_FP64_LIMIT};
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{MlpAct, ModelConfig, RunConfig, StrategyKind};
use crate::model::oracle::backward::{train as oracle_train, Gradients as Exact, LayerGradients};
use crate::model::Shard;
use crate::output;
use crate::strategy::{self, reference::Reference, Strategy};
use anyhow::{ensure, Context, Result};
use half::bf16;
use std::path::Path;

/// A rank's gradients on the wire to rank 0: its input gradients (BF16) and, per layer, its
/// seven FP32 weight gradients as the bits of BF16 pairs (`gather_to_root` moves BF16).
fn encode<B: Backend, C: Communicator<B>>(be: &B, strat: &dyn Strategy<B, C>) -> Result<(Vec<bf16>, Vec<bf16>)> {
    let g = strat.gradients().context("the strategy kept no gradients")?;
    let input = g.input.map_or(Ok(Vec::new()), |x| be.download(x))?;
    let mut weights = Vec::new();
    for layer in g.layers {
        for acc in layer.each() {
            weights.extend(be.download_acc(acc)?.into_iter().flat_map(|v| {
                let bits = v.to_bits();
                [bf16::from_bits(bits as u16), bf16::from_bits((bits >> 16) as u16)]
            }));
        }
    }
    Ok((input, weights))
}

fn decode_f32(bits: &[bf16]) -> Vec<f64> {
    bits.chunks_exact(2).map(|p| f32::from_bits(p[0].to_bits() as u32 | (p[1].to_bits() as u32) << 16) as f64).collect()
}

/// Every layer's gradients, whole, from each rank's shard (`strategy::placement`): a value
/// held by several ranks (replicated weights, reduced alike) is taken from the first.
fn assemble_weights(cfg: &RunConfig, parts: &[Vec<bf16>]) -> Result<Vec<LayerGradients>> {
    let m = &cfg.model;
    let nan = |n: usize| vec![f64::NAN; n];
    let (d, f, hd, kvd) = (m.d_model, m.mlp, m.head_dim(), m.kv_dim());
    let (qkv_cols, up_cols) = (d + 2 * kvd, f * m.mlp_act.up_factor());
    let mut out: Vec<LayerGradients> = (0..m.layers)
        .map(|_| LayerGradients {
            norm1: nan(d),
            w_qkv: nan(d * qkv_cols),
            w_o: nan(d * d),
            norm2: nan(d),
            w_up: nan(d * up_cols),
            w_down: nan(f * d),
        })
        .collect();
    for (rank, part) in parts.iter().enumerate() {
        let place = strategy::placement(cfg, rank);
        let values = decode_f32(part);
        let sizes = shard_sizes(m, &place.shard);
        let per_layer: usize = sizes.iter().sum();
        ensure!(
            values.len() == per_layer * place.layers.len(),
            "rank {rank} sent {} gradient values, expected {}",
            values.len(),
            per_layer * place.layers.len()
        );
        for (k, l) in place.layers.clone().enumerate() {
            let mut at = k * per_layer;
            let mut next = |n: usize| {
                at += n;
                &values[at - n..at]
            };
            let (sh, g) = (&place.shard, &mut out[l]);
            let (w, kvw, fs) = (sh.heads.len() * hd, sh.kv_heads.len() * hd, sh.mlp.len());
            let put = |dst: &mut [f64], cols: usize, src: &[f64], src_cols: usize, blocks: &[(usize, usize, usize)]| {
                // (source column, destination column, width) blocks of every row.
                for r in 0..src.len() / src_cols.max(1) {
                    for &(sc, dc, n) in blocks {
                        for j in 0..n {
                            let o = &mut dst[r * cols + dc + j];
                            if o.is_nan() {
                                *o = src[r * src_cols + sc + j];
                            }
                        }
                    }
                }
            };
            put(&mut g.norm1, d, next(d), d, &[(0, 0, d)]);
            put(&mut g.w_qkv, qkv_cols, next(d * w), w, &[(0, sh.heads.start * hd, w)]);
            let kv = next(d * 2 * kvw);
            put(&mut g.w_qkv, qkv_cols, kv, 2 * kvw, &[(0, d + sh.kv_heads.start * hd, kvw), (kvw, d + kvd + sh.kv_heads.start * hd, kvw)]);
            // W_o's rows are the shard's heads: offset the rows by placing into the whole tensor's.
            let wo = next(w * d);
            put(&mut g.w_o[sh.heads.start * hd * d..], d, wo, d, &[(0, 0, d)]);
            put(&mut g.norm2, d, next(d), d, &[(0, 0, d)]);
            let up = next(d * fs * m.mlp_act.up_factor());
            let blocks: Vec<(usize, usize, usize)> = match m.mlp_act {
                MlpAct::Gelu => vec![(0, sh.mlp.start, fs)],
                MlpAct::Swiglu => vec![(0, sh.mlp.start, fs), (fs, f + sh.mlp.start, fs)],
            };
            put(&mut g.w_up, up_cols, up, fs * m.mlp_act.up_factor(), &blocks);
            let down = next(fs * d);
            put(&mut g.w_down[sh.mlp.start * d..], d, down, d, &[(0, 0, d)]);
        }
    }
    for (l, g) in out.iter().enumerate() {
        for (name, v) in g.named() {
            ensure!(v.iter().all(|x| !x.is_nan()), "layer {l} {name}: the ranks' gradients do not cover the whole tensor");
        }
    }
    Ok(out)
}

/// Values of each of a layer's seven gradients on a rank holding `shard`, in `LayerGrads::each`'s order.
fn shard_sizes(m: &ModelConfig, shard: &Shard) -> [usize; 7] {
    let heads = shard.heads(m);
    let (d, w, kvw, f) = (m.d_model, heads.width(), heads.kv_width(), shard.mlp.len());
    [d, d * w, d * 2 * kvw, w * d, d, d * f * m.mlp_act.up_factor(), f * d]
}

/// One weight gradient against the reference's and the oracle's, on one line; its verdict.
fn judge_row(name: &str, got: &[f64], reference: &[f64], exact: &[f64]) -> bool {
    let (vs_ref, ref_vs_exact) = (Diff::between(got, reference), Diff::between(reference, exact));
    let tol = tolerance(ref_vs_exact, reference.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    let pass = got.iter().all(|v| v.is_finite()) && ref_vs_exact.rel_l2 <= REFERENCE_VS_FP64_LIMIT && within(vs_ref, tol);
    crate::outln!(
        "  {name:<16} {:>10.3e} {:>10.3e} {:>10.3e}   {:>10.3e} {:>10.3e} {:>10.3e}  {}",
        vs_ref.rel_l2,
        tol.rel_l2,
        ref_vs_exact.rel_l2,
        vs_ref.max_abs,
        tol.max_abs,
        ref_vs_exact.max_abs,
        if pass { "ok" } else { "FAIL" }
    );
    pass
}

/// The training step of `cfg` on every rank, compared on rank 0; the verdict every rank agrees on.
pub fn verify_train<B: Backend + 'static, C: Communicator<B> + 'static>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    save: Option<&Path>,
) -> Result<bool> {
    let mut strat = strategy::build(cfg, be, comm)?;
    strat.train_step(be, comm, true)?;
    let (input, weights) = encode(be, strat.as_ref())?;
    drop(strat);
    let inputs = comm.gather_to_root(&input)?;
    let weights = comm.gather_to_root(&weights)?;
    let ok = match (inputs, weights) {
        (Some(inputs), Some(weights)) => compare_on_root::<B, C>(cfg, be, comm, &inputs, &weights, save)?,
        _ => true,
    };
    comm.all_agree(ok)
}

fn compare_on_root<B: Backend + 'static, C: Communicator<B> + 'static>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    inputs: &[Vec<bf16>],
    weights: &[Vec<bf16>],
    save: Option<&Path>,
) -> Result<bool> {
    let m = &cfg.model;
    // dL/dX lives where the input enters: every rank's own tokens, or a pipeline's first stage
    // (where one TP rank reports it); a rank that holds none sends none.
    let holds = |rank: usize| (!inputs[rank].is_empty()).then(|| strategy::placement(cfg, rank).tokens);
    let got_input = super::verify::assemble_rows(cfg, inputs, &holds)?;
    let got = assemble_weights(cfg, weights)?;
    let ref_cfg = RunConfig { strategy: StrategyKind::Reference, ..cfg.clone() };
    let mut reference = Reference::new(&ref_cfg, be)?;
    Strategy::<B, C>::train_step(&mut reference, be, comm, true)?;
    let (ref_input, ref_weights) = encode::<B, C>(be, &reference)?;
    let ref_input: Vec<f64> = ref_input.iter().map(|v| v.to_f64()).collect();
    let ref_weights = assemble_weights(&ref_cfg, &[ref_weights])?;
    let exact: Exact = oracle_train(m, cfg.seed, cfg.causal, 0..m.batch);
    let name = cfg.strategy.name();
    let mut pass = judge(name, "gradient of the input hidden states (dL/dX)", &got_input, &ref_input, &exact.input);
    crate::outln!(" weight gradients (rel L2: vs reference, tolerance, reference vs FP64; then max abs the same):");
    for l in 0..m.layers {
        for ((tensor, g), ((_, r), (_, e))) in
            got[l].named().into_iter().zip(ref_weights[l].named().into_iter().zip(exact.layers[l].named()))
        {
            pass &= judge_row(&format!("layer {l} {tensor}"), g, r, e);
        }
    }
    crate::outln!("  (tolerance: 2 x reference vs FP64, plus 2^-10 on rel L2 and one BF16 ulp of the largest value on max abs)");
    crate::outln!("{}", if pass { "PASS" } else { "FAIL" });
    if let Some(path) = save {
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (d, qkv_cols, up_cols) = (m.d_model, m.d_model + 2 * m.kv_dim(), m.mlp * m.mlp_act.up_factor());
        let shapes: [Vec<usize>; 6] = [vec![d], vec![d, qkv_cols], vec![d, d], vec![d], vec![d, up_cols], vec![m.mlp, d]];
        let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = vec![("grad/input".into(), vec![m.batch, m.seq_len, d], f32s(&got_input))];
        for (l, g) in got.iter().enumerate() {
            for ((tensor, v), shape) in g.named().into_iter().zip(&shapes) {
                owned.push((format!("grad/layer{l}/{tensor}"), shape.clone(), f32s(v)));
            }
        }
        let sets: Vec<(&str, &[usize], &[f32])> = owned.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
        output::write_hidden_states(path, &sets, &cfg.describe())?;
        crate::outln!("gradients written to {} (grad/input [{}, {}, {d}] and grad/layer{{l}}/{{norm1, w_qkv, w_o, norm2, w_up, w_down}}, whole, FP32)", path.display(), m.batch, m.seq_len);
    }
    Ok(pass)
}
