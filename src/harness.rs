//! The one harness every strategy runs under (STYLE.md, item 1): `run` applies the measurement
//! protocol and writes the results; `verify` runs a strategy once, gathers its final hidden states to rank 0 in global
//! token order and compares them with the single-rank reference, with a tolerance measured from the
//! reference's own distance to the FP64 oracle.

use crate::backend::Backend;
use crate::comm::metered::Metered;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, StrategyKind};
use crate::fault::Fault;
use crate::journal::Journal;
use crate::metrics::{flops, fmt_bytes, fmt_seconds, IterationRecord};
use crate::model::oracle;
use crate::output;
use crate::output::rankfile::{self, RankRun};
use crate::output::reduce::{self, Measured, StrategySummary};
use crate::output::status::RunStatus;
use crate::strategy::{self, reference::Reference, Strategy};
use anyhow::{ensure, Result};
use half::bf16;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Who and where this rank is, for its results.
#[derive(Clone, Debug)]
pub struct Place {
    pub rank: usize,
    pub local_rank: usize,
    pub host: String,
    /// MPI library version, as the library reports it.
    pub mpi_library: String,
}

/// Refuse, before any work, a config whose buffers cannot fit in the memory this rank may use.
/// Every rank checks its own share; the verdict and the worst figures are agreed by all.
pub fn check_memory<B: Backend, C: Communicator<B>>(cfgs: &[RunConfig], be: &B, comm: &C, sharing: usize, keep: bool) -> Result<()> {
    let need = cfgs
        .iter()
        .map(|c| strategy::memory_estimate(c, c.strategy_rank(comm.rank()), keep))
        .max_by_key(|e| e.total())
        .expect("at least one config");
    let budget = be.memory_budget(sharing);
    let fits = budget.is_none_or(|b| need.total() <= b);
    let worst_need = comm.max_f64(need.total() as f64)?;
    let worst_budget = -comm.max_f64(-(budget.map_or(f64::INFINITY, |b| b as f64)))?;
    if comm.all_agree(fits)? {
        return Ok(());
    }
    Err(ConfigError(format!(
        "config too large: the {} backend needs about {} per rank (weights {}, activations {}, scratch {}), but a rank may use {} ({} ranks share each host's available memory); reduce --seq-len, --micro-batch, --batch, --d-model or --layers, or use more hosts",
        cfgs[0].backend.name(),
        fmt_bytes(worst_need),
        fmt_bytes(need.weights as f64),
        fmt_bytes(need.activations as f64),
        fmt_bytes(need.scratch as f64),
        fmt_bytes(worst_budget),
        sharing
    ))
    .into())
}

/// Where results go.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The results root: runs land in `<out>/<run id>/`.
    pub out: PathBuf,
    /// Chosen run id; default: the SLURM job id, or `<UTC timestamp>-<strategy>`.
    pub run_id: Option<String>,
    /// No progress display.
    pub quiet: bool,
    /// Injected fault, for tests of the failure paths.
    pub fault: Option<Fault>,
}

fn check_run_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty() && !id.starts_with('.') && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!("--run-id {id:?}: use letters, digits, '.', '_' and '-' (it names a directory)")))
    }
}

/// How many numbered variants of a default run id are tried when two runs start in one second.
const DEFAULT_ID_TRIES: usize = 100;

/// Rank 0 picks the run id, creates `<out>/<id>/`, which must be new, and makes the launch's
/// identity; every rank learns both, so a clash is bad input on every rank, before any work. A
/// chosen id (--run-id, $SLURM_JOB_ID) that exists is refused; a default one (a timestamp) that
/// exists, a second run started in the same second, gets the next free suffix (-2, -3, ...).
fn create_run_dir<B: Backend, C: Communicator<B>>(comm: &C, choice: &str, opts: &RunOptions) -> Result<(PathBuf, String)> {
    let root = comm.rank() == 0;
    let mut id = Vec::new();
    let mut problem = None;
    if root {
        let chosen = opts.run_id.clone().or_else(|| std::env::var("SLURM_JOB_ID").ok().filter(|v| !v.is_empty()));
        let candidates: Vec<String> = match &chosen {
            Some(name) => vec![name.clone()],
            None => {
                let base = format!("{}-{choice}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
                std::iter::once(base.clone()).chain((2..=DEFAULT_ID_TRIES).map(|i| format!("{base}-{i}"))).collect()
            }
        };
        if let Err(e) = check_run_id(&candidates[0]) {
            problem = Some(e.0);
        } else if let Err(e) = std::fs::create_dir_all(&opts.out) {
            problem = Some(format!("--out {}: cannot create the results directory: {e}", opts.out.display()));
        } else {
            for name in &candidates {
                let dir = opts.out.join(name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        // The launch: host, process and the instant rank 0 made it.
                        let now = chrono::Utc::now();
                        let launch =
                            format!("{}:{}:{}", crate::console::hostname(), std::process::id(), now.timestamp_nanos_opt().unwrap_or(0));
                        id = format!("{name}\n{launch}").into_bytes();
                        problem = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        problem =
                            Some(format!("run directory {} exists; results are never overwritten (choose another --run-id)", dir.display()))
                    }
                    Err(e) => {
                        problem = Some(format!("--out {}: cannot create run directory {}: {e}", opts.out.display(), dir.display()));
                        break;
                    }
                }
            }
        }
    }
    if !comm.all_agree(problem.is_none())? {
        return Err(ConfigError(problem.unwrap_or_else(|| "rank 0 could not create the run directory".into())).into());
    }
    comm.broadcast_bytes(&mut id)?;
    let text = String::from_utf8(id)?;
    let (name, launch) = text.split_once('\n').ok_or_else(|| anyhow::anyhow!("rank 0 sent no launch identity"))?;
    Ok((opts.out.join(name), launch.to_string()))
}

fn progress_bar(total: usize, label: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = terminal_bar(total, "{prefix:>6} [{bar:30}] {pos}/{len} iterations ({msg}), ETA {eta}", quiet);
    bar.set_prefix(label.to_string());
    bar
}

/// A progress bar of `total` steps drawn as `template` on stdout where it is a terminal (hidden
/// when `quiet` or where it is not): mpirun hands a rank's stdout a terminal when it has one, its
/// stderr a pipe.
pub(crate) fn terminal_bar(total: usize, template: &str, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if quiet || !std::io::stdout().is_terminal() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stdout()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total as u64), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Run each config in turn under the measurement protocol, recording into `journal` and writing
/// this rank's results file after each, then (rank 0) reduce the run directory into CSV and print
/// the summary. The strategies talk through `strategy_comm(cfg)` (a duplicate of the world, or an
/// emulated rank's transport), metered; the harness's own barriers and reductions use `comm` and
/// are not counted. Returns false where a result was found invalid (its row says why).
#[allow(clippy::too_many_arguments)]
pub fn run<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a>(
    cfgs: &[RunConfig],
    choice: &str,
    be: &B,
    comm: &C,
    strategy_comm: &dyn Fn(&RunConfig) -> Result<S>,
    place: &Place,
    opts: &RunOptions,
    journal: &Journal,
) -> Result<bool> {
    let root = comm.rank() == 0;
    let (dir, launch_id) = create_run_dir(comm, choice, opts)?;
    let run_id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if root {
        match cfgs[0].emulate {
            Some(e) => println!("ringbench run {run_id}: one process, {}, results in {}", e.label(), dir.display()),
            None => println!("ringbench run {run_id}: {} ranks, results in {}", comm.size(), dir.display()),
        }
    }
    let (h5_major, h5_minor, h5_release) = hdf5::library_version();
    let libraries = format!("{}; HDF5 {h5_major}.{h5_minor}.{h5_release}", place.mpi_library);
    journal.open(dir.clone(), place.rank, cfgs[0].rank_files());
    for (sequence, cfg) in cfgs.iter().enumerate() {
        if root {
            println!("{}", cfg.describe());
        }
        be.reset_peak_memory();
        let run = RankRun {
            run_id: run_id.clone(),
            launch_id: launch_id.clone(),
            sequence: sequence as u32,
            config: cfg.clone(),
            rank: place.rank,
            local_rank: place.local_rank,
            host: place.host.clone(),
            pid: std::process::id(),
            device: be.device_name(),
            libraries: libraries.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: env!("RINGBENCH_GIT_COMMIT").to_string(),
            start_utc: rankfile::utc_now(),
            end_utc: String::new(),
            status: RunStatus::Running,
            iterations: Vec::with_capacity(cfg.iters),
            memory: be.memory(),
            flops: flops::rank_flops(cfg, cfg.strategy_rank(comm.rank())),
            counted_flops: None,
            device_peak_flops: be.peak_flops(),
            gpu_util: None,
            op_profile: None,
        };
        journal.begin_run(run);
        let metered = Metered::new(strategy_comm(cfg)?);
        measure(cfg, be, comm, &metered, root && !opts.quiet, opts.fault, journal)?;
        journal.finish_run(be.memory())?;
    }
    // Every rank file is complete before rank 0 reads them (shared filesystem, as on clusters).
    comm.barrier()?;
    if !root {
        return Ok(true);
    }
    let summaries = reduce::reduce_into(std::slice::from_ref(&dir), &dir, reduce::ReduceOptions { partial: false, owner: true })?;
    // A look taken while the run was in progress (`reduce --partial`) is superseded.
    for stale in ["summary-partial.csv", "ranks-partial.csv"] {
        if std::fs::remove_file(dir.join(stale)).is_ok() {
            println!("removed {stale}, a look at the run in progress, now superseded by the final tables");
        }
    }
    print_summaries(&summaries);
    let files = if comm.size() == 1 { "1 rank file".to_string() } else { format!("{} rank files", comm.size()) };
    println!("wrote {files}, summary.csv and ranks.csv to {}", dir.display());
    let invalid: Vec<_> = summaries.iter().filter(|s| s.status == RunStatus::Invalid).collect();
    for s in &invalid {
        eprintln!("ringbench: error: the {} result is invalid: {}", s.config.strategy.name(), s.invalid_reason.as_deref().unwrap_or(""));
    }
    Ok(invalid.is_empty())
}

/// Warm-up and measured iterations of one strategy. Each iteration starts at a barrier; its record
/// holds this rank's time to the end of its forward pass and what the metered communicator saw,
/// and goes into the journal (the last run there) as soon as it is taken.
fn measure<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    metered: &Metered<S>,
    show: bool,
    fault: Option<Fault>,
    journal: &Journal,
) -> Result<()> {
    let mut strat = strategy::build(cfg, be, metered)?;
    let bar = progress_bar(cfg.warmup + cfg.iters, cfg.strategy.name(), !show);
    let mut last_checkpoint = Instant::now();
    let mut sampler = None;
    // The last warm-up iteration times its GEMMs and attention op by op (for `plan --calibrate`):
    // outside the measured ones, which the events would perturb.
    let profiled = cfg.warmup.checked_sub(1);
    for i in 0..cfg.warmup + cfg.iters {
        let warm = i < cfg.warmup;
        be.set_op_timing(Some(i) == profiled);
        if i == cfg.warmup {
            sampler = be.pci_bus_id().map(crate::metrics::gpu_util::Sampler::start);
        }
        bar.set_message(if warm { "warm-up" } else { "measured" });
        // With peers to wait for it, a rank that stops outside communication is a stall the
        // watchdog names (an emulated rank alone has none).
        if comm.size() > 1 {
            comm.set_phase(Some(format!("iteration {i} of {} ({})", cfg.strategy.name(), if warm { "warm-up" } else { "measured" })));
        }
        comm.barrier()?;
        Fault::strike(fault, comm.rank(), i)?;
        metered.take_iteration::<B>()?;
        let counted_before = be.counted_flops();
        be.timer_start()?;
        let t0 = Instant::now();
        strat.forward(be, metered, false)?;
        be.timer_stop()?;
        // Device work is asynchronous: the iteration ends when the device is done. The wait is
        // guarded, since queued transfers to a dead peer would otherwise hold it forever.
        comm.guard_wait("device synchronize (end of iteration)", &mut || be.synchronize())?;
        let host_s = t0.elapsed().as_secs_f64();
        // On a GPU the iteration is timed on the compute stream (start to end events, the end after
        // every wait for a transfer); elsewhere by the host's clock.
        let total_s = be.timer_elapsed()?.unwrap_or(host_s);
        let (comm_s, hidden_s, bytes_sent, bytes_received) = metered.take_iteration::<B>()?;
        let record = IterationRecord { total_s, comm_s, hidden_s, compute_s: (total_s - comm_s).max(0.0), bytes_sent, bytes_received };
        let counted = be.counted_flops();
        let counted = flops::Flops { linear: counted.0 - counted_before.0, attention: counted.1 - counted_before.1 };
        if Some(i) == profiled {
            be.set_op_timing(false);
            let (linear_s, attention_s) = be.take_op_seconds()?;
            journal.set_op_profile(crate::metrics::OpProfile {
                linear_s,
                attention_s,
                linear_flops: counted.linear,
                attention_flops: counted.attention,
            });
        }
        journal.record(be.memory(), (!warm).then_some((record, counted)));
        // Outside the timed region: keeps what was measured if the process is killed without warning.
        journal.checkpoint(&mut last_checkpoint)?;
        bar.inc(1);
    }
    comm.set_phase(None);
    bar.finish_and_clear();
    if let Some(s) = sampler {
        match s.finish() {
            Ok(u) => journal.set_gpu_util(u),
            Err(why) => crate::console::say(&format!("ringbench: rank {}: GPU utilization not measured: {why}", comm.rank())),
        }
    }
    Ok(())
}

/// The console's account of each strategy run, then the side-by-side comparison.
pub fn print_summaries(summaries: &[StrategySummary]) {
    if let Some(s) = summaries.iter().find(|s| crate::backend::is_simulated_device(&s.first.device)) {
        println!(
            "SIMULATED: {} runs the kernels on the CPU; every timing below is the stand-in's, not a measurement of a GPU",
            s.first.device
        );
    }
    for s in summaries {
        match s.config.emulate {
            // The job's figures below assume every rank takes as long as the emulated one.
            Some(e) => println!(
                "{} ({}, EMULATED rank {} of {}; communication as device copies, no waiting on other ranks):",
                s.config.strategy.name(),
                s.status,
                e.as_rank,
                e.world
            ),
            None => println!("{} ({}):", s.config.strategy.name(), s.status),
        }
        let Some(m) = &s.measured else {
            println!("  no measured iterations");
            continue;
        };
        let it = &m.iter;
        println!(
            "  iteration      mean {}, 95% CI [{}, {}], cv {:.1}%, min {}, median {}, max {} (n {})",
            fmt_seconds(it.mean),
            fmt_seconds(it.ci95.0),
            fmt_seconds(it.ci95.1),
            100.0 * it.cv(),
            fmt_seconds(it.min),
            fmt_seconds(it.median),
            fmt_seconds(it.max),
            it.n
        );
        println!("  tokens/s       {:.1}, 95% CI [{:.1}, {:.1}]", m.tps, m.tps_ci95.0, m.tps_ci95.1);
        println!("  time per token {} (iteration time / {} tokens)", fmt_seconds(m.tpot_s), s.config.tokens_per_iteration());
        println!(
            "  per rank       communication {} max / {} mean exposed, compute {} max / {} mean, sent {}/iter max",
            fmt_seconds(m.comm_s.0),
            fmt_seconds(m.comm_s.1),
            fmt_seconds(m.compute_s.0),
            fmt_seconds(m.compute_s.1),
            fmt_bytes(m.sent_per_iter_max)
        );
        println!("  hidden comm    {}", hidden_line(s, m));
        let device = m.peak_device_max.map(|b| format!(", process/device peak {} max", fmt_bytes(b))).unwrap_or_default();
        println!("  peak memory    buffers {} max / {} mean{device}", fmt_bytes(m.peak_buffers.0), fmt_bytes(m.peak_buffers.1));
        let mfu = m.mfu.map(|x| format!("MFU {:.1}%", 100.0 * x)).unwrap_or_else(|| "MFU n/a (device peak unknown)".into());
        let util = m.gpu_util.map(|(mean, max)| format!(", GPU utilization {mean:.1}% mean / {max:.0}% max (NVML)")).unwrap_or_default();
        println!("  compute        {:.4} TFLOP/s per rank, {mfu}{util}", m.tflops_per_gpu);
    }
    print_comparison(summaries);
}

/// Every measured strategy run side by side, one column each in run order, and each one's
/// tokens/s and memory against the fastest's.
fn print_comparison(summaries: &[StrategySummary]) {
    let measured: Vec<(&StrategySummary, &Measured)> = summaries.iter().filter_map(|s| s.measured.as_ref().map(|m| (s, m))).collect();
    if measured.len() < 2 {
        return;
    }
    let w = 18;
    let row = |name: &str, cell: &dyn Fn(&Measured) -> String| {
        let cells: String = measured.iter().map(|(_, m)| format!("{:>w$}", cell(m))).collect();
        println!("{name:<24}{cells}");
    };
    let names: String = measured.iter().map(|(s, _)| format!("{:>w$}", s.config.strategy.name())).collect();
    println!();
    println!("{:<24}{names}", "");
    row("tokens/s", &|m| format!("{:.1}", m.tps));
    row("time per token", &|m| fmt_seconds(m.tpot_s));
    row("iteration (mean)", &|m| fmt_seconds(m.iter.mean));
    row("peak memory (max rank)", &|m| fmt_bytes(m.peak_buffers.0));
    row("exposed comm (max)", &|m| fmt_seconds(m.comm_s.0));
    row("hidden comm (max)", &|m| fmt_seconds(m.hidden_s.0));
    row("communication hidden", &|m| m.hidden_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(|| "-".into()));
    row("sent per iteration", &|m| fmt_bytes(m.sent_per_iter_max));
    if summaries.iter().any(|s| s.config.emulate.is_some()) {
        println!("(emulated: one rank's work each, not a measured job)");
    }
    let (fastest, best) = measured.iter().max_by(|a, b| a.1.tps.total_cmp(&b.1.tps)).expect("two or more");
    let others: Vec<String> = measured
        .iter()
        .filter(|(s, _)| !std::ptr::eq(*s, *fastest))
        .map(|(s, m)| {
            format!(
                "{} {:.2}x its tokens/s at {:.2}x its memory",
                s.config.strategy.name(),
                m.tps / best.tps,
                m.peak_buffers.0 / best.peak_buffers.0
            )
        })
        .collect();
    println!("fastest: {}; {}", fastest.config.strategy.name(), others.join(", "));
    let find = |k: StrategyKind| measured.iter().find(|(s, _)| s.config.strategy == k).map(|(_, m)| *m);
    if let (Some(tp), Some(ring)) = (find(StrategyKind::TpPp), find(StrategyKind::Ring)) {
        // The seed's question, answered in its own terms.
        println!(
            "ring speed-up over tp-pp: {:.2}x; ring memory / tp-pp memory: {:.2}x",
            ring.tps / tp.tps,
            ring.peak_buffers.0 / tp.peak_buffers.0
        );
    }
}

/// How much communication ran under compute, in words.
fn hidden_line(s: &StrategySummary, m: &Measured) -> String {
    let Some(f) = m.hidden_fraction else { return "no communication".into() };
    let why = s.config.transport().timing();
    format!(
        "{:.1}% of communication time ran under compute, {} max / {} mean per rank ({why})",
        100.0 * f,
        fmt_seconds(m.hidden_s.0),
        fmt_seconds(m.hidden_s.1)
    )
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

/// How far (relative L2) the BF16 reference may be from the FP64 oracle.
const REFERENCE_VS_FP64_LIMIT: f64 = 2e-2;

/// The most FLOPs `verify`'s FP64 oracle may take: about a quarter of an hour on one core.
const ORACLE_FLOP_LIMIT: f64 = 1e13;

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
    // The FP64 oracle runs on rank 0's CPU: refuse what would take it hours, before any work.
    let oracle_flops = flops::job_flops(&RunConfig { strategy: StrategyKind::Reference, ..cfg.clone() }).total();
    if oracle_flops > ORACLE_FLOP_LIMIT {
        return Err(ConfigError(format!(
            "verify checks small configs: its FP64 oracle on rank 0 would compute {oracle_flops:.1e} FLOPs (about {:.0} min at ~10 GFLOP/s, the limit is {ORACLE_FLOP_LIMIT:.0e}); reduce --seq-len, --batch, --layers or --d-model",
            oracle_flops / 1e10 / 60.0
        ))
        .into());
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
                for (i, pos) in seg.positions().enumerate() {
                    let src = &part[(seq * n + row + i) * d..(seq * n + row + i + 1) * d];
                    let dst = &mut out[(seq * s_len + pos) * d..(seq * s_len + pos + 1) * d];
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o = v.to_f64();
                    }
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
    // The reference itself must be the model: within DESIGN.md's "about 1e-2" of FP64, with a
    // factor 2 of margin; otherwise the tolerance derived from it would excuse anything.
    let reference_ok = ref_vs_exact.rel_l2 <= REFERENCE_VS_FP64_LIMIT;
    let pass = finite && reference_ok && within(vs_ref, tol);

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
    if !reference_ok {
        println!(
            "  the reference is {:.3e} (rel L2) from the FP64 oracle, beyond {REFERENCE_VS_FP64_LIMIT:.0e}: the BF16 model is wrong",
            ref_vs_exact.rel_l2
        );
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
