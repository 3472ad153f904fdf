//! A sweep's chart per world: tokens/s against sequence length on log axes, the crossovers
//! marked and numbered, and beside the plot what is not drawn (strategies that do not fit).

use super::point::{Basis, Point};
use super::rank::{fastest, Crossover, Fastest};
use crate::chart::{colour, err, fmt_count, fmt_tokens, log_ticks, Mark, Page, FONT};
use crate::plan::Hardware;
use anyhow::Result;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the chart of `pts` (one world and K/V head count) says it shows: the model, batch,
/// K/V heads, and the basis (projected on a profile, or measured on a device).
/// `by` is the points' fastest split per length and strategy, as the chart draws them.
fn page_of(world: usize, kv: usize, pts: &[&Point], by: &Fastest, cross: &[&Crossover], hw: &Hardware, basis: Basis) -> Page {
    let Some(first) = pts.first() else { return Page::default() };
    let cfg = &first.cfg;
    let on = match basis {
        Basis::Projected => format!("projected by the analytic model for {} ({} per node), not measured", hw.name, hw.gpus_per_node),
        Basis::Measured => {
            let device = pts.iter().find_map(|p| p.measured.as_ref()).map_or("", |m| m.device.as_str());
            format!("measured, backend {}, on {}", cfg.backend.name(), device)
        }
    };
    // The K/V heads (one chart per count a sweep varies) are in the model's words.
    let subtitle = format!(
        "{}; batch {}, micro-batch {}, {}; {on}",
        cfg.describe_model(),
        cfg.model.batch,
        cfg.micro_batch,
        if cfg.causal { "causal" } else { "non-causal" }
    );
    let drawn: std::collections::BTreeSet<usize> = by.values().flat_map(|s| s.keys().copied()).collect();
    let mut legend: Vec<(String, Option<Mark>)> =
        drawn.iter().map(|&o| (crate::strategy::SPECS[o].kind.name().to_string(), Some(Mark::Line(colour(o))))).collect();
    for (i, x) in cross.iter().enumerate() {
        legend.push((
            format!("{}: {} faster above ~{}, {} below", i + 1, x.faster_above.name(), fmt_tokens(x.seq_estimate), x.faster_below.name()),
            Some(Mark::Cross),
        ));
    }
    // What is not drawn, or drawn only in part, and why.
    let mut notes = Vec::new();
    let lengths: std::collections::BTreeSet<usize> = pts.iter().map(|p| p.cfg.model.seq_len).collect();
    let kinds: BTreeMap<usize, crate::config::StrategyKind> =
        pts.iter().map(|p| (super::rank::order(p.cfg.strategy), p.cfg.strategy)).collect();
    let mut none = Vec::new();
    for (&o, &kind) in &kinds {
        let shown: Vec<usize> = by.iter().filter(|(_, s)| s.contains_key(&o)).map(|((_, _, seq), _)| *seq).collect();
        if shown.is_empty() {
            let least = pts.iter().filter(|p| p.cfg.strategy == kind).map(|p| p.memory_bytes).fold(f64::INFINITY, f64::min);
            none.push(format!("{} (at least {} per GPU)", kind.name(), crate::metrics::fmt_bytes(least)));
        } else if shown.len() < lengths.len() {
            let missing: Vec<String> = lengths.iter().filter(|l| !shown.contains(l)).map(|&l| fmt_tokens(l as f64)).collect();
            let why = if basis == Basis::Projected { "does not fit" } else { "was not measured" };
            notes.push(format!("{} {why} at {}.", kind.name(), missing.join(", ")));
        }
    }
    if !none.is_empty() {
        let why = match basis {
            Basis::Projected => format!("fit no GPU of {} ({}) at any length here", hw.name, crate::metrics::fmt_bytes(hw.memory_bytes)),
            Basis::Measured => "have no measured point here".to_string(),
        };
        notes.insert(0, format!("Not drawn: {} {why}.", none.join(", ")));
    }
    notes.push("Each line: the strategy's fastest split at that length.".to_string());
    if basis == Basis::Measured {
        notes.push("Bars: 95% confidence intervals of the measured tokens/s, where one could be computed.".to_string());
        notes.push(
            "A crossover is marked only where both lengths' intervals are apart: an order that flips within the noise is none.".to_string(),
        );
    }
    Page {
        title: format!(
            "{} {}tokens/s on {world} {}, {kv} K/V heads",
            basis.name(),
            if cfg.train { "training " } else { "" },
            if basis == Basis::Measured { "ranks" } else { "GPUs" }
        ),
        subtitle,
        legend,
        notes,
    }
}

/// Tokens/s against sequence length, log axes: each strategy's fastest split that fits, the
/// crossovers marked and numbered where the two lines meet.
#[allow(clippy::too_many_arguments)]
pub(super) fn chart(
    dir: &Path,
    name: &str,
    world: usize,
    kv: usize,
    pts: &[&Point],
    cross: &[&Crossover],
    hw: &Hardware,
    basis: Basis,
) -> Result<PathBuf> {
    let by = fastest(pts.iter().copied(), basis);
    let page = page_of(world, kv, pts, &by, cross, hw, basis);
    let mut series: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for ((_, _, seq), strategies) in &by {
        for (o, p) in strategies {
            series.entry(*o).or_default().push((*seq as f64, p.figure(basis).unwrap_or(0.0)));
        }
    }
    let xs: Vec<f64> = pts.iter().map(|p| p.cfg.model.seq_len as f64).collect();
    let ys: Vec<f64> = series.values().flatten().map(|(_, y)| *y).collect();
    let (x0, x1) = (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(0.0, f64::max));
    let (y0, y1) = (ys.iter().cloned().fold(f64::MAX, f64::min), ys.iter().cloned().fold(0.0, f64::max));
    let (y0, y1) = if ys.is_empty() { (1.0, 10.0) } else { (y0 / 1.5, y1 * 1.5) };
    let mut lengths = xs.clone();
    lengths.sort_by(f64::total_cmp);
    lengths.dedup();
    // Every swept length a tick while they fit across; every other one beyond.
    let step = lengths.len().div_ceil(12).max(1);
    let x_ticks: Vec<f64> = lengths.iter().copied().step_by(step).collect();
    let y_ticks = log_ticks(y0, y1);
    crate::chart::chart(dir, name, basis == Basis::Measured, &page, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((x0 / 1.3..x1 * 1.3).log_scale().with_key_points(x_ticks), (y0..y1).log_scale().with_key_points(y_ticks))
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("sequence length (tokens)")
            .y_desc(format!("{} tokens/s (fastest split)", basis.name()))
            .label_style((FONT, 15))
            .x_label_formatter(&|x| fmt_tokens(*x))
            .y_label_formatter(&|y| fmt_count(*y))
            .draw()
            .map_err(err)?;
        for (o, line) in &series {
            let col = colour(*o);
            c.draw_series(LineSeries::new(line.iter().copied(), col.stroke_width(2))).map_err(err)?;
            c.draw_series(line.iter().map(|&p| Circle::new(p, 4, col.filled()))).map_err(err)?;
        }
        // A measured point's 95% confidence interval, where one could be computed.
        for strategies in by.values() {
            for (o, p) in strategies {
                if let Some((lo, hi)) = p.measured.as_ref().and_then(|m| m.tps_ci95).filter(|_| basis == Basis::Measured) {
                    let (x, y) = (p.cfg.model.seq_len as f64, p.figure(basis).unwrap_or(0.0));
                    c.draw_series(std::iter::once(ErrorBar::new_vertical(x, lo.max(y0), y, hi.min(y1), colour(*o).stroke_width(2), 10)))
                        .map_err(err)?;
                }
            }
        }
        for (i, x) in cross.iter().enumerate() {
            let at = (x.seq_estimate, x.tps_estimate);
            c.draw_series(std::iter::once(Cross::new(at, 8, BLACK.stroke_width(2)))).map_err(err)?;
            let label = EmptyElement::at(at) + Text::new(format!("{}", i + 1), (8, -22), (FONT, 15).into_font());
            c.draw_series(std::iter::once(label)).map_err(err)?;
        }
        Ok(())
    })
}
