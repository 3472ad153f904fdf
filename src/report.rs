//! `ringbench report DIR`: PNG charts of a run next to its CSVs, from the rank files alone:
//! tokens/s per strategy with 95% CI bars, the job's iteration times, per-rank peak memory, and
//! per-rank compute, exposed and hidden communication time.

use crate::metrics::IterationRecord;
use crate::output::rankfile::RankRun;
use crate::output::reduce::{self, StrategySummary};
use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (1000, 600);
pub(crate) const FONT: &str = "sans-serif";

/// Where a TrueType font for the charts' text is looked for (RINGBENCH_FONT first).
const FONT_PATHS: [&str; 3] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

pub(crate) fn load_font() -> Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> =
                std::env::var_os("RINGBENCH_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from)).collect();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "report needs a TrueType font for its labels: install fonts-dejavu-core or set RINGBENCH_FONT (looked in {})",
                    FONT_PATHS.join(", ")
                )
            })?;
            let bytes: &'static [u8] =
                Box::leak(std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A series colour per strategy run: one for each of the seven strategies before any repeats.
pub(crate) fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 7] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    PALETTE[i % PALETTE.len()]
}

fn label(s: &StrategySummary) -> String {
    match s.config.emulate {
        Some(e) => format!("{} ({}, EMULATED rank {}/{})", s.config.strategy.name(), s.first.run_id, e.as_rank, e.world),
        None => format!("{} ({})", s.config.strategy.name(), s.first.run_id),
    }
}

/// Draw into `<dir>/<name>.partial.png`, then move it into place: an identical existing chart is
/// left alone, a different one is refused, or, with `replace` (a chart drawn again from data that
/// is kept, as a measured sweep's), replaced whole.
pub(crate) fn chart(
    dir: &Path,
    name: &str,
    replace: bool,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.png"));
    let tmp = dir.join(format!("{name}.partial.png"));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        // A crash's leftover, or a link planted there: removed, never drawn through.
        std::fs::remove_file(&tmp)?;
    }
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    }
    if path.exists() && replace {
        std::fs::rename(&tmp, &path).map_err(|e| anyhow!("replacing {}: {e}", path.display()))?;
        return Ok(path);
    }
    if path.exists() {
        let same = std::fs::read(&path)? == std::fs::read(&tmp)?;
        std::fs::remove_file(&tmp)?;
        if !same {
            bail!("{} exists and differs; it is never overwritten", path.display());
        }
        return Ok(path);
    }
    crate::output::publish(&tmp, &path)?;
    Ok(path)
}

pub(crate) fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// The series legend, top right (the charts leave head room there), in `font_size` points; the
/// sweep's chart uses it too.
pub(crate) fn legend<'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    font_size: u32,
) -> Result<()> {
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, font_size))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Bars of tokens/s with their 95% confidence intervals.
fn tps_chart(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>, s: &[&StrategySummary]) -> Result<()> {
    // A run without an interval (one, or too few and noisy, iterations) gets no error bar.
    let top = s.iter().filter_map(|x| x.measured.as_ref()).map(|m| m.tps_ci95.map_or(m.tps, |c| c.1.max(m.tps))).fold(0.0, f64::max) * 1.15;
    let names: Vec<String> = s.iter().map(|x| label(x)).collect();
    let mut c = ChartBuilder::on(root)
        .caption("tokens/s (95% CI)", (FONT, 26))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5f64..s.len() as f64 - 0.5, 0f64..top.max(1.0))
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(s.len().max(2))
        .x_label_formatter(&|x| names.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 0.01).cloned().unwrap_or_default())
        .y_desc("tokens/s")
        .label_style((FONT, 16))
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
                c.draw_series(std::iter::once(Text::new(note, (xi - 0.25, m.tps * 1.06), (FONT, 16)))).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// The job's iteration time (slowest rank) per measured iteration.
fn iterations_chart(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>, s: &[&StrategySummary], runs: &[RankRun]) -> Result<()> {
    let series: Vec<Vec<(f64, f64)>> = s
        .iter()
        .map(|x| {
            let ranks: Vec<&RankRun> = runs.iter().filter(|r| r.run_id == x.first.run_id && r.sequence == x.first.sequence).collect();
            let n = ranks.iter().map(|r| r.iterations.len()).min().unwrap_or(0);
            (0..n).map(|i| (i as f64, 1e3 * ranks.iter().map(|r| r.iterations[i].total_s).fold(0.0, f64::max))).collect()
        })
        .collect();
    let n = series.iter().map(Vec::len).max().unwrap_or(1).max(2) as f64;
    let top = series.iter().flatten().map(|p| p.1).fold(0.0, f64::max) * 1.4;
    let mut c = ChartBuilder::on(root)
        .caption("iteration time (slowest rank)", (FONT, 26))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n - 1.0, 0f64..top.max(1e-3))
        .map_err(err)?;
    c.configure_mesh().x_desc("measured iteration").y_desc("ms").label_style((FONT, 16)).draw().map_err(err)?;
    for (i, (pts, x)) in series.iter().zip(s).enumerate() {
        let col = colour(i);
        c.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2)))
            .map_err(err)?
            .label(label(x))
            .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], col.stroke_width(3)));
    }
    legend(&mut c, 16)
}

/// Per-rank bars, one group per rank and one bar per strategy run; `value` gives the stacked
/// parts of a bar (bottom first) and `parts` names them.
fn per_rank_chart(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    s: &[&StrategySummary],
    runs: &[RankRun],
    parts: &[&str],
    value: &dyn Fn(&RankRun) -> Vec<f64>,
) -> Result<()> {
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
    // Head room above the tallest bar for the legend.
    let top = bars.iter().flatten().map(|v| v.iter().sum::<f64>()).fold(0.0, f64::max) * 1.6;
    let mut c = ChartBuilder::on(root)
        .caption(caption, (FONT, 26))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5f64..world as f64 - 0.5, 0f64..top.max(1e-9))
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(world.clamp(2, 32))
        .x_label_formatter(&|x| if (x - x.round()).abs() < 0.01 { format!("rank {}", x.round()) } else { String::new() })
        .y_desc(unit)
        .label_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let width = 0.8 / s.len().max(1) as f64;
    for (k, (x, per_rank)) in s.iter().zip(&bars).enumerate() {
        for (p, part) in parts.iter().enumerate() {
            let col = colour(k).mix([1.0, 0.55, 0.25][p.min(2)]);
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
            let name = if parts.len() > 1 { format!("{} {part}", label(x)) } else { label(x) };
            c.draw_series(rects)
                .map_err(err)?
                .label(name)
                .legend(move |(a, b)| Rectangle::new([(a, b - 6), (a + 16, b + 6)], col.filled()));
        }
    }
    legend(&mut c, 16)
}

fn mean_ms(r: &RankRun, f: fn(&IterationRecord) -> f64) -> f64 {
    1e3 * r.iterations.iter().map(f).sum::<f64>() / r.iterations.len().max(1) as f64
}

/// Write the charts of run directory `dir` next to its CSVs; returns their paths.
pub fn report(dir: &Path) -> Result<Vec<PathBuf>> {
    if !crate::output::rankfile::rank_file(dir, 0).exists() && (dir.join("sweep.json").exists() || dir.join("sweep.csv").exists()) {
        anyhow::bail!(
            "{}: a sweep's directory, not a run directory (its charts are drawn by the sweep); report one of its points, {}/<point id>",
            dir.display(),
            dir.display()
        );
    }
    load_font()?;
    let (runs, _) = reduce::load(dir, false).with_context(|| format!("run directory {}", dir.display()))?;
    let summaries = reduce::summarize(&runs, &[])?;
    let s: Vec<&StrategySummary> = summaries.iter().collect();
    Ok(vec![
        chart(dir, "tps", false, |root| tps_chart(root, &s))?,
        chart(dir, "iterations", false, |root| iterations_chart(root, &s, &runs))?,
        chart(dir, "memory", false, |root| {
            per_rank_chart(root, "peak memory per rank (backend buffers)", "MiB", &s, &runs, &["peak"], &|r| {
                vec![r.memory.buffers_peak_bytes as f64 / (1u64 << 20) as f64]
            })
        })?,
        chart(dir, "compute_comm", false, |root| {
            // Hidden communication ran during the compute below it: stacked for its size, not its time.
            let parts = ["compute", "comm. exposed", "comm. hidden"];
            per_rank_chart(root, "compute and communication per iteration", "ms", &s, &runs, &parts, &|r| {
                vec![mean_ms(r, |i| i.compute_s), mean_ms(r, |i| i.comm_s), mean_ms(r, |i| i.hidden_s)]
            })
        })?,
    ])
}
