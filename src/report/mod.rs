//! `ringbench report DIR`: PNG charts of a run next to its CSVs, from the rank files alone:
//! tokens/s per strategy with 95% CI bars, the job's iteration times, per-rank peak memory, and
//! per-rank compute, exposed and hidden communication time; with decode steps, TTFT and TPOT per
//! strategy and each one's inter-token latencies (`decode`). DIR is a run directory, or one that
//! `reduce A B --out DIR` wrote (its sources.json names the run directories).

use crate::chart::{colour, err, fmt_count, Mark, Page, FONT};
use crate::metrics::IterationRecord;
use crate::output::rankfile::RankRun;
use crate::output::reduce::{self, StrategySummary};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

mod decode;
mod labels;

use labels::{label, short_labels, subtitle, Area};

/// Bars of tokens/s with their 95% confidence intervals.
fn tps_chart(root: &Area, s: &[&StrategySummary]) -> Result<()> {
    // A run without an interval (one, or too few and noisy, iterations) gets no error bar.
    let top = s.iter().filter_map(|x| x.measured.as_ref()).map(|m| m.tps_ci95.map_or(m.tps, |c| c.1.max(m.tps))).fold(0.0, f64::max) * 1.15;
    let names = short_labels(s);
    // Labels shrink to their slot when many runs share the axis (about 800 px of plot).
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(1).max(1) as f64;
    let x_font = ((800.0 / s.len().max(1) as f64) / (0.6 * longest)).floor().clamp(9.0, 15.0) as u32;
    let mut c = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..s.len() as f64 - 0.5, 0f64..top.max(1.0))
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(s.len().max(2))
        .x_label_formatter(&|x| names.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 0.01).cloned().unwrap_or_default())
        .y_desc("tokens/s")
        .y_label_formatter(&|y| fmt_count(*y))
        .label_style((FONT, 15))
        .x_label_style((FONT, x_font))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (i, x) in s.iter().enumerate() {
        let Some(m) = &x.measured else { continue };
        let xi = i as f64;
        c.draw_series(std::iter::once(Rectangle::new([(xi - 0.3, 0.0), (xi + 0.3, m.tps)], colour(i).filled()))).map_err(err)?;
        match m.tps_ci95 {
            Some((lo, hi)) => {
                c.draw_series(std::iter::once(ErrorBar::new_vertical(xi, lo, m.tps, hi, BLACK.stroke_width(2), 20))).map_err(err)?;
            }
            // Said on the chart, not left for the reader to take a missing bar for a tight one.
            None => {
                let note = format!("no 95% CI (n {})", m.iter.n);
                c.draw_series(std::iter::once(Text::new(note, (xi - 0.25, m.tps * 1.06), (FONT, 15)))).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// The job's iteration time (slowest rank) per measured iteration.
fn iterations_chart(root: &Area, s: &[&StrategySummary], runs: &[RankRun]) -> Result<()> {
    let series: Vec<Vec<(f64, f64)>> = s
        .iter()
        .map(|x| {
            let ranks: Vec<&RankRun> = runs.iter().filter(|r| r.run_id == x.first.run_id && r.sequence == x.first.sequence).collect();
            let n = ranks.iter().map(|r| r.iterations.len()).min().unwrap_or(0);
            (0..n).map(|i| (i as f64, 1e3 * ranks.iter().map(|r| r.iterations[i].total_s).fold(0.0, f64::max))).collect()
        })
        .collect();
    let n = series.iter().map(Vec::len).max().unwrap_or(1).max(2) as f64;
    let top = series.iter().flatten().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let mut c = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n - 1.0, 0f64..top.max(1e-3))
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("measured iteration")
        .x_labels((n as usize).clamp(2, 20))
        // Iterations are whole: no tick between two.
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{}", x.round()) } else { String::new() })
        .y_desc("ms")
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (i, pts) in series.iter().enumerate() {
        let col = colour(i);
        c.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2))).map_err(err)?;
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled()))).map_err(err)?;
    }
    Ok(())
}

/// The shades of a strategy's colour for the stacked parts of a bar, bottom first.
const SHADES: [f64; 3] = [1.0, 0.55, 0.25];

/// Per-rank bars, one group per rank and one bar per strategy run; `value` gives the stacked
/// parts of a bar (bottom first).
fn per_rank_chart(root: &Area, unit: &str, s: &[&StrategySummary], runs: &[RankRun], value: &dyn Fn(&RankRun) -> Vec<f64>) -> Result<()> {
    let world = s.iter().map(|x| x.config.world()).max().unwrap_or(1);
    let bars: Vec<Vec<Vec<f64>>> = s
        .iter()
        .map(|x| {
            (0..world)
                .map(|r| {
                    runs.iter()
                        .find(|k| k.run_id == x.first.run_id && k.sequence == x.first.sequence && k.rank == r)
                        .map(value)
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    let top = bars.iter().flatten().map(|v| v.iter().sum::<f64>()).fold(0.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..world as f64 - 0.5, 0f64..top.max(1e-9))
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(world.clamp(2, 32))
        .x_label_formatter(&|x| if (x - x.round()).abs() < 0.01 { format!("{}", x.round()) } else { String::new() })
        .x_desc("rank")
        .y_desc(unit)
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let width = 0.8 / s.len().max(1) as f64;
    for (k, per_rank) in bars.iter().enumerate() {
        let parts = per_rank.iter().map(Vec::len).max().unwrap_or(0);
        for p in 0..parts {
            let col = colour(k).mix(SHADES[p.min(2)]);
            let rects: Vec<_> = per_rank
                .iter()
                .enumerate()
                .filter(|(_, v)| v.len() > p)
                .map(|(r, v)| {
                    let x0 = r as f64 - 0.4 + k as f64 * width;
                    let base: f64 = v[..p].iter().sum();
                    Rectangle::new([(x0, base), (x0 + width * 0.9, base + v[p])], col.filled())
                })
                .collect();
            c.draw_series(rects).map_err(err)?;
        }
    }
    Ok(())
}

fn mean_ms(r: &RankRun, f: fn(&IterationRecord) -> f64) -> f64 {
    1e3 * r.iterations.iter().map(f).sum::<f64>() / r.iterations.len().max(1) as f64
}

/// The rank files behind `dir`: its own, or those of the run directories its sources.json names
/// (a directory `reduce A B --out DIR` wrote).
fn load_runs(dir: &Path) -> Result<Vec<RankRun>> {
    if crate::output::rankfile::rank_file(dir, 0).exists() {
        return Ok(reduce::load(dir, false).with_context(|| format!("run directory {}", dir.display()))?.0);
    }
    if dir.join("sweep.json").exists() || dir.join("sweep.csv").exists() {
        anyhow::bail!(
            "{}: a sweep's directory, not a run directory (its charts are drawn by the sweep); report one of its points, {}/<point id>",
            dir.display(),
            dir.display()
        );
    }
    match reduce::sources(dir)? {
        Some(dirs) => {
            let mut runs = Vec::new();
            for d in dirs {
                let (r, _) = reduce::load(&d, false)
                    .with_context(|| format!("{}: the run directory {} its {} names", dir.display(), d.display(), reduce::SOURCES))?;
                runs.extend(r);
            }
            Ok(runs)
        }
        None => Ok(reduce::load(dir, false).with_context(|| format!("run directory {}", dir.display()))?.0),
    }
}

/// Write the charts of run directory `dir` next to its CSVs; returns their paths.
pub fn report(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::chart::load_font()?;
    let runs = load_runs(dir)?;
    let summaries = reduce::summarize(&runs, &[])?;
    let s: Vec<&StrategySummary> = summaries.iter().collect();
    let sub = subtitle(&s);
    let runs_legend = |mark: fn(RGBColor) -> Mark| -> Vec<(String, Option<Mark>)> {
        s.iter().enumerate().map(|(i, x)| (label(x), Some(mark(colour(i))))).collect()
    };
    let page = |title: &str, legend: Vec<(String, Option<Mark>)>, notes: Vec<String>| Page {
        title: title.into(),
        subtitle: sub.clone(),
        legend,
        notes,
    };
    let peak =
        s.iter().flat_map(|x| runs.iter().filter(|r| r.run_id == x.first.run_id)).map(|r| r.memory.buffers_peak_bytes).max().unwrap_or(0);
    let (mem_unit, mem_scale) =
        if peak as f64 >= (1u64 << 30) as f64 { ("GiB", (1u64 << 30) as f64) } else { ("MiB", (1u64 << 20) as f64) };
    // Stacked parts, named under the runs in the grey a shade of the strategy's colour gives over white.
    let stacked_legend = |parts: &[&str]| {
        let mut legend = runs_legend(Mark::Block);
        for (p, part) in parts.iter().enumerate() {
            let grey = (255.0 - (255.0 - 90.0) * SHADES[p]) as u8;
            legend.push((part.to_string(), Some(Mark::Block(RGBColor(grey, grey, grey)))));
        }
        legend
    };
    let parts_legend = stacked_legend(&["compute", "communication exposed", "communication hidden"]);
    let mut charts = vec![
        crate::chart::chart(
            dir,
            "tps",
            false,
            &page("tokens/s, with 95% confidence intervals", runs_legend(Mark::Block), vec![]),
            |root| tps_chart(root, &s),
        )?,
        crate::chart::chart(dir, "iterations", false, &page("iteration time (slowest rank)", runs_legend(Mark::Line), vec![]), |root| {
            iterations_chart(root, &s, &runs)
        })?,
        crate::chart::chart(
            dir,
            "memory",
            false,
            &page(
                "peak memory per rank",
                runs_legend(Mark::Block),
                vec!["The backend's buffers at their peak: weights, activations, K/V and workspace.".into()],
            ),
            |root| per_rank_chart(root, mem_unit, &s, &runs, &|r| vec![r.memory.buffers_peak_bytes as f64 / mem_scale]),
        )?,
        crate::chart::chart(
            dir,
            "compute_comm",
            false,
            &page(
                "compute and communication per iteration (mean)",
                parts_legend,
                vec!["Hidden communication ran during the compute below it: stacked for its size, not its time.".into()],
            ),
            |root| {
                per_rank_chart(root, "ms", &s, &runs, &|r| {
                    vec![mean_ms(r, |i| i.compute_s), mean_ms(r, |i| i.comm_s), mean_ms(r, |i| i.hidden_s)]
                })
            },
        )?,
    ];
    // With training steps: each rank's step by phase.
    if s.iter().any(|x| x.config.train) {
        let note = "Each phase on each rank, mean over the measured steps, by the host's clock once the device finished the phase.";
        charts.push(crate::chart::chart(
            dir,
            "train_phases",
            false,
            &page("training step by phase", stacked_legend(&["forward", "backward", "gradient all-reduce"]), vec![note.into()]),
            |root| {
                per_rank_chart(root, "ms", &s, &runs, &|r| {
                    (0..3)
                        .map(|k| 1e3 * r.iterations.iter().map(|i| i.phases.seconds[k]).sum::<f64>() / r.iterations.len().max(1) as f64)
                        .collect()
                })
            },
        )?);
    }
    // With decode steps: TTFT and TPOT, and the inter-token latencies.
    if s.iter().any(|x| x.measured.as_ref().is_some_and(|m| m.decode.is_some())) {
        let note = "TTFT is the prefill of the prompt (an iteration above); TPOT the mean decode step per request; bars 95% CIs.";
        charts.push(crate::chart::chart(
            dir,
            "ttft_tpot",
            false,
            &page("time to first token and time per output token", runs_legend(Mark::Block), vec![note.into()]),
            |root| decode::ttft_tpot_chart(root, &s),
        )?);
        let note = "Each step is the job's: its slowest rank. Dots mark p50, p90 and p99.";
        charts.push(crate::chart::chart(
            dir,
            "itl",
            false,
            &page("inter-token latency, empirical CDF", runs_legend(Mark::Line), vec![note.into()]),
            |root| decode::itl_chart(root, &s, &runs),
        )?);
    }
    Ok(charts)
}
