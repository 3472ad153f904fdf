//! The analysis of a sweep's points: the model's projection at each, each strategy's fastest
//! split, the best strategy per point with its margin, and where the faster of two changes.

use super::point::{Basis, Figure, Point};
use crate::config::{RunConfig, StrategyKind};
use crate::plan::Hardware;
use std::collections::BTreeMap;

/// The analytic model at every config, on nodes of `hw.gpus_per_node`; `tick` after each.
pub fn evaluate(cfgs: &[RunConfig], hw: &Hardware, tick: &mut dyn FnMut()) -> Vec<Point> {
    cfgs.iter()
        .map(|cfg| {
            let p = crate::plan::project(cfg, hw, &[hw.gpus_per_node]);
            let pr = &p.projections[0];
            tick();
            Point {
                cfg: cfg.clone(),
                world: p.world,
                fits: p.fits,
                memory_bytes: p.memory.total,
                tps: pr.tps_projected,
                ttft_s: pr.ttft_s,
                link: pr.link.clone(),
                exposed_comm_s: pr.exposed_comm_s,
                decode: p.decode.clone(),
                measured: None,
            }
        })
        .collect()
}

/// Strategy (its place in `SPECS`) -> its fastest split at one point of the grid.
pub(super) type ByStrategy<'a> = BTreeMap<usize, &'a Point>;

/// (world, K/V heads, length) -> each strategy's fastest split there.
pub(super) type Fastest<'a> = BTreeMap<(usize, usize, usize), ByStrategy<'a>>;

/// Order of a strategy in `strategy::SPECS`: the order of columns and pairs.
pub fn order(kind: StrategyKind) -> usize {
    crate::strategy::SPECS.iter().position(|s| s.kind == kind).expect("every kind has a spec")
}

pub(super) fn fastest<'a>(points: impl IntoIterator<Item = &'a Point>, basis: Basis) -> Fastest<'a> {
    fastest_by(points, basis, Figure::Prefill)
}

/// As `fastest`, by the prefill's or the decode's figure.
pub(super) fn fastest_by<'a>(points: impl IntoIterator<Item = &'a Point>, basis: Basis, f: Figure) -> Fastest<'a> {
    let mut by: Fastest = BTreeMap::new();
    for p in points {
        let Some(v) = p.figure_of(basis, f) else { continue };
        let slot = by.entry(p.key()).or_default().entry(order(p.cfg.strategy)).or_insert(p);
        if v > slot.figure_of(basis, f).unwrap_or(0.0) {
            *slot = p;
        }
    }
    by
}

/// Per world, K/V heads and length: the fastest strategy and split that fits, and the fastest
/// other strategy (how much the choice matters).
#[derive(Clone, Debug)]
pub struct Best<'a> {
    pub point: &'a Point,
    pub runner_up: Option<&'a Point>,
}

pub fn best(points: &[Point], basis: Basis) -> Vec<Best<'_>> {
    best_by(points, basis, Figure::Prefill)
}

/// As `best`, by the prefill's or the decode's figure.
pub fn best_by(points: &[Point], basis: Basis, f: Figure) -> Vec<Best<'_>> {
    let v = |p: &Point| p.figure_of(basis, f).unwrap_or(0.0);
    fastest_by(points, basis, f)
        .into_values()
        .map(|by_strategy| {
            let mut ranked: Vec<&Point> = by_strategy.into_values().collect();
            ranked.sort_by(|a, b| v(b).total_cmp(&v(a)));
            Best { point: ranked[0], runner_up: ranked.get(1).copied() }
        })
        .collect()
}

/// Two strategies' order changing between two swept lengths, at one world and K/V head count.
#[derive(Clone, Debug, PartialEq)]
pub struct Crossover {
    pub world: usize,
    pub kv_heads: usize,
    pub faster_below: StrategyKind,
    pub faster_above: StrategyKind,
    /// The swept lengths on either side of the change.
    pub seq_below: usize,
    pub seq_above: usize,
    /// Where the tokens/s ratio of the two crosses 1, interpolating its logarithm linearly in the
    /// logarithm of the length between the two sides.
    pub seq_estimate: f64,
    /// The faster one's tokens/s there, interpolated the same way (where the chart marks it).
    pub tps_estimate: f64,
}

/// For every world and K/V head count, every pair of strategies (in `SPECS` order), each length
/// interval of the sweep where the faster of the two changes; only lengths where both fit count.
/// Whether two points' figures differ beyond what a run can tell apart: always for projections;
/// for measurements, only where both have a 95% interval and the intervals do not overlap.
fn distinct(a: &Point, b: &Point, basis: Basis, f: Figure) -> bool {
    let ci = |p: &Point| {
        let m = p.measured.as_ref()?;
        match f {
            Figure::Prefill => m.tps_ci95,
            Figure::Decode => m.tpot_ci95,
        }
    };
    match basis {
        Basis::Projected => true,
        Basis::Measured => match (ci(a), ci(b)) {
            (Some((alo, ahi)), Some((blo, bhi))) => ahi < blo || bhi < alo,
            _ => false,
        },
    }
}

pub fn crossovers(points: &[Point], basis: Basis) -> Vec<Crossover> {
    crossovers_by(points, basis, Figure::Prefill)
}

/// As `crossovers`, by the prefill's or the decode's figure (decode: where the order of two
/// strategies' TPOT changes; the tokens/s estimate is the decode's).
pub fn crossovers_by(points: &[Point], basis: Basis, f: Figure) -> Vec<Crossover> {
    let by = fastest_by(points, basis, f);
    let mut groups: BTreeMap<(usize, usize), Vec<(usize, &ByStrategy)>> = BTreeMap::new();
    for ((world, kv, seq), strategies) in &by {
        groups.entry((*world, *kv)).or_default().push((*seq, strategies));
    }
    let mut out = Vec::new();
    for ((world, kv_heads), lengths) in groups {
        let present: std::collections::BTreeSet<usize> = lengths.iter().flat_map(|(_, s)| s.keys().copied()).collect();
        let present: Vec<usize> = present.into_iter().collect();
        for (i, &a) in present.iter().enumerate() {
            for &b in &present[i + 1..] {
                // (length, a's tokens/s, b's, whether they differ beyond noise) where both fit.
                let both: Vec<(usize, f64, f64, bool)> = lengths
                    .iter()
                    .filter_map(|(seq, s)| {
                        let (pa, pb) = (s.get(&a)?, s.get(&b)?);
                        Some((*seq, pa.figure_of(basis, f)?, pb.figure_of(basis, f)?, distinct(pa, pb, basis, f)))
                    })
                    .collect();
                for w in both.windows(2) {
                    let ((s0, a0, b0, d0), (s1, a1, b1, d1)) = (w[0], w[1]);
                    let (win0, win1) = (a0 >= b0, a1 >= b1);
                    // A change of order within the measurements' noise is no crossover.
                    if win0 == win1 || !(d0 && d1) {
                        continue;
                    }
                    let (r0, r1) = ((a0 / b0).ln(), (a1 / b1).ln());
                    let t = r0 / (r0 - r1);
                    let (l0, l1) = ((s0 as f64).ln(), (s1 as f64).ln());
                    let seq_estimate = (l0 + t * (l1 - l0)).exp();
                    let kind = |o: usize| crate::strategy::SPECS[o].kind;
                    let (lo, hi) = if win0 { (a, b) } else { (b, a) };
                    let tps_estimate = (a0.ln() + t * (a1.ln() - a0.ln())).exp();
                    out.push(Crossover {
                        world,
                        kv_heads,
                        faster_below: kind(lo),
                        faster_above: kind(hi),
                        seq_below: s0,
                        seq_above: s1,
                        seq_estimate,
                        tps_estimate,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(kind: StrategyKind, world: usize, seq: usize, tps: f64, fits: bool) -> Point {
        let mut cfg = RunConfig::of_preset(crate::config::Preset::Tiny, kind, 1, 1, world);
        cfg.model.seq_len = seq;
        Point {
            cfg,
            world,
            fits,
            memory_bytes: 0.0,
            tps,
            ttft_s: 0.0,
            link: "nvlink".into(),
            exposed_comm_s: 0.0,
            decode: None,
            measured: None,
        }
    }

    /// Two lines that cross once between 100 and 1000 tokens (ratio 2 and 1/2: the estimate is
    /// the geometric middle), a third that never fits, and the best per length with its margin.
    #[test]
    fn crossovers_and_best_from_points() {
        let (ring, ul, tp) = (StrategyKind::Ring, StrategyKind::Ulysses, StrategyKind::TpPp);
        let pts = vec![
            point(ring, 4, 10, 50.0, true),
            point(ul, 4, 10, 200.0, true),
            point(ring, 4, 100, 100.0, true),
            point(ul, 4, 100, 200.0, true),
            point(ring, 4, 1000, 400.0, true),
            point(ul, 4, 1000, 200.0, true),
            point(tp, 4, 1000, 9000.0, false),
        ];
        let c = crossovers(&pts, Basis::Projected);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].faster_below, c[0].faster_above, c[0].seq_below, c[0].seq_above), (ul, ring, 100, 1000));
        assert!((c[0].seq_estimate / 1000f64.sqrt() / 10.0 - 1.0).abs() < 1e-12, "{}", c[0].seq_estimate);
        assert!((c[0].tps_estimate - 200.0).abs() < 1e-9);
        let b = best(&pts, Basis::Projected);
        assert_eq!(b.len(), 3);
        assert_eq!((b[2].point.cfg.strategy, b[2].runner_up.unwrap().cfg.strategy), (ring, ul), "what does not fit is not the best");
        assert_eq!(b[0].point.cfg.strategy, ul);
    }

    /// Measured points cross only where their 95% intervals are apart on both sides of the change:
    /// an order that flips within the noise (or without an interval to tell) is no crossover.
    #[test]
    fn a_measured_crossover_needs_intervals_that_do_not_overlap() {
        let (ring, ul) = (StrategyKind::Ring, StrategyKind::Ulysses);
        let measured = |kind, seq, tps: f64, half: Option<f64>| {
            let mut p = point(kind, 4, seq, tps, true);
            p.measured = Some(super::super::point::Measured {
                tps,
                tps_ci95: half.map(|h| (tps - h, tps + h)),
                iter_s: 1.0,
                peak_mem_gib: 0.0,
                run_dir: String::new(),
                device: "cpu".into(),
                tpot_s: None,
                tpot_ci95: None,
                decode_tps: None,
            });
            p
        };
        let pair = |h0: Option<f64>, h1: Option<f64>| {
            vec![
                measured(ring, 100, 100.0, h0),
                measured(ul, 100, 200.0, h0),
                measured(ring, 1000, 400.0, h1),
                measured(ul, 1000, 200.0, h1),
            ]
        };
        assert_eq!(crossovers(&pair(Some(10.0), Some(10.0)), Basis::Measured).len(), 1, "apart on both sides");
        assert_eq!(crossovers(&pair(Some(10.0), Some(150.0)), Basis::Measured).len(), 0, "overlapping above");
        assert_eq!(crossovers(&pair(None, Some(10.0)), Basis::Measured).len(), 0, "no interval below");
        assert_eq!(crossovers(&pair(None, None), Basis::Projected).len(), 1, "a projection has no noise");
    }
}
