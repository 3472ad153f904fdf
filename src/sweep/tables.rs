//! What a sweep writes and prints: sweep.csv, best.csv and crossovers.csv, a chart per world,
//! the console's account.

use super::chart::chart;
use super::point::{Basis, Figure, Point};
use super::rank::{best, best_by, crossovers, crossovers_by, fastest, fastest_by, order, Best, Crossover};
use crate::plan::Hardware;
use anyhow::Result;
use std::path::{Path, PathBuf};

fn table_of(header: &[&str], rows: Vec<Vec<String>>) -> crate::output::reduce::Table {
    (header.iter().map(|h| h.to_string()).collect(), rows)
}

fn sweep_table(points: &[Point], hw: &Hardware) -> crate::output::reduce::Table {
    let header = [
        "world",
        "nodes",
        "gpus_per_node",
        "kv_heads",
        "seq_len",
        "train",
        "recompute",
        "strategy",
        "split",
        "layout",
        "fits",
        "memory_gib",
        "projected_tps",
        "projected_ttft_s",
        "projected_prefill_us_per_token",
        "projected_exposed_comm_s",
        "heaviest_link",
        "projected_tpot_s",
        "projected_tpot_floor_s",
        "projected_decode_tps",
        "projected_mbu",
        "measured_tpot_s",
        "measured_decode_tps",
        "measured_tps",
        "measured_iter_s",
        "measured_ttft_s",
        "measured_peak_mem_gib",
        "run_dir",
    ];
    let rows = points
        .iter()
        .map(|p| {
            let layout = if crate::strategy::spec(p.cfg.strategy).uses_layout { p.cfg.layout.name() } else { "" };
            vec![
                p.world.to_string(),
                p.world.div_ceil(hw.gpus_per_node).to_string(),
                hw.gpus_per_node.to_string(),
                p.cfg.model.kv_heads.to_string(),
                p.cfg.model.seq_len.to_string(),
                p.cfg.train.to_string(),
                p.cfg.recompute.to_string(),
                p.cfg.strategy.name().to_string(),
                p.split(),
                layout.to_string(),
                p.fits.to_string(),
                format!("{:.3}", p.memory_bytes / (1u64 << 30) as f64),
                format!("{:.1}", p.tps),
                format!("{:.6}", p.ttft_s),
                format!("{:.4}", 1e6 / p.tps),
                format!("{:.6}", p.exposed_comm_s),
                p.link.clone(),
                p.decode.as_ref().map_or(String::new(), |d| format!("{:.9}", d.tpot_s)),
                p.decode.as_ref().map_or(String::new(), |d| format!("{:.9}", d.tpot_floor_s)),
                p.decode.as_ref().map_or(String::new(), |d| format!("{:.3}", d.tokens_per_s)),
                p.decode.as_ref().map_or(String::new(), |d| format!("{:.4}", d.mbu)),
                p.measured.as_ref().and_then(|m| m.tpot_s).map_or(String::new(), |t| format!("{t:.9}")),
                p.measured.as_ref().and_then(|m| m.decode_tps).map_or(String::new(), |t| format!("{t:.3}")),
                p.measured.as_ref().map_or(String::new(), |m| format!("{:.3}", m.tps)),
                p.measured.as_ref().map_or(String::new(), |m| format!("{:.6}", m.iter_s)),
                // One sequence per iteration: the iteration is its time to first token.
                p.measured.as_ref().filter(|_| p.cfg.model.batch == 1).map_or(String::new(), |m| format!("{:.6}", m.iter_s)),
                p.measured.as_ref().map_or(String::new(), |m| format!("{:.6}", m.peak_mem_gib)),
                p.measured.as_ref().map_or(String::new(), |m| m.run_dir.clone()),
            ]
        })
        .collect();
    table_of(&header, rows)
}

fn best_table(best: &[Best], basis: Basis, f: Figure) -> crate::output::reduce::Table {
    // By decode: its tokens/s (batch / TPOT) and the projected TPOT, where prefill has its own.
    let (figure, time) = match f {
        Figure::Prefill => ("tps", "projected_ttft_s"),
        Figure::Decode => ("decode_tps", "projected_tpot_s"),
    };
    let header = [
        "basis",
        "world",
        "kv_heads",
        "seq_len",
        "strategy",
        "split",
        figure,
        time,
        "memory_gib",
        "runner_up",
        "runner_up_split",
        "speedup_over_runner_up",
    ];
    let v = |p: &Point| p.figure_of(basis, f).unwrap_or(0.0);
    let rows = best
        .iter()
        .map(|b| {
            let p = b.point;
            let (ru, ru_split, ratio) = match b.runner_up {
                Some(r) => (r.cfg.strategy.name().to_string(), r.split(), format!("{:.4}", v(p) / v(r))),
                None => Default::default(),
            };
            vec![
                basis.name().to_string(),
                p.world.to_string(),
                p.cfg.model.kv_heads.to_string(),
                p.cfg.model.seq_len.to_string(),
                p.cfg.strategy.name().to_string(),
                p.split(),
                format!("{:.1}", v(p)),
                match f {
                    Figure::Prefill => format!("{:.6}", p.ttft_s),
                    Figure::Decode => p.decode.as_ref().map_or(String::new(), |d| format!("{:.9}", d.tpot_s)),
                },
                format!("{:.3}", p.memory_bytes / (1u64 << 30) as f64),
                ru,
                ru_split,
                ratio,
            ]
        })
        .collect();
    table_of(&header, rows)
}

fn crossover_table(crossovers: &[Crossover], basis: Basis) -> crate::output::reduce::Table {
    let header = ["basis", "world", "kv_heads", "faster_below", "faster_above", "seq_len_below", "seq_len_above", "seq_len_estimate"];
    let rows = crossovers
        .iter()
        .map(|c| {
            vec![
                basis.name().to_string(),
                c.world.to_string(),
                c.kv_heads.to_string(),
                c.faster_below.name().to_string(),
                c.faster_above.name().to_string(),
                c.seq_below.to_string(),
                c.seq_above.to_string(),
                format!("{:.0}", c.seq_estimate),
            ]
        })
        .collect();
    table_of(&header, rows)
}

/// Write the three tables and the charts into `dir`; the paths written.
/// Write the three tables and the charts into `dir`, ranked by `basis`; the paths written. A
/// measured sweep's tables are its own to replace (a rerun adds the points it completes).
pub fn write(dir: &Path, points: &[Point], hw: &Hardware, basis: Basis) -> Result<Vec<PathBuf>> {
    use crate::output::reduce::{csv_bytes, replace_derived, write_new_or_same};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--out {}: {e}", dir.display()))?;
    let best = best(points, basis);
    let crossovers = crossovers(points, basis);
    let mut written = Vec::new();
    // A measured sweep's tables and charts are drawn again from its points (kept, never
    // overwritten) whenever it is extended or re-measured, so they are replaced together: the
    // charts first, then the tables. A projected sweep's are the model's answer to one grid: a
    // different grid in the same --out is refused, file by file, before anything changes.
    let mut tables = vec![
        ("sweep.csv", csv_bytes(&sweep_table(points, hw))?),
        ("best.csv", csv_bytes(&best_table(&best, basis, Figure::Prefill))?),
        ("crossovers.csv", csv_bytes(&crossover_table(&crossovers, basis))?),
    ];
    // With decode steps, the same ranking by TPOT (decode tokens/s).
    if points.iter().any(|p| p.decode.is_some()) {
        tables.push(("best-decode.csv", csv_bytes(&best_table(&best_by(points, basis, Figure::Decode), basis, Figure::Decode))?));
        tables.push(("crossovers-decode.csv", csv_bytes(&crossover_table(&crossovers_by(points, basis, Figure::Decode), basis))?));
    }
    if basis == Basis::Projected {
        for (name, bytes) in &tables {
            let path = dir.join(name);
            if std::fs::read(&path).is_ok_and(|old| old != *bytes) {
                anyhow::bail!(
                    "{} exists and differs from what this sweep gives; it is never overwritten (choose another --out)",
                    path.display()
                );
            }
        }
    }
    let groups: std::collections::BTreeSet<(usize, usize)> = points.iter().map(|p| (p.world, p.cfg.model.kv_heads)).collect();
    let one_kv = groups.iter().map(|g| g.1).collect::<std::collections::BTreeSet<_>>().len() == 1;
    for (world, kv) in groups {
        let name = if one_kv { format!("tps-world-{world}") } else { format!("tps-world-{world}-kv-{kv}") };
        let pts: Vec<&Point> = points.iter().filter(|p| p.world == world && p.cfg.model.kv_heads == kv).collect();
        let cross: Vec<&Crossover> = crossovers.iter().filter(|c| c.world == world && c.kv_heads == kv).collect();
        written.push(chart(dir, &name, world, kv, &pts, &cross, hw, basis)?);
    }
    for (name, bytes) in &tables {
        let path = dir.join(name);
        match basis {
            Basis::Measured => {
                replace_derived(&path, bytes)?;
            }
            Basis::Projected => write_new_or_same(&path, bytes, false)?,
        }
        written.push(path);
    }
    Ok(written)
}

/// A progress bar over the sweep's points with its ETA, on stdout where it is a terminal.
pub fn progress(total: usize, quiet: bool) -> indicatif::ProgressBar {
    crate::harness::console::terminal_bar(total, "sweep [{bar:30}] {pos}/{len} points, ETA {eta}", quiet)
}

/// The console's account: per world (and K/V heads), a row per length with each strategy's
/// tokens/s (fastest split that fits; "-" where none fits) and the fastest, then the crossovers.
pub fn render(points: &[Point], hw: &Hardware, basis: Basis) -> String {
    let by = fastest(points, basis);
    let crossovers = crossovers(points, basis);
    let best = best(points, basis);
    let v = |p: &Point| p.figure(basis).unwrap_or(0.0);
    let kinds: Vec<usize> = {
        let s: std::collections::BTreeSet<usize> = points.iter().map(|p| order(p.cfg.strategy)).collect();
        s.into_iter().collect()
    };
    let groups: std::collections::BTreeSet<(usize, usize)> = points.iter().map(|p| (p.world, p.cfg.model.kv_heads)).collect();
    let mut o = String::new();
    // What every table below is of, first: the model, the batch, and how its figures came to be.
    if let Some(first) = points.first() {
        let cfg = &first.cfg;
        let how = match basis {
            Basis::Projected => format!(
                "projected by the analytic model for {}, {} GPUs per node (its rates by size: `plan` prints them), not measured",
                hw.name, hw.gpus_per_node
            ),
            Basis::Measured => format!("measured with the {} backend", cfg.backend.name()),
        };
        o.push_str(&format!(
            "sweep of {}; batch {}, micro-batch {}, {}; {how}\n",
            cfg.describe_model(),
            cfg.model.batch,
            cfg.micro_batch,
            if cfg.causal { "causal" } else { "non-causal" }
        ));
    }
    for c in &hw.calibrated {
        o.push_str(&format!("calibrated: {c}\n"));
    }
    for (world, kv) in groups {
        let on = match basis {
            Basis::Projected => {
                format!("{world} GPUs of {} ({} x {})", hw.name, world.div_ceil(hw.gpus_per_node), hw.gpus_per_node.min(world))
            }
            Basis::Measured => {
                let backend = points.first().map_or("", |p| p.cfg.backend.name());
                format!("{world} ranks on this machine ({backend} backend; the projection for {} is in sweep.csv)", hw.name)
            }
        };
        o.push_str(&format!(
            "\n{on}, {kv} K/V heads: {} {}tokens/s of each strategy's fastest split{}\n",
            basis.name(),
            if points.first().is_some_and(|p| p.cfg.train) { "training " } else { "" },
            if basis == Basis::Projected { " that fits" } else { "" }
        ));
        let none = if basis == Basis::Projected { "nothing fits" } else { "nothing measured" };
        let cell = |p: &Point| format!("{:.0}", v(p));
        let fastest = |b: &Best| {
            let margin = b.runner_up.map(|r| format!(", {:.2}x {}", v(b.point) / v(r), r.cfg.strategy.name())).unwrap_or_default();
            format!("{} ({}{margin})", b.point.cfg.strategy.name(), b.point.split())
        };
        o.push_str(&length_table(points, (world, kv), &kinds, (&by, &best), &cell, &fastest, ("fastest", none)));
        for c in crossovers.iter().filter(|c| c.world == world && c.kv_heads == kv) {
            o.push_str(&format!(
                "crossover: {} is faster below, {} above, between {} and {} tokens (about {:.0})\n",
                c.faster_below.name(),
                c.faster_above.name(),
                c.seq_below,
                c.seq_above,
                c.seq_estimate
            ));
        }
    }
    if points.iter().any(|p| p.decode.is_some()) {
        o.push_str(&render_decode(points, hw, basis));
    }
    o
}

/// One world's table: a row per swept length with each strategy's `cell` (its fastest split by
/// `by`, "-" where it has none), then the best one and its margin (`best_cell`), or `none`.
#[allow(clippy::type_complexity)]
fn length_table(
    points: &[Point],
    (world, kv): (usize, usize),
    kinds: &[usize],
    (by, best): (&super::rank::Fastest, &[Best]),
    cell: &dyn Fn(&Point) -> String,
    best_cell: &dyn Fn(&Best) -> String,
    (last, none): (&str, &str),
) -> String {
    let mut o = format!("{:>10}", "seq_len");
    for k in kinds {
        o.push_str(&format!("{:>12}", crate::strategy::SPECS[*k].kind.name()));
    }
    o.push_str(&format!("  {last}\n"));
    let seqs: std::collections::BTreeSet<usize> =
        points.iter().filter(|p| p.world == world && p.cfg.model.kv_heads == kv).map(|p| p.cfg.model.seq_len).collect();
    for seq in seqs {
        let mut row = format!("{seq:>10}");
        let at = by.get(&(world, kv, seq));
        for k in kinds {
            row.push_str(&format!("{:>12}", at.and_then(|s| s.get(k)).map_or("-".to_string(), |p| cell(p))));
        }
        match best.iter().find(|b| b.point.key() == (world, kv, seq)) {
            Some(b) => row.push_str(&format!("  {}", best_cell(b))),
            None => row.push_str(&format!("  {none}")),
        }
        o.push_str(&row);
        o.push('\n');
    }
    o
}

/// The decode's account, as `render`'s for the prefill: per world, a row per length with each
/// strategy's TPOT (its split with the lowest that fits), the lowest, and where the order of two
/// changes (where sharding the cache starts to pay).
fn render_decode(points: &[Point], hw: &Hardware, basis: Basis) -> String {
    let by = fastest_by(points, basis, Figure::Decode);
    let best = best_by(points, basis, Figure::Decode);
    let tpot = |p: &Point| match basis {
        Basis::Projected => p.decode.as_ref().map(|d| d.tpot_s),
        Basis::Measured => p.measured.as_ref().and_then(|m| m.tpot_s),
    };
    let kinds: Vec<usize> = points.iter().map(|p| order(p.cfg.strategy)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let groups: std::collections::BTreeSet<(usize, usize)> = points.iter().map(|p| (p.world, p.cfg.model.kv_heads)).collect();
    let steps = points.first().map_or(0, |p| p.cfg.decode_tokens);
    let mut o = String::new();
    for (world, kv) in groups {
        o.push_str(&format!(
            "\ndecode of {steps} tokens, {world} {}, {kv} K/V heads: {} TPOT (ms) of each strategy's split with the lowest{}\n",
            if basis == Basis::Projected { format!("GPUs of {}", hw.name) } else { "ranks".to_string() },
            basis.name(),
            if basis == Basis::Projected { " that fits" } else { "" }
        ));
        let cell = |p: &Point| tpot(p).map_or("-".to_string(), |t| format!("{:.3}", t * 1e3));
        let lowest = |b: &Best| {
            let ratio = b.runner_up.and_then(|r| Some((tpot(r)? / tpot(b.point)?, r.cfg.strategy.name())));
            let margin = ratio.map(|(x, n)| format!(", {n} {x:.2}x its TPOT")).unwrap_or_default();
            format!("{} ({}{margin})", b.point.cfg.strategy.name(), b.point.split())
        };
        o.push_str(&length_table(points, (world, kv), &kinds, (&by, &best), &cell, &lowest, ("lowest TPOT", "nothing fits")));
        for c in crossovers_by(points, basis, Figure::Decode).iter().filter(|c| c.world == world && c.kv_heads == kv) {
            o.push_str(&format!(
                "decode crossover: {} has the lower TPOT below, {} above, between {} and {} tokens (about {:.0})\n",
                c.faster_below.name(),
                c.faster_above.name(),
                c.seq_below,
                c.seq_above,
                c.seq_estimate
            ));
        }
    }
    o
}
