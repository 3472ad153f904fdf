//! A sweep's chart per world: tokens/s against sequence length on log axes, the crossovers
//! marked.

use super::point::{Basis, Point};
use super::rank::{fastest, Crossover};
use crate::plan::Hardware;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tokens/s against sequence length, log axes: each strategy's fastest split that fits, the
/// crossovers marked where the two lines meet.
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
    use crate::report::{colour, err, FONT};
    use plotters::prelude::*;
    crate::report::load_font()?;
    let by = fastest(pts.iter().copied(), basis);
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
    let on = match basis {
        Basis::Projected => format!("{world} GPUs of {}", hw.name),
        Basis::Measured => format!("{world} ranks, {}", pts.first().and_then(|p| p.measured.as_ref()).map_or("", |_| "this machine")),
    };
    let caption = format!("{} tokens/s, {on} ({kv} K/V heads)", basis.name());
    crate::report::chart(dir, name, basis == Basis::Measured, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(caption, (FONT, 24))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(90)
            .build_cartesian_2d((x0 / 1.3..x1 * 1.3).log_scale(), (y0..y1).log_scale())
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("sequence length (tokens)")
            .y_desc(format!("{} tokens/s (fastest split)", basis.name()))
            .label_style((FONT, 15))
            .x_label_formatter(&|x| format!("{:.0}", x))
            .y_labels(12)
            .y_label_formatter(&|y| format!("{:.0}", y))
            .draw()
            .map_err(err)?;
        for (o, line) in &series {
            let col = colour(*o);
            let name = crate::strategy::SPECS[*o].kind.name();
            c.draw_series(LineSeries::new(line.iter().copied(), col.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            c.draw_series(line.iter().map(|&p| Circle::new(p, 4, col.filled()))).map_err(err)?;
        }
        for x in cross {
            let at = (x.seq_estimate, x.tps_estimate);
            c.draw_series(std::iter::once(Cross::new(at, 9, BLACK.stroke_width(2)))).map_err(err)?;
            let label = format!("{} / {}", x.faster_below.name(), x.faster_above.name());
            c.draw_series(std::iter::once(Text::new(label, at, (FONT, 13).into_font().color(&BLACK)))).map_err(err)?;
        }
        crate::report::legend(&mut c, 15)
    })
}
