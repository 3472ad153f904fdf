//! `verify`: a strategy runs once, its final hidden states are gathered to rank 0 in global token
//! order and compared with the single-rank reference, with a tolerance measured from the
//! reference's own distance to the FP64 oracle.

use crate::backend::{bf16_ulp, Backend};
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, StrategyKind};
use crate::metrics::flops;
use crate::model::oracle;
use crate::output;
use crate::strategy::{self, reference::Reference, Strategy};
use crate::topology::LocalTokens;
use anyhow::{ensure, Result};
use half::bf16;
use std::path::Path;

/// Errors between two outputs of the same shape.
#[derive(Clone, Copy, Debug)]
pub struct Diff {
    /// ||a - b|| / ||b||
    pub rel_l2: f64,
    pub max_abs: f64,
}

impl Diff {
    pub fn between(a: &[f64], b: &[f64]) -> Diff {
        assert_eq!(a.len(), b.len());
        let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(b) {
            let d = x - y;
            num += d * d;
            den += y * y;
            // NaN must never pass: f64::max would drop it.
            max_abs = if d.abs() > max_abs || d.is_nan() { d.abs() } else { max_abs };
        }
        Diff { rel_l2: (num / den).sqrt(), max_abs }
    }
}

/// The acceptance rule (STYLE.md, item 9): a strategy may differ from the reference by at most twice
/// what the reference itself differs from the FP64 oracle (both are BF16 computations of the same
/// maths with roundings in different places), plus a floor: 2^-10 for the relative L2 error, and
/// for the max abs error one BF16 ulp at the largest output magnitude, since a single rounding that
/// goes the other way moves an element by that much.
pub fn tolerance(reference_vs_oracle: Diff, max_magnitude: f64) -> Diff {
    Diff { rel_l2: 2.0 * reference_vs_oracle.rel_l2 + 1.0 / 1024.0, max_abs: 2.0 * reference_vs_oracle.max_abs + bf16_ulp(max_magnitude) }
}

pub fn within(d: Diff, tol: Diff) -> bool {
    // Written so that NaN fails.
    d.rel_l2 <= tol.rel_l2 && d.max_abs <= tol.max_abs
}

/// How far (relative L2) the BF16 reference may be from the FP64 oracle.
pub(super) const REFERENCE_VS_FP64_LIMIT: f64 = 2e-2;

/// The most FLOPs `verify`'s FP64 oracle may take: about a quarter of an hour on one core.
const ORACLE_FLOP_LIMIT: f64 = 1e13;

/// What `verify` checks before any work, on every rank alike: the output file can be written, and
/// the FP64 oracle would not take hours. Prints the config on rank 0.
pub fn admit<B: Backend, C: Communicator<B>>(cfg: &RunConfig, comm: &C, save: Option<&Path>) -> Result<()> {
    let root = comm.rank() == 0;
    if let Some(path) = save {
        // Checked where the file will be written (rank 0), agreed by all, before any work.
        let problem = if root { save_target_problem(path) } else { None };
        if !comm.all_agree(problem.is_none())? {
            let why = problem.unwrap_or_else(|| "rank 0 cannot write it".into());
            return Err(ConfigError(format!("--save-output {}: {why}", path.display())).into());
        }
    }
    // The FP64 oracle runs on rank 0's CPU: refuse what would take it hours, before any work.
    // With decode steps it also computes the prefill of the prompt and the decode rows.
    let longer = crate::config::ModelConfig { seq_len: cfg.model.seq_len + cfg.decode_tokens, ..cfg.model };
    let decode_oracle = if cfg.decode_tokens > 0 {
        flops::job_flops(&RunConfig { strategy: StrategyKind::Reference, model: longer, ..cfg.clone() }).total()
    } else {
        0.0
    };
    // A training step's FLOPs count its backward (the oracle's runs it too).
    let oracle_flops = flops::job_flops(&RunConfig { strategy: StrategyKind::Reference, ..cfg.clone() }).total() + decode_oracle;
    if oracle_flops > ORACLE_FLOP_LIMIT {
        return Err(ConfigError(format!(
            "verify checks small configs: its FP64 oracle on rank 0 would compute {oracle_flops:.1e} FLOPs (about {:.0} min at ~10 GFLOP/s, the limit is {ORACLE_FLOP_LIMIT:.0e}); reduce --seq-len, --batch, --layers or --d-model",
            oracle_flops / 1e10 / 60.0
        ))
        .into());
    }
    if root {
        crate::outln!("ringbench verify: {}", cfg.describe());
        if let Some(note) = strategy::idle_owners_note(cfg) {
            crate::outln!("{note}");
        }
    }
    Ok(())
}

/// Run the strategy's forward once (and its decode steps), compare on rank 0, and return the
/// verdict every rank agrees on.
pub fn verify_forward<B: Backend + 'static, C: Communicator<B> + 'static>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    save: Option<&Path>,
) -> Result<bool> {
    let mut strat = strategy::build(cfg, be, comm)?;
    strat.forward(be, comm, true)?;
    for step in 0..cfg.decode_tokens {
        strat.decode_step(be, comm, step, true)?;
    }
    let download = |out: Option<&B::Act>| -> Result<Vec<bf16>> { out.map_or(Ok(Vec::new()), |o| be.download(o)) };
    let gathered = comm.gather_to_root(&download(strat.output())?)?;
    let decoded = if cfg.decode_tokens > 0 { comm.gather_to_root(&download(strat.decode_output())?)? } else { None };
    let ok = match gathered {
        Some(parts) => compare_on_root(cfg, be, comm, &parts, decoded.as_deref(), save)?,
        None => true,
    };
    comm.all_agree(ok)
}

/// Place every rank's decode outputs at their (sequence, step): [batch, decode tokens, d_model].
fn assemble_decode(cfg: &RunConfig, parts: &[Vec<bf16>]) -> Result<Vec<f64>> {
    let (d, n, batch) = (cfg.model.d_model, cfg.decode_tokens, cfg.model.batch);
    let mut out = vec![f64::NAN; batch * n * d];
    let mut covered = 0usize;
    for (rank, part) in parts.iter().enumerate() {
        let place = strategy::decode_placement(cfg, rank);
        if !place.outputs {
            ensure!(part.is_empty(), "rank {rank} sent {} decode values but reports none", part.len());
            continue;
        }
        let want = place.seqs.len() * n * d;
        ensure!(part.len() == want, "rank {rank} sent {} decode values, expected {want}", part.len());
        for (k, seq) in place.seqs.enumerate() {
            for (o, v) in out[seq * n * d..(seq + 1) * n * d].iter_mut().zip(&part[k * n * d..(k + 1) * n * d]) {
                *o = v.to_f64();
            }
            covered += 1;
        }
    }
    ensure!(covered == batch, "the ranks' decode outputs cover {covered} sequences, expected {batch}");
    Ok(out)
}

/// One comparison of a strategy's output with the reference's and the oracle's: the rows it
/// prints and its verdict.
pub(super) fn judge(name: &str, what: &str, got: &[f64], reference: &[f64], exact: &[f64]) -> bool {
    let vs_ref = Diff::between(got, reference);
    let ref_vs_exact = Diff::between(reference, exact);
    let vs_exact = Diff::between(got, exact);
    let tol = tolerance(ref_vs_exact, reference.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    let finite = got.iter().all(|v| v.is_finite());
    // The reference itself must be the model: within docs/design.md's "about 1e-2" of FP64, with a
    // factor 2 of margin; otherwise the tolerance derived from it would excuse anything.
    let reference_ok = ref_vs_exact.rel_l2 <= REFERENCE_VS_FP64_LIMIT;
    let pass = finite && reference_ok && within(vs_ref, tol);
    let row = |label: String, d: Diff| crate::outln!("  {label:<26} rel L2 {:.3e}   max abs {:.3e}", d.rel_l2, d.max_abs);
    crate::outln!(" {what}:");
    row(format!("{name} vs reference:"), vs_ref);
    row("tolerance:".into(), tol);
    row("reference vs FP64 oracle:".into(), ref_vs_exact);
    row(format!("{name} vs FP64 oracle:"), vs_exact);
    if !finite {
        crate::outln!("  {name} output holds NaN or infinite values");
    }
    if !reference_ok {
        crate::outln!(
            "  the reference is {:.3e} (rel L2) from the FP64 oracle, beyond {REFERENCE_VS_FP64_LIMIT:.0e}: the BF16 model is wrong",
            ref_vs_exact.rel_l2
        );
    }
    pass
}

/// Why `path` cannot take a new output file, if it cannot.
fn save_target_problem(path: &Path) -> Option<String> {
    if path.exists() {
        return Some("the file exists; ringbench never overwrites results".into());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Some(format!("directory {} does not exist", dir.display()));
    }
    None
}

/// Place every rank's rows at their global (sequence, position): [batch, seq, d_model].
pub(super) fn assemble(cfg: &RunConfig, parts: &[Vec<bf16>]) -> Result<Vec<f64>> {
    assemble_rows(cfg, parts, &|rank| strategy::output_tokens(cfg, rank))
}

/// As `assemble`, each rank's rows those of `tokens_of(rank)` (None: it sends none).
pub(super) fn assemble_rows(cfg: &RunConfig, parts: &[Vec<bf16>], tokens_of: &dyn Fn(usize) -> Option<LocalTokens>) -> Result<Vec<f64>> {
    let m = &cfg.model;
    let (d, s_len) = (m.d_model, m.seq_len);
    let mut out = vec![f64::NAN; m.batch * s_len * d];
    let mut covered = 0usize;
    for (rank, part) in parts.iter().enumerate() {
        let Some(tokens) = tokens_of(rank) else {
            ensure!(part.is_empty(), "rank {rank} sent {} values but holds no output", part.len());
            continue;
        };
        let n = tokens.len();
        ensure!(part.len() == m.batch * n * d, "rank {rank} sent {} values, expected {}", part.len(), m.batch * n * d);
        for seq in 0..m.batch {
            for (row, seg) in tokens.with_rows() {
                for (i, pos) in seg.positions().enumerate() {
                    let src = &part[(seq * n + row + i) * d..(seq * n + row + i + 1) * d];
                    let dst = &mut out[(seq * s_len + pos) * d..(seq * s_len + pos + 1) * d];
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o = v.to_f64();
                    }
                }
                covered += seg.len;
            }
        }
    }
    ensure!(covered == m.batch * s_len, "the ranks' outputs cover {covered} tokens, expected {}", m.batch * s_len);
    Ok(out)
}

fn compare_on_root<B: Backend + 'static, C: Communicator<B> + 'static>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    parts: &[Vec<bf16>],
    decoded: Option<&[Vec<bf16>]>,
    save: Option<&Path>,
) -> Result<bool> {
    let m = &cfg.model;
    let got = assemble(cfg, parts)?;
    let got_decode = decoded.map(|d| assemble_decode(cfg, d)).transpose()?;

    let ref_cfg = RunConfig { strategy: StrategyKind::Reference, ..cfg.clone() };
    let mut reference = Reference::new(&ref_cfg, be)?;
    Strategy::<B, C>::forward(&mut reference, be, comm, true)?;
    for step in 0..cfg.decode_tokens {
        Strategy::<B, C>::decode_step(&mut reference, be, comm, step, true)?;
    }
    let download = |o: Option<&B::Act>| -> Result<Vec<f64>> { Ok(be.download(o.expect("kept"))?.iter().map(|v| v.to_f64()).collect()) };
    let ref_out = download(Strategy::<B, C>::output(&reference))?;
    let name = cfg.strategy.name();
    let mut pass = judge(name, "final hidden states of the prompt", &got, &ref_out, &oracle::forward(m, cfg.seed, cfg.causal, 0..m.batch));
    if let Some(got_decode) = &got_decode {
        let ref_decode = download(Strategy::<B, C>::decode_output(&reference))?;
        let exact = oracle::decode(m, cfg.seed, 0..m.batch, cfg.decode_tokens);
        let what = format!("{} decode steps (the oracle: a prefill of the prompt and the decode rows)", cfg.decode_tokens);
        pass &= judge(name, &what, got_decode, &ref_decode, &exact);
    }
    crate::outln!("  (tolerance: 2 x reference vs FP64, plus 2^-10 on rel L2 and one BF16 ulp of the largest output on max abs)");
    crate::outln!("{}", if pass { "PASS" } else { "FAIL" });

    if let Some(path) = save {
        let data: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        let decode: Vec<f32> = got_decode.iter().flatten().map(|&v| v as f32).collect();
        let (out_shape, decode_shape) = ([m.batch, m.seq_len, m.d_model], [m.batch, cfg.decode_tokens, m.d_model]);
        let mut sets: Vec<(&str, &[usize], &[f32])> = vec![("output", &out_shape, &data)];
        if got_decode.is_some() {
            sets.push(("decode_output", &decode_shape, &decode));
        }
        output::write_hidden_states(path, &sets, &cfg.describe())?;
        let extra = if got_decode.is_some() {
            format!(", and the decode steps' as `decode_output`, [{}, {}, {}]", m.batch, cfg.decode_tokens, m.d_model)
        } else {
            String::new()
        };
        crate::outln!(
            "final hidden states written to {} (dataset `output`, [{}, {}, {}], FP32{extra})",
            path.display(),
            m.batch,
            m.seq_len,
            m.d_model
        );
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_never_passes() {
        let d = Diff::between(&[1.0, f64::NAN], &[1.0, 2.0]);
        assert!(!within(d, Diff { rel_l2: 1e9, max_abs: 1e9 }));
        let d = Diff::between(&[f64::NAN, 2.0], &[1.0, 2.0]);
        assert!(d.max_abs.is_nan() && !within(d, Diff { rel_l2: 1e9, max_abs: 1e9 }));
    }
}
