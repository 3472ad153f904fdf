//! `report`'s decode charts, for runs with --decode-tokens: each strategy's time to first token
//! and time per output token with their 95% intervals, and the distribution of its inter-token
//! latencies (the job's step: its slowest rank's) as an empirical CDF with p50, p90 and p99.

use super::labels::{short_labels, Area};
use crate::chart::{colour, err, FONT};
use crate::metrics::{quantile, Stats};
use crate::output::rankfile::RankRun;
use crate::output::reduce::StrategySummary;
use anyhow::Result;
use plotters::prelude::*;

/// The job's decode step times of a run (slowest rank per step), every measured iteration's, ms.
pub(super) fn job_steps_ms(x: &StrategySummary, runs: &[RankRun]) -> Vec<f64> {
    let ranks: Vec<&RankRun> = runs.iter().filter(|r| r.run_id == x.first.run_id && r.sequence == x.first.sequence).collect();
    let n = ranks.iter().map(|r| r.decode.len()).min().unwrap_or(0);
    let steps = x.config.decode_tokens;
    (0..n)
        .flat_map(|i| (0..steps).map(move |j| (i, j)))
        .map(|(i, j)| 1e3 * ranks.iter().map(|r| r.decode[i].step_s[j]).fold(0.0, f64::max))
        .collect()
}

/// One panel of bars with 95% intervals: `value` gives a run's mean and interval in ms.
fn bars(root: &Area, s: &[&StrategySummary], what: &str, value: &dyn Fn(&StrategySummary) -> Option<Stats>) -> Result<()> {
    let stats: Vec<Option<Stats>> = s.iter().map(|x| value(x)).collect();
    let top = stats.iter().flatten().map(|st| st.ci95.map_or(st.mean, |c| c.1.max(st.mean))).fold(0.0, f64::max) * 1.15;
    let names = short_labels(s);
    let mut c = ChartBuilder::on(root)
        .margin(15)
        .caption(what, (FONT, 17))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..s.len() as f64 - 0.5, 0f64..top.max(1e-6))
        .map_err(err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(s.len().max(2))
        .x_label_formatter(&|x| names.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 0.01).cloned().unwrap_or_default())
        .y_desc("ms")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (i, st) in stats.iter().enumerate() {
        let Some(st) = st else { continue };
        let xi = i as f64;
        c.draw_series(std::iter::once(Rectangle::new([(xi - 0.3, 0.0), (xi + 0.3, st.mean)], colour(i).filled()))).map_err(err)?;
        match st.ci95 {
            Some((lo, hi)) => {
                c.draw_series(std::iter::once(ErrorBar::new_vertical(xi, lo, st.mean, hi, BLACK.stroke_width(2), 16))).map_err(err)?;
            }
            None => {
                let note = format!("no 95% CI (n {})", st.n);
                c.draw_series(std::iter::once(Text::new(note, (xi - 0.25, st.mean * 1.06), (FONT, 13)))).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// TTFT (the prefill) and TPOT side by side, each strategy a bar, in ms.
pub(super) fn ttft_tpot_chart(root: &Area, s: &[&StrategySummary]) -> Result<()> {
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let ms = |st: &Stats| Stats {
        mean: st.mean * 1e3,
        std: st.std * 1e3,
        min: st.min * 1e3,
        median: st.median * 1e3,
        max: st.max * 1e3,
        ci95: st.ci95.map(|(a, b)| (a * 1e3, b * 1e3)),
        n: st.n,
    };
    bars(&left, s, "time to first token (the prefill)", &|x| x.measured.as_ref().filter(|m| m.decode.is_some()).map(|m| ms(&m.iter)))?;
    bars(&right, s, "time per output token (TPOT)", &|x| x.measured.as_ref().and_then(|m| m.decode.as_ref()).map(|d| ms(&d.tpot)))
}

/// Each run's inter-token latencies as an empirical CDF, its p50, p90 and p99 marked.
pub(super) fn itl_chart(root: &Area, s: &[&StrategySummary], runs: &[RankRun]) -> Result<()> {
    let series: Vec<Vec<f64>> = s
        .iter()
        .map(|x| {
            let mut v = job_steps_ms(x, runs);
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let right = series.iter().flatten().copied().fold(0.0, f64::max) * 1.05;
    let mut c = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..right.max(1e-6), 0f64..1.0)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("inter-token latency (job step, slowest rank), ms")
        .y_desc("fraction of steps")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (i, v) in series.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let col = colour(i);
        let n = v.len() as f64;
        let steps = v.iter().enumerate().flat_map(|(k, &x)| [(x, k as f64 / n), (x, (k + 1) as f64 / n)]);
        c.draw_series(LineSeries::new(steps, col.stroke_width(2))).map_err(err)?;
        for q in [0.5, 0.9, 0.99] {
            let x = quantile(v, q).unwrap_or(0.0);
            c.draw_series(std::iter::once(Circle::new((x, q), 5, col.filled()))).map_err(err)?;
        }
    }
    Ok(())
}
