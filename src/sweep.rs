//! `ringbench sweep`: where each strategy wins, and by how much. A grid of world sizes, sequence
//! lengths and K/V head counts; at each point of it, every strategy `--strategy` selects with every
//! split of the world it allows (tp x pp, ulysses x ring, tp x cp: every factorization) that
//! validates (under `--strategy all`, usp and tp-cp in two-dimensional splits only, as `run`
//! takes them). `--mode plan` asks the analytic model (`plan::project`) at every point, at any
//! scale. `--mode run` measures every point of the launch's world with `run`'s protocol (each a run
//! directory in --out, named by its config), resumable: a rerun skips the points already complete
//! and redoes one a signal interrupted, whose files are moved aside, never deleted.
//!
//! What it writes to `--out DIR`: `sweep.csv` (every point), `best.csv` (per world, K/V heads and
//! length, the fastest strategy and split that fits, and by how much), `crossovers.csv` (per world
//! and pair of strategies, the lengths between which the faster of the two changes), and per world
//! a chart of tokens/s against sequence length (log axes) with the crossovers marked. A strategy's
//! figure at a point is its fastest split that fits one GPU.

use crate::config::{ConfigError, RunConfig, RunRequest, StrategyKind, StrategySelection};
use crate::plan::Hardware;
use crate::strategy::resolve::{runs_in_all, SizeFlags};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which figure the analysis (fastest, crossovers, best) ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    Projected,
    Measured,
}

impl Basis {
    fn name(self) -> &'static str {
        match self {
            Basis::Projected => "projected",
            Basis::Measured => "measured",
        }
    }
}

/// The grid a sweep covers: the strategies, model and measurement asked for (without any split
/// or length, which the sweep sets), the lengths, worlds and K/V head counts.
#[derive(Clone, Debug)]
pub struct SweepGrid {
    pub request: RunRequest,
    pub seq_lens: Vec<usize>,
    /// Empty: 8, 16, ..., 1024 (a measured sweep: the launch's world).
    pub worlds: Vec<usize>,
    /// Empty: the model's.
    pub kv_heads_list: Vec<usize>,
}

/// The largest world a plan sweep takes: its cost per point grows with the ranks.
const MAX_WORLD: usize = 1 << 16;

/// One point of the grid and what the analytic model projects for it (on nodes of the
/// profile's size).
#[derive(Clone, Debug)]
pub struct Point {
    pub cfg: RunConfig,
    pub world: usize,
    pub fits: bool,
    pub memory_bytes: f64,
    pub tps: f64,
    pub ttft_s: f64,
    pub link: String,
    pub exposed_comm_s: f64,
    /// What `--mode run` measured at the point, where it ran.
    pub measured: Option<Measured>,
}

/// A point's measured figures (from its run directory's summary.csv).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub tps: f64,
    pub iter_s: f64,
    pub peak_mem_gib: f64,
    pub run_dir: String,
}

impl Point {
    /// The figure `basis` ranks by: the projection where the point fits the profile's GPU, or the
    /// measurement where it ran.
    fn figure(&self, basis: Basis) -> Option<f64> {
        match basis {
            Basis::Projected => self.fits.then_some(self.tps),
            Basis::Measured => self.measured.as_ref().map(|m| m.tps),
        }
    }

    fn key(&self) -> (usize, usize, usize) {
        (self.world, self.cfg.model.kv_heads, self.cfg.model.seq_len)
    }

    /// The split in words, without the layout ("tp 8 x cp 2").
    pub fn split(&self) -> String {
        self.cfg.describe_split().replace(&format!(", {}", self.cfg.layout.name()), "")
    }
}

/// Every config of the grid that validates, in order of world, K/V heads, length, strategy and
/// inner size. Flags that fix a split (--tp, --pp, --ring, --ulysses, --cp) or the length
/// (--seq-len) are refused: the sweep sets them.
pub fn grid(args: &SweepGrid) -> Result<Vec<RunConfig>, ConfigError> {
    grid_on(args, None)
}

/// The grid on the launch's `world` (`--mode run`), or on --worlds.
pub fn grid_on(args: &SweepGrid, launch_world: Option<usize>) -> Result<Vec<RunConfig>, ConfigError> {
    let c = &args.request;
    for (flag, given) in
        [("--tp", c.tp), ("--pp", c.pp), ("--ring", c.ring), ("--ulysses", c.ulysses), ("--cp", c.cp), ("--seq-len", c.seq_len)]
    {
        if let Some(v) = given {
            return Err(ConfigError(format!(
                "{flag} {v}: a sweep tries every split of each world and every length of --seq-lens; it takes no {flag}"
            )));
        }
    }
    let worlds = match launch_world {
        Some(w) if args.worlds.is_empty() || args.worlds == [w] => vec![w],
        Some(w) => {
            return Err(ConfigError(format!(
                "--worlds {}: a measured sweep runs on the launch's world only, {w} rank{} (start one mpirun per world size)",
                args.worlds.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(","),
                if w == 1 { "" } else { "s" }
            )))
        }
        None if args.worlds.is_empty() => (3..=10).map(|e| 1 << e).collect(),
        None => args.worlds.clone(),
    };
    for (flag, list) in [("--seq-lens", &args.seq_lens), ("--worlds", &worlds), ("--kv-heads-list", &args.kv_heads_list)] {
        crate::config::require_positive(&list.iter().map(|&v| (flag, v)).collect::<Vec<_>>())?;
    }
    for &w in &worlds {
        crate::config::require_at_most("--worlds", w, MAX_WORLD)?;
    }
    let kv_list: Vec<Option<usize>> =
        if args.kv_heads_list.is_empty() { vec![c.kv_heads] } else { args.kv_heads_list.iter().map(|&k| Some(k)).collect() };
    let kinds: Vec<StrategyKind> = c.strategy.strategies();
    let mut out: Vec<RunConfig> = Vec::new();
    let mut first_error = None;
    for &world in &worlds {
        for &kv in &kv_list {
            for &seq in &args.seq_lens {
                for &kind in &kinds {
                    let start = out.len();
                    for inner in (1..=world).filter(|i| world % i == 0) {
                        let split = SizeFlags::split(inner, world);
                        let point = RunRequest {
                            strategy: StrategySelection::One(kind),
                            seq_len: Some(seq),
                            kv_heads: kv,
                            tp: split.tp,
                            pp: split.pp,
                            ulysses: split.ulysses,
                            ..c.clone()
                        };
                        match point.resolve(world) {
                            Ok(cfgs) => {
                                // Under `all`, as in `run`, usp and tp-cp take two-dimensional
                                // splits only: with a size of 1 they are ring, ulysses or tp-pp,
                                // which the sweep has already.
                                let all = SizeFlags { all: true, ..Default::default() };
                                for cfg in cfgs {
                                    let counts = c.strategy != StrategySelection::All || runs_in_all(kind, &all, &Ok(cfg.clone()));
                                    if counts && !out[start..].contains(&cfg) {
                                        out.push(cfg);
                                    }
                                }
                            }
                            Err(e) => {
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        let why = first_error.map(|e| format!(" (for example: {e})")).unwrap_or_default();
        return Err(ConfigError(format!("no strategy and split of the sweep's grid validates{why}")));
    }
    Ok(out)
}

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
                measured: None,
            }
        })
        .collect()
}

/// Strategy (its place in `SPECS`) -> its fastest split at one point of the grid.
type ByStrategy<'a> = BTreeMap<usize, &'a Point>;

/// (world, K/V heads, length) -> each strategy's fastest split there.
type Fastest<'a> = BTreeMap<(usize, usize, usize), ByStrategy<'a>>;

/// Order of a strategy in `strategy::SPECS`: the order of columns and pairs.
fn order(kind: StrategyKind) -> usize {
    crate::strategy::SPECS.iter().position(|s| s.kind == kind).expect("every kind has a spec")
}

fn fastest<'a>(points: impl IntoIterator<Item = &'a Point>, basis: Basis) -> Fastest<'a> {
    let mut by: Fastest = BTreeMap::new();
    for p in points {
        let Some(v) = p.figure(basis) else { continue };
        let slot = by.entry(p.key()).or_default().entry(order(p.cfg.strategy)).or_insert(p);
        if v > slot.figure(basis).unwrap_or(0.0) {
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
    let v = |p: &Point| p.figure(basis).unwrap_or(0.0);
    fastest(points, basis)
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
pub fn crossovers(points: &[Point], basis: Basis) -> Vec<Crossover> {
    let by = fastest(points, basis);
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
                // (length, a's tokens/s, b's) where both fit, by length.
                let both: Vec<(usize, f64, f64)> =
                    lengths.iter().filter_map(|(seq, s)| Some((*seq, s.get(&a)?.figure(basis)?, s.get(&b)?.figure(basis)?))).collect();
                for w in both.windows(2) {
                    let ((s0, a0, b0), (s1, a1, b1)) = (w[0], w[1]);
                    let (win0, win1) = (a0 >= b0, a1 >= b1);
                    if win0 == win1 {
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
        "strategy",
        "split",
        "layout",
        "fits",
        "memory_gib",
        "projected_tps",
        "projected_ttft_s",
        "projected_tpot_us",
        "projected_exposed_comm_s",
        "heaviest_link",
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

fn best_table(best: &[Best], basis: Basis) -> crate::output::reduce::Table {
    let header = [
        "basis",
        "world",
        "kv_heads",
        "seq_len",
        "strategy",
        "split",
        "tps",
        "projected_ttft_s",
        "memory_gib",
        "runner_up",
        "runner_up_split",
        "speedup_over_runner_up",
    ];
    let v = |p: &Point| p.figure(basis).unwrap_or(0.0);
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
                format!("{:.6}", p.ttft_s),
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
    use crate::output::reduce::{csv_bytes, write_new_or_same};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--out {}: {e}", dir.display()))?;
    let best = best(points, basis);
    let crossovers = crossovers(points, basis);
    let mut written = Vec::new();
    for (name, table) in [
        ("sweep.csv", sweep_table(points, hw)),
        ("best.csv", best_table(&best, basis)),
        ("crossovers.csv", crossover_table(&crossovers, basis)),
    ] {
        let path = dir.join(name);
        write_new_or_same(&path, &csv_bytes(&table)?, basis == Basis::Measured)?;
        written.push(path);
    }
    let groups: std::collections::BTreeSet<(usize, usize)> = points.iter().map(|p| (p.world, p.cfg.model.kv_heads)).collect();
    let one_kv = groups.iter().map(|g| g.1).collect::<std::collections::BTreeSet<_>>().len() == 1;
    for (world, kv) in groups {
        let name = if one_kv { format!("tps-world-{world}") } else { format!("tps-world-{world}-kv-{kv}") };
        let pts: Vec<&Point> = points.iter().filter(|p| p.world == world && p.cfg.model.kv_heads == kv).collect();
        let cross: Vec<&Crossover> = crossovers.iter().filter(|c| c.world == world && c.kv_heads == kv).collect();
        written.push(chart(dir, &name, world, kv, &pts, &cross, hw, basis)?);
    }
    Ok(written)
}

/// Tokens/s against sequence length, log axes: each strategy's fastest split that fits, the
/// crossovers marked where the two lines meet.
#[allow(clippy::too_many_arguments)]
fn chart(
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
    crate::report::chart(dir, name, |root| {
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
            "\n{on}, {kv} K/V heads: {} tokens/s of each strategy's fastest split{}\n",
            basis.name(),
            if basis == Basis::Projected { " that fits" } else { "" }
        ));
        let mut header = format!("{:>10}", "seq_len");
        for k in &kinds {
            header.push_str(&format!("{:>12}", crate::strategy::SPECS[*k].kind.name()));
        }
        header.push_str("  fastest");
        o.push_str(&header);
        o.push('\n');
        let seqs: std::collections::BTreeSet<usize> =
            points.iter().filter(|p| p.world == world && p.cfg.model.kv_heads == kv).map(|p| p.cfg.model.seq_len).collect();
        for seq in seqs {
            let mut row = format!("{seq:>10}");
            let at = by.get(&(world, kv, seq));
            for k in &kinds {
                let cell = at.and_then(|s| s.get(k)).map_or("-".to_string(), |p| format!("{:.0}", v(p)));
                row.push_str(&format!("{cell:>12}"));
            }
            match best.iter().find(|b| b.point.key() == (world, kv, seq)) {
                Some(b) => {
                    let margin = b.runner_up.map(|r| format!(", {:.2}x {}", v(b.point) / v(r), r.cfg.strategy.name())).unwrap_or_default();
                    row.push_str(&format!("  {} ({}{margin})", b.point.cfg.strategy.name(), b.point.split()));
                }
                None => row.push_str(if basis == Basis::Projected { "  nothing fits" } else { "  nothing measured" }),
            }
            o.push_str(&row);
            o.push('\n');
        }
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
    o
}

/// A point's run directory name, from its config rather than its place in the grid, so that a
/// rerun (of this grid or a larger one) finds the same point's results.
pub fn point_id(cfg: &RunConfig) -> String {
    let spec = crate::strategy::spec(cfg.strategy);
    let sizes: Vec<String> = (spec.sizes)(cfg).iter().map(|v| v.to_string()).collect();
    let layout = if spec.uses_layout { format!("-{}", cfg.layout.name()) } else { String::new() };
    format!("{}-{}{layout}-s{}-kv{}", cfg.strategy.name(), sizes.join("x"), cfg.model.seq_len, cfg.model.kv_heads)
}

/// What a point's directory holds.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Absent,
    Complete,
    /// Interrupted, or still being written when the sweep stopped.
    Incomplete,
}

/// The row of a point's summary.csv (one strategy run per point), by column name.
fn summary_row(dir: &Path) -> Option<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(dir.join("summary.csv")).ok()?;
    let header: Vec<String> = r.headers().ok()?.iter().map(String::from).collect();
    let row = r.records().next()?.ok()?;
    Some(header.into_iter().zip(row.iter().map(String::from)).collect())
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
    Ok(match summary_row(dir) {
        Some(row) if row.get("status").map(String::as_str) == Some("complete") => Stored::Complete,
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
    // The points print their own account as they run: progress is a line per point with the
    // sweep's ETA (the bar only keeps the time), not a bar the runs' lines would break.
    let bar = progress(cfgs.len(), true);
    let mut valid = true;
    for (k, cfg) in cfgs.iter().enumerate() {
        let id = point_id(cfg);
        if root && !quiet {
            let eta = if k == 0 { "unknown".to_string() } else { crate::metrics::fmt_seconds(bar.eta().as_secs_f64()) };
            println!("sweep: point {} of {}: {id} (ETA of the sweep {eta})", k + 1, cfgs.len());
        }
        let mut verdict = vec![RUN];
        if root {
            verdict = match stored(&out.join(&id), cfg) {
                Ok(Stored::Complete) => vec![SKIP],
                Ok(Stored::Absent) => vec![RUN],
                Ok(Stored::Incomplete) => match move_aside(out, &id) {
                    Ok(to) => {
                        println!("sweep: {id} was interrupted; its files are kept in {}, and it runs again", to.display());
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
                println!("sweep: {id} not run: {e}");
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
        if stored(&dir, &p.cfg)? != Stored::Complete {
            continue;
        }
        let row = summary_row(&dir).ok_or_else(|| anyhow::anyhow!("{}: no summary.csv", dir.display()))?;
        let num = |c: &str| -> Result<f64> {
            row.get(c).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow::anyhow!("{}/summary.csv: no number in {c}", dir.display()))
        };
        p.measured =
            Some(Measured { tps: num("tps")?, iter_s: num("iter_ms_mean")? / 1e3, peak_mem_gib: num("peak_mem_gib_max")?, run_dir: id });
    }
    println!("{}", render(&points, hw, Basis::Measured));
    let written = write(out, &points, hw, Basis::Measured)?;
    let done = points.iter().filter(|p| p.measured.is_some()).count();
    println!("{done} of {} points measured, each with its projection for {} beside it in sweep.csv", points.len(), hw.name);
    written.iter().for_each(|p| println!("wrote {}", p.display()));
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(kind: StrategyKind, world: usize, seq: usize, tps: f64, fits: bool) -> Point {
        let mut cfg = RunConfig::of_preset(crate::config::Preset::Tiny, kind, 1, 1, world);
        cfg.model.seq_len = seq;
        Point { cfg, world, fits, memory_bytes: 0.0, tps, ttft_s: 0.0, link: "nvlink".into(), exposed_comm_s: 0.0, measured: None }
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
}
