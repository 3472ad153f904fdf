//! The one harness every strategy runs under (STYLE.md, item 1): `run` times warm-up and measured
//! iterations; `verify` runs a strategy once, gathers its final hidden states to rank 0 in global
//! token order and compares them with the single-rank reference, with a tolerance measured from the
//! reference's own distance to the FP64 oracle.

use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, StrategyKind};
use crate::metrics::{fmt_seconds, Stats};
use crate::model::oracle;
use crate::output;
use crate::strategy::{self, reference::Reference, Strategy};
use anyhow::{ensure, Result};
use half::bf16;
use std::path::Path;
use std::time::Instant;

/// Warm-up, then measured iterations. Each iteration starts from a barrier and lasts until the
/// slowest rank finishes its forward pass: the time the job as a whole takes for one batch.
pub fn run<B: Backend + 'static, C: Communicator<B> + 'static>(cfg: &RunConfig, be: &B, comm: &C) -> Result<()> {
    let root = comm.rank() == 0;
    if root {
        println!("ringbench run: {}", cfg.describe());
        println!("world {} ranks; {} warm-up + {} measured iterations", comm.size(), cfg.warmup, cfg.iters);
    }
    let mut strat = strategy::build(cfg, be, comm)?;
    for _ in 0..cfg.warmup {
        comm.barrier()?;
        strat.forward(be, comm, false)?;
    }
    let mut times = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters {
        comm.barrier()?;
        let t0 = Instant::now();
        strat.forward(be, comm, false)?;
        times.push(comm.max_f64(t0.elapsed().as_secs_f64())?);
    }
    if root {
        let s = Stats::of(&times).expect("--iters is validated >= 1");
        let tokens = cfg.tokens_per_iteration() as f64;
        println!(
            "iteration time: mean {} (std {}, min {}, max {}, n {})",
            fmt_seconds(s.mean),
            fmt_seconds(s.std),
            fmt_seconds(s.min),
            fmt_seconds(s.max),
            s.n
        );
        println!("tokens/s: {:.1}", tokens / s.mean);
        println!("time per token: {} (iteration time / {} tokens)", fmt_seconds(s.mean / tokens), tokens);
    }
    Ok(())
}

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

/// The spacing of BF16 values (8 significant bits) at magnitude x.
pub fn bf16_ulp(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    2f64.powi(x.abs().log2().floor() as i32 - 7)
}

pub fn within(d: Diff, tol: Diff) -> bool {
    // Written so that NaN fails.
    d.rel_l2 <= tol.rel_l2 && d.max_abs <= tol.max_abs
}

/// Run the strategy once, compare on rank 0, and return the verdict every rank agrees on.
pub fn verify<B: Backend + 'static, C: Communicator<B> + 'static>(cfg: &RunConfig, be: &B, comm: &C, save: Option<&Path>) -> Result<bool> {
    let root = comm.rank() == 0;
    if let Some(path) = save {
        // Checked where the file will be written (rank 0), agreed by all, before any work.
        let problem = if root { save_target_problem(path) } else { None };
        if !comm.all_agree(problem.is_none())? {
            let why = problem.unwrap_or_else(|| "rank 0 cannot write it".into());
            return Err(ConfigError(format!("--save-output {}: {why}", path.display())).into());
        }
    }
    if root {
        println!("ringbench verify: {}", cfg.describe());
    }
    let mut strat = strategy::build(cfg, be, comm)?;
    strat.forward(be, comm, true)?;
    let local = match strat.output() {
        Some(out) => be.download(out)?,
        None => Vec::new(),
    };
    let gathered = comm.gather_to_root(&local)?;
    let ok = match gathered {
        Some(parts) => compare_on_root(cfg, be, comm, &parts, save)?,
        None => true,
    };
    comm.all_agree(ok)
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
fn assemble(cfg: &RunConfig, parts: &[Vec<bf16>]) -> Result<Vec<f64>> {
    let m = &cfg.model;
    let (d, s_len) = (m.d_model, m.seq_len);
    let mut out = vec![f64::NAN; m.batch * s_len * d];
    let mut covered = 0usize;
    for (rank, part) in parts.iter().enumerate() {
        let Some(tokens) = strategy::output_tokens(cfg, rank) else {
            ensure!(part.is_empty(), "rank {rank} sent {} values but holds no output", part.len());
            continue;
        };
        let n = tokens.len();
        ensure!(part.len() == m.batch * n * d, "rank {rank} sent {} values, expected {}", part.len(), m.batch * n * d);
        for seq in 0..m.batch {
            for (row, seg) in tokens.with_rows() {
                let src = &part[(seq * n + row) * d..(seq * n + row + seg.len) * d];
                let dst = &mut out[(seq * s_len + seg.start) * d..(seq * s_len + seg.end()) * d];
                for (o, v) in dst.iter_mut().zip(src) {
                    *o = v.to_f64();
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
    save: Option<&Path>,
) -> Result<bool> {
    let m = &cfg.model;
    let got = assemble(cfg, parts)?;

    let ref_cfg = RunConfig { strategy: StrategyKind::Reference, ..cfg.clone() };
    let mut reference = Reference::new(&ref_cfg, be)?;
    Strategy::<B, C>::forward(&mut reference, be, comm, true)?;
    let ref_out: Vec<f64> = be.download(Strategy::<B, C>::output(&reference).expect("kept"))?.iter().map(|v| v.to_f64()).collect();
    let exact = oracle::forward(m, cfg.seed, cfg.causal, 0..m.batch);

    let vs_ref = Diff::between(&got, &ref_out);
    let ref_vs_exact = Diff::between(&ref_out, &exact);
    let vs_exact = Diff::between(&got, &exact);
    let tol = tolerance(ref_vs_exact, ref_out.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    let finite = got.iter().all(|v| v.is_finite());
    let pass = finite && within(vs_ref, tol);

    let name = cfg.strategy.name();
    let row = |label: String, d: Diff| println!("  {label:<26} rel L2 {:.3e}   max abs {:.3e}", d.rel_l2, d.max_abs);
    row(format!("{name} vs reference:"), vs_ref);
    row("tolerance:".into(), tol);
    row("reference vs FP64 oracle:".into(), ref_vs_exact);
    row(format!("{name} vs FP64 oracle:"), vs_exact);
    println!("  (tolerance: 2 x reference vs FP64, plus 2^-10 on rel L2 and one BF16 ulp of the largest output on max abs)");
    if !finite {
        println!("  {name} output holds NaN or infinite values");
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });

    if let Some(path) = save {
        let data: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        output::write_hidden_states(path, [m.batch, m.seq_len, m.d_model], &data, &cfg.describe())?;
        println!("final hidden states written to {} (dataset `output`, [{}, {}, {}], FP32)", path.display(), m.batch, m.seq_len, m.d_model);
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_ulp_is_the_spacing_of_bf16_values() {
        for x in [1.0f64, 3.7, 4.0, 0.3, 100.0] {
            let b = bf16::from_f64(x);
            let next = bf16::from_bits(b.to_bits() + 1);
            assert_eq!(bf16_ulp(b.to_f64()), next.to_f64() - b.to_f64(), "at {x}");
        }
    }

    #[test]
    fn nan_never_passes() {
        let d = Diff::between(&[1.0, f64::NAN], &[1.0, 2.0]);
        assert!(!within(d, Diff { rel_l2: 1e9, max_abs: 1e9 }));
        let d = Diff::between(&[f64::NAN, 2.0], &[1.0, 2.0]);
        assert!(d.max_abs.is_nan() && !within(d, Diff { rel_l2: 1e9, max_abs: 1e9 }));
    }
}
