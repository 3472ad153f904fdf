//! `sweep --mode run`: every point of the launch's world measured with `run`'s protocol into its
//! own run directory, resumable: a complete point is kept, an interrupted one moved aside and
//! redone.

use super::point::{Basis, Measured};
use super::rank::evaluate;
use super::tables::{progress, render, write};
use crate::config::{ConfigError, RunConfig};
use crate::output::reduce;
use crate::output::status::RunStatus;
use crate::plan::Hardware;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A point's run directory name, from its config rather than its place in the grid, so that a
/// rerun (of this grid or a larger one) finds the same point's results.
pub fn point_id(cfg: &RunConfig) -> String {
    let spec = crate::strategy::spec(cfg.strategy);
    let sizes: Vec<String> = (spec.sizes)(cfg).iter().map(|v| v.to_string()).collect();
    let layout = if spec.uses_layout { format!("-{}", cfg.layout.name()) } else { String::new() };
    format!("{}-{}{layout}-s{}-kv{}", cfg.strategy.name(), sizes.join("x"), cfg.model.seq_len, cfg.model.kv_heads)
}

/// What a point's directory holds.
enum Stored {
    Absent,
    /// A complete run of the point, its summary as `reduce` reads it.
    Complete(Box<reduce::StrategySummary>),
    /// Interrupted, or still being written when the sweep stopped.
    Incomplete,
}

/// The summary of a point's run directory (one strategy run per point), read from its rank
/// files through `reduce`'s own loading and checks; None where they do not make a whole run.
fn summary(dir: &Path) -> Option<reduce::StrategySummary> {
    let (runs, partial) = reduce::load(dir, false).ok()?;
    reduce::summarize(&runs, &partial).ok()?.into_iter().next()
}

/// Whether `dir` holds a complete run of `cfg`; a run of another config there is an error (a
/// sweep's directory holds one grid's points).
fn stored(dir: &Path, cfg: &RunConfig) -> Result<Stored> {
    if !dir.exists() {
        return Ok(Stored::Absent);
    }
    if let Ok(runs) = crate::output::rankfile::read(&crate::output::rankfile::rank_file(dir, 0)) {
        if let Some(r) = runs.first() {
            anyhow::ensure!(
                r.config == *cfg,
                "{} holds a run of another config ({}): a sweep's --out holds the points of one model and measurement; choose another --out",
                dir.display(),
                r.config.describe()
            );
        }
    }
    Ok(match summary(dir) {
        Some(s) if s.config != *cfg => anyhow::bail!(
            "{} holds a run of another config ({}): a sweep's --out holds the points of one model and measurement; choose another --out",
            dir.display(),
            s.config.describe()
        ),
        Some(s) if s.status == RunStatus::Complete => Stored::Complete(Box::new(s)),
        _ => Stored::Incomplete,
    })
}

/// Move an interrupted point's directory to `out/interrupted/<id>.<n>`: kept, never deleted.
fn move_aside(out: &Path, id: &str) -> Result<PathBuf> {
    let aside = out.join("interrupted");
    std::fs::create_dir_all(&aside)?;
    let to = (1..).map(|n| aside.join(format!("{id}.{n}"))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(out.join(id), &to)?;
    Ok(to)
}

/// What a measured sweep needs of its launch beyond the backend and communicator.
pub struct Launched<'a> {
    pub place: &'a crate::harness::Place,
    pub journal: &'a crate::journal::Journal,
    /// Ranks sharing this host's memory.
    pub local_size: usize,
}

/// `--mode run`: every config in turn under `run`'s protocol, each into `out/<point id>/`.
/// Rank 0 decides for every point and tells the others: a complete run of it there is kept and
/// skipped; an interrupted one is moved to `interrupted/` and run again; one that does not fit this
/// machine's memory is left out, said so. Then rank 0 writes the tables and charts, ranked by what
/// was measured, with the projection for the profile beside it. Returns false where a point's
/// result was marked invalid.
pub fn run_points<'a, B: crate::backend::Backend + 'a, C: crate::comm::Communicator<B>, S: crate::comm::Communicator<B> + 'a>(
    cfgs: &[RunConfig],
    be: &B,
    comm: &C,
    strategy_comm: &dyn Fn(&RunConfig) -> Result<S>,
    launched: &Launched,
    out: &Path,
    quiet: bool,
    hw: &Hardware,
) -> Result<bool> {
    const RUN: u8 = 0;
    const SKIP: u8 = 1;
    const FAIL: u8 = 2;
    let root = comm.rank() == 0;
    // Rank 0 takes --out for this sweep before anything there is read or moved, and every rank
    // follows its verdict (no rank is left waiting).
    let mut verdict = vec![0u8];
    let claim = if root {
        match super::claim::claim(out, Basis::Measured) {
            Ok(c) => Some(c),
            Err(e) => {
                verdict = [&[1u8][..], e.0.as_bytes()].concat();
                None
            }
        }
    } else {
        None
    };
    comm.broadcast_bytes(&mut verdict)?;
    if verdict[0] != 0 {
        return Err(ConfigError(String::from_utf8_lossy(&verdict[1..]).into_owned()).into());
    }
    let _claim = claim;
    // The points print their own account as they run: progress is a line per point with the
    // sweep's ETA (the bar only keeps the time), not a bar the runs' lines would break.
    let bar = progress(cfgs.len(), true);
    let mut valid = true;
    for (k, cfg) in cfgs.iter().enumerate() {
        let id = point_id(cfg);
        if root && !quiet {
            let eta = if k == 0 { "unknown".to_string() } else { crate::metrics::fmt_seconds(bar.eta().as_secs_f64()) };
            crate::outln!("sweep: point {} of {}: {id} (ETA of the sweep {eta})", k + 1, cfgs.len());
        }
        let mut verdict = vec![RUN];
        if root {
            verdict = match stored(&out.join(&id), cfg) {
                Ok(Stored::Complete(_)) => vec![SKIP],
                Ok(Stored::Absent) => vec![RUN],
                Ok(Stored::Incomplete) => match move_aside(out, &id) {
                    Ok(to) => {
                        crate::outln!("sweep: {id} was interrupted; its files are kept in {}, and it runs again", to.display());
                        vec![RUN]
                    }
                    Err(e) => [&[FAIL][..], format!("moving the interrupted {id} aside: {e:#}").as_bytes()].concat(),
                },
                Err(e) => [&[FAIL][..], format!("{e:#}").as_bytes()].concat(),
            };
        }
        // Every rank follows rank 0's verdict, a failure included (no rank is left waiting).
        comm.broadcast_bytes(&mut verdict)?;
        match verdict[0] {
            SKIP => {
                bar.inc(1);
                continue;
            }
            FAIL => anyhow::bail!("{}", String::from_utf8_lossy(&verdict[1..])),
            _ => {}
        }
        if let Err(e) = crate::harness::check_memory(std::slice::from_ref(cfg), be, comm, launched.local_size, false) {
            if e.downcast_ref::<ConfigError>().is_none() {
                return Err(e);
            }
            if root {
                crate::outln!("sweep: {id} not run: {e}");
            }
            bar.inc(1);
            continue;
        }
        let opts = crate::harness::RunOptions { out: out.to_path_buf(), run_id: Some(id), quiet: true, fault: None };
        valid &= crate::harness::run(
            std::slice::from_ref(cfg),
            cfg.strategy.name(),
            be,
            comm,
            strategy_comm,
            launched.place,
            &opts,
            launched.journal,
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    comm.barrier()?;
    if !root {
        return Ok(valid);
    }
    let mut points = evaluate(cfgs, hw, &mut || {});
    for p in &mut points {
        let id = point_id(&p.cfg);
        let dir = out.join(&id);
        let Stored::Complete(s) = stored(&dir, &p.cfg)? else { continue };
        let measured = s.measured.ok_or_else(|| anyhow::anyhow!("{}: no measured run", dir.display()))?;
        p.measured = Some(Measured {
            tps: measured.tps,
            tps_ci95: measured.tps_ci95,
            iter_s: measured.iter.mean,
            peak_mem_gib: measured.peak_buffers.0 / (1u64 << 30) as f64,
            run_dir: id,
            device: s.first.device.clone(),
            tpot_s: measured.decode.as_ref().map(|d| d.tpot.mean),
            tpot_ci95: measured.decode.as_ref().and_then(|d| d.tpot.ci95),
            decode_tps: measured.decode.as_ref().map(|d| d.tokens_per_s),
        });
    }
    crate::outln!("{}", render(&points, hw, Basis::Measured));
    let written = write(out, &points, hw, Basis::Measured)?;
    let done = points.iter().filter(|p| p.measured.is_some()).count();
    crate::outln!("{done} of {} points measured, each with its projection for {} beside it in sweep.csv", points.len(), hw.name);
    written.iter().for_each(|p| crate::outln!("wrote {}", p.display()));
    Ok(valid)
}
