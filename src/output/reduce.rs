//! From rank files to tables: `summary.csv` (one row per strategy run) and `ranks.csv` (one row per
//! rank and strategy run). Rank 0 calls this at the end of a run and `ringbench reduce` calls it
//! offline; both read only the rank files, so they write the same bytes.
//!
//! The job's iteration time is, per iteration, the slowest rank's: every rank starts it from the
//! same barrier. Tokens/s = batch x seq / mean iteration time; its 95% interval is that of the mean
//! iteration time, inverted. Time per token = mean iteration time / (batch x seq).

use super::rankfile::{self, RankRun};
use super::status::RunStatus;
use super::summary::mean;
pub use super::summary::{Measured, StrategySummary};
pub(crate) use super::tables::{csv_bytes, ranks_table, summary_table, Table};
use crate::config::RunConfig;
use crate::metrics::flops::job_flops;
use crate::metrics::Stats;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// How a reduction treats what it finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReduceOptions {
    /// Leave out missing or damaged rank files, and allow a look at a run in progress; the tables
    /// are then *-partial.csv.
    pub partial: bool,
    /// The run's own final reduction: its tables replace whatever tables a look at the run left
    /// (a reduction by anyone else never replaces a table).
    pub owner: bool,
}

/// A run whose last checkpoint is older than this, on a host that cannot be checked from here,
/// is taken as gone (a checkpoint follows every iteration that ends a second after the last).
const STALE_CHECKPOINT_S: i64 = 600;

/// Whether the process that marked `r` running is still at it: by its process id on this host;
/// elsewhere, by the age of its last checkpoint.
fn still_running(r: &RankRun) -> bool {
    if r.host == crate::console::hostname() {
        return process_is_ringbench(r.pid);
    }
    chrono::DateTime::parse_from_rfc3339(&r.end_utc)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() < STALE_CHECKPOINT_S)
        .unwrap_or(true)
}

/// Whether process `pid` of this host is a live ringbench (not a zombie left unreaped, and not an
/// unrelated process that reused the id).
pub(crate) fn process_is_ringbench(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) state ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !matches!(state, Some('Z' | 'X') | None) && String::from_utf8_lossy(&cmdline).contains("ringbench")
}

/// The longest any iteration can take: the watchdog ends a job whose call waits longer than the
/// longest --comm-timeout, and no compute of a model ringbench accepts comes near it.
const MAX_PLAUSIBLE_S: f64 = crate::config::MAX_COMM_TIMEOUT_S;

/// More memory than any device or host has (1 PiB).
const MAX_PLAUSIBLE_BYTES: u64 = 1 << 50;

/// A rank file's contents that no run can have written: a time that is not finite, negative or
/// beyond any run, communication hidden on a transport that cannot hide any, FLOP counts that are
/// not finite, a peak beyond any memory, bytes other than the config moves (each strategy's
/// `traffic`), an end time that is not a time, or a run marked complete short of its iterations.
fn check_values(run: &RankRun, file: &str) -> Result<()> {
    let g = run.config.strategy.name();
    let rank = run.rank;
    let can_hide = run.config.transport() != crate::config::Transport::Mpi;
    for (i, it) in run.iterations.iter().enumerate() {
        for (name, v) in [("iter_s", it.total_s), ("comm_s", it.comm_s), ("hidden_s", it.hidden_s), ("compute_s", it.compute_s)] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "rank {rank}: {file}: dataset {g}/{name}[{i}] = {v}: a time must be finite and non-negative"
            );
            ensure!(
                v <= MAX_PLAUSIBLE_S,
                "rank {rank}: {file}: dataset {g}/{name}[{i}] = {v:e} s: longer than any run can take (the watchdog ends a job long before)"
            );
        }
        ensure!(
            can_hide || it.hidden_s == 0.0,
            "rank {rank}: {file}: dataset {g}/hidden_s[{i}] = {}: the MPI transport moves data only inside its calls and hides nothing",
            it.hidden_s
        );
    }
    let flops = [("flops_linear", Some(run.flops.linear)), ("flops_attention", Some(run.flops.attention))];
    let counted = [
        ("counted_flops_linear", run.counted_flops.map(|f| f.linear)),
        ("counted_flops_attention", run.counted_flops.map(|f| f.attention)),
    ];
    for (name, v) in flops.into_iter().chain(counted).filter_map(|(n, v)| v.map(|v| (n, v))) {
        ensure!(v.is_finite() && v >= 0.0, "rank {rank}: {file}: {g}/{name} = {v}: a FLOP count must be finite and non-negative");
    }
    if let Some(p) = run.op_profile {
        for (name, v) in [
            ("linear_s", p.linear_s),
            ("attention_s", p.attention_s),
            ("linear_flops", p.linear_flops),
            ("attention_flops", p.attention_flops),
        ] {
            ensure!(v.is_finite() && v >= 0.0, "rank {rank}: {file}: {g}/profiled_{name} = {v}: must be finite and non-negative");
        }
    }
    for (name, v) in [("buffers_peak_bytes", Some(run.memory.buffers_peak_bytes)), ("device_peak_bytes", run.memory.device_peak_bytes)] {
        if let Some(v) = v {
            ensure!(v <= MAX_PLAUSIBLE_BYTES, "rank {rank}: {file}: {g}/{name} = {v}: more than any device holds");
        }
    }
    if !run.end_utc.is_empty() {
        let end = chrono::DateTime::parse_from_rfc3339(&run.end_utc);
        ensure!(end.is_ok(), "rank {rank}: {file}: {g}/end_utc = {:?}: not a time", run.end_utc);
        if let (Ok(end), Ok(start)) = (end, chrono::DateTime::parse_from_rfc3339(&run.start_utc)) {
            ensure!(end >= start, "rank {rank}: {file}: {g}/end_utc {} is before its start {}", run.end_utc, run.start_utc);
        }
    }
    if run.status == RunStatus::Complete {
        ensure!(
            run.iterations.len() == run.config.iters,
            "rank {rank}: {file}: the {g} run is marked complete with {} of its {} measured iterations",
            run.iterations.len(),
            run.config.iters
        );
    }
    let (sent, received) = crate::strategy::traffic(&run.config, rank);
    for (i, it) in run.iterations.iter().enumerate() {
        for (name, v, want) in [("bytes_sent", it.bytes_sent, sent), ("bytes_received", it.bytes_received, received)] {
            ensure!(
                v == want,
                "rank {rank}: {file}: dataset {g}/{name}[{i}] = {v}, but this config moves {want} bytes per iteration on this rank"
            );
        }
    }
    check_decode(run, file)
}

/// As `check_values`, for the decode steps: one record per measured iteration, each with a time
/// per step that a run can take, and the bytes the config's decode moves.
fn check_decode(run: &RankRun, file: &str) -> Result<()> {
    let (g, rank, steps) = (run.config.strategy.name(), run.rank, run.config.decode_tokens);
    if steps == 0 {
        ensure!(run.decode.is_empty(), "rank {rank}: {file}: {g} holds decode steps but its config has none");
        return Ok(());
    }
    ensure!(
        run.decode.len() == run.iterations.len(),
        "rank {rank}: {file}: {g} holds decode steps of {} iterations, and {} measured prefills",
        run.decode.len(),
        run.iterations.len()
    );
    let (sent, received) = crate::strategy::decode_traffic(&run.config, rank)
        .iter()
        .fold((0, 0), |(s, r), t| (s + t.sent * t.calls, r + t.received * t.calls));
    for (i, d) in run.decode.iter().enumerate() {
        for (name, values) in [("decode_step_s", &d.step_s), ("decode_comm_s", &d.comm_s)] {
            ensure!(values.len() == steps, "rank {rank}: {file}: dataset {g}/{name}[{i}] holds {} steps, the config {steps}", values.len());
            for (j, &v) in values.iter().enumerate() {
                ensure!(
                    v.is_finite() && (0.0..=MAX_PLAUSIBLE_S).contains(&v),
                    "rank {rank}: {file}: dataset {g}/{name}[{i}, {j}] = {v}: a time must be finite, non-negative and shorter than any run"
                );
            }
        }
        for (name, v, want) in [("decode_bytes_sent", d.bytes_sent, sent), ("decode_bytes_received", d.bytes_received, received)] {
            ensure!(
                v == want,
                "rank {rank}: {file}: dataset {g}/{name}[{i}] = {v}, but this config's decode moves {want} bytes per iteration on this rank"
            );
        }
    }
    Ok(())
}

/// Read every rank file of a run directory, checking that the set is complete, consistent and
/// plausible. With `partial`, unreadable, missing or implausible rank files are skipped and their
/// reasons returned instead, and a run still in progress may be read (its runs keep the status
/// Running); without it, a run in progress is refused, and a rank file marked running whose
/// process is gone reads as interrupted.
pub fn load(dir: &Path, partial: bool) -> Result<(Vec<RankRun>, Vec<String>)> {
    ensure!(dir.is_dir(), "{}: not a run directory (expected a directory holding rank-NNNNN.h5 files)", dir.display());
    let read_rank = |rank: usize| -> Result<Vec<RankRun>> {
        let path = rankfile::rank_file(dir, rank);
        ensure!(path.exists(), "rank {rank}: {} is missing", path.display());
        // A FIFO, a device or a directory at a rank file's name would hang or fail the reader.
        let kind = std::fs::metadata(&path).map(|m| m.file_type()).with_context(|| format!("rank {rank}: {}", path.display()))?;
        ensure!(kind.is_file(), "rank {rank}: {} is not a regular file (a {kind:?})", path.display());
        let mut runs = rankfile::read(&path).with_context(|| format!("rank {rank}: cannot read {}", path.display()))?;
        ensure!(!runs.is_empty(), "rank {rank}: {} holds no strategy run", path.display());
        let file = rankfile::rank_file_name(rank);
        for r in &mut runs {
            check_values(r, &file)?;
            if r.status == RunStatus::Running {
                if !still_running(r) {
                    r.status = RunStatus::Interrupted; // its process is gone
                } else if !partial {
                    bail!(
                        "rank {rank}: {file} says the {} run is still in progress (process {} on host {}, last checkpoint {}); reduce it once it has ended (its own tables come at the end), or with --partial for a look now (written as *-partial.csv)",
                        r.config.strategy.name(),
                        r.pid,
                        r.host,
                        r.end_utc
                    );
                }
            }
        }
        Ok(runs)
    };
    // The world size and the reference for consistency come from the lowest-numbered rank file
    // (rank 0's, unless it is missing or the run is an emulated rank's), or with `partial` from the
    // lowest-numbered readable one.
    let present = present_ranks(dir);
    let candidates: Vec<usize> = if partial { present } else { vec![present.first().copied().unwrap_or(0)] };
    let mut first = None;
    for rank in candidates {
        match read_rank(rank) {
            Ok(runs) => {
                first = Some((rank, runs));
                break;
            }
            Err(e) if !partial => return Err(e),
            Err(_) => {} // reported below, with every other rank
        }
    }
    let Some((first_rank, first)) = first else { bail!("no readable rank file in {}", dir.display()) };
    let mut problems = Vec::new();
    let mut all = Vec::new();
    for rank in first[0].config.rank_files() {
        let runs = if rank == first_rank { Ok(first.clone()) } else { read_rank(rank) };
        let checked = runs.and_then(|runs| {
            ensure!(
                runs.len() == first.len(),
                "rank {rank}: {} strategy runs in {}, rank {first_rank} has {}",
                runs.len(),
                rankfile::rank_file_name(rank),
                first.len()
            );
            for (a, b) in runs.iter().zip(&first) {
                ensure!(a.rank == rank, "rank {rank}: {} says it is rank {}", rankfile::rank_file_name(rank), a.rank);
                ensure!(a.config == b.config, "rank {rank}: the {} config differs from rank {first_rank}'s", b.config.strategy.name());
                ensure!(a.run_id == b.run_id, "rank {rank}: run id {} differs from rank {first_rank}'s {}", a.run_id, b.run_id);
                ensure!(
                    a.launch_id == b.launch_id,
                    "rank {rank}: written by launch {}, rank {first_rank} by launch {}: two separate launches that chose the same run id are not one job",
                    a.launch_id,
                    b.launch_id
                );
                ensure!(
                    a.git_commit == b.git_commit,
                    "rank {rank}: git commit {} differs from rank {first_rank}'s {}",
                    a.git_commit,
                    b.git_commit
                );
                // An interrupted run may stop a rank one iteration before another.
                let interrupted = a.status != RunStatus::Complete || b.status != RunStatus::Complete;
                ensure!(
                    interrupted || a.iterations.len() == b.iterations.len(),
                    "rank {rank}: {} iterations of {}, rank {first_rank} has {}",
                    a.iterations.len(),
                    b.config.strategy.name(),
                    b.iterations.len()
                );
            }
            Ok(runs)
        });
        match checked {
            Ok(runs) => all.extend(runs),
            Err(e) if partial => problems.push(format!("{e:#}")),
            Err(e) => return Err(e),
        }
    }
    Ok((all, problems))
}

/// Rank numbers of the rank-NNNNN.h5 files in `dir`, ascending.
fn present_ranks(dir: &Path) -> Vec<usize> {
    let mut ranks: Vec<usize> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("rank-")?.strip_suffix(".h5")?.parse().ok()).collect()
        })
        .unwrap_or_default();
    ranks.sort_unstable();
    ranks
}

fn max(xs: impl Iterator<Item = f64>) -> f64 {
    xs.fold(f64::NEG_INFINITY, f64::max)
}

/// Reduce the ranks of each strategy run (runs grouped by run id and sequence, in file order).
/// Runs of `partial_ids` lack some ranks and are marked "partial".
pub fn summarize(runs: &[RankRun], partial_ids: &[String]) -> Result<Vec<StrategySummary>> {
    let mut keys: Vec<(String, u32)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.run_id.clone(), r.sequence)) {
            keys.push((r.run_id.clone(), r.sequence));
        }
    }
    keys.iter()
        .map(|(id, seq)| {
            let mut ranks: Vec<&RankRun> = runs.iter().filter(|r| &r.run_id == id && r.sequence == *seq).collect();
            ranks.sort_by_key(|r| r.rank);
            let mut s = summarize_one(&ranks)?;
            if partial_ids.contains(id) && s.status != RunStatus::Invalid {
                s.status = RunStatus::Partial;
            }
            Ok(s)
        })
        .collect()
}

fn summarize_one(ranks: &[&RankRun]) -> Result<StrategySummary> {
    let first = ranks[0];
    let cfg = &first.config;
    let mut status = if ranks.iter().all(|r| r.status == RunStatus::Complete) {
        RunStatus::Complete
    } else if ranks.iter().any(|r| r.status == RunStatus::Running) {
        RunStatus::Running
    } else {
        RunStatus::Incomplete
    };
    let n = ranks.iter().map(|r| r.iterations.len()).min().unwrap_or(0);
    let measured = if n == 0 { None } else { Some(measured(ranks, n)?) };
    let invalid_reason = measured.as_ref().and_then(|m| impossible(cfg, &first.device, first.device_peak_flops, m));
    if invalid_reason.is_some() {
        status = RunStatus::Invalid;
    }
    Ok(StrategySummary { config: cfg.clone(), first: first.clone(), status, invalid_reason, measured })
}

/// Why a measured result is physically impossible on its device, if it is: a timing or FLOP-count
/// bug, never a number to report as a result.
fn impossible(cfg: &RunConfig, device: &str, peak: Option<f64>, m: &Measured) -> Option<String> {
    if crate::backend::is_simulated_device(device) {
        return None; // the simulated GPU's timings measure the CPU stand-in: no GPU's bound applies
    }
    if let Some(why) = decode_below_floor(cfg, device, m) {
        return Some(why);
    }
    let peak = peak?;
    let bound = crate::plan::tps_bound(cfg, peak);
    if m.tps > bound {
        return Some(format!(
            "measured {:.0} tokens/s exceeds the physical bound of {bound:.0} (every GPU at its {:.0} TFLOP/s peak): a timing or FLOP-count bug",
            m.tps,
            peak / 1e12
        ));
    }
    m.mfu
        .filter(|&x| x > 1.0)
        .map(|x| format!("MFU {x:.3} exceeds 1 ({:.1} TFLOP/s per GPU): a timing or FLOP-count bug", m.tflops_per_gpu))
}

/// A measured TPOT below the bytes a step must read over the device's HBM bandwidth (where the
/// device is one of `plan`'s profiles), if it is.
fn decode_below_floor(cfg: &RunConfig, device: &str, m: &Measured) -> Option<String> {
    let d = m.decode.as_ref()?;
    let profile = crate::plan::Profile::GPUS.into_iter().find(|p| p.matches_device(device))?;
    let hw = profile.hardware();
    let floor = crate::plan::decode::tpot_floor(cfg, &hw);
    (d.tpot.mean < floor).then(|| {
        format!(
            "measured TPOT {:.3} ms is below the {:.3} ms a step needs to read its weights and K/V cache at {:.2} TB/s ({}): a timing bug",
            d.tpot.mean * 1e3,
            floor * 1e3,
            hw.hbm_bytes_per_s / 1e12,
            profile.name()
        )
    })
}

/// Statistics over the first `n` iterations, which every rank completed.
fn measured(ranks: &[&RankRun], n: usize) -> Result<Measured> {
    let first = ranks[0];
    let cfg = &first.config;
    let job_iter: Vec<f64> = (0..n).map(|i| max(ranks.iter().map(|r| r.iterations[i].total_s))).collect();
    let iter = Stats::of(&job_iter).expect("n > 0");
    let tokens = cfg.tokens_per_iteration() as f64;
    let per_rank_mean = |f: fn(&crate::metrics::IterationRecord) -> f64| -> Vec<f64> {
        ranks.iter().map(|r| mean(r.iterations[..n].iter().map(f))).collect()
    };
    let comm = per_rank_mean(|i| i.comm_s);
    let hidden = per_rank_mean(|i| i.hidden_s);
    let (hidden_sum, comm_sum) = (hidden.iter().sum::<f64>(), comm.iter().sum::<f64>());
    let compute = per_rank_mean(|i| i.compute_s);
    let sent = per_rank_mean(|i| i.bytes_sent as f64);
    let buffers: Vec<f64> = ranks.iter().map(|r| r.memory.buffers_peak_bytes as f64).collect();
    let device: Vec<f64> = ranks.iter().filter_map(|r| r.memory.device_peak_bytes).map(|b| b as f64).collect();
    let tflops_per_gpu = job_flops(cfg).total() / cfg.world() as f64 / iter.mean / 1e12;
    let mfu = first.device_peak_flops.map(|peak| tflops_per_gpu * 1e12 / peak);
    let tps = tokens / iter.mean;
    let utils: Vec<_> = ranks.iter().filter_map(|r| r.gpu_util).collect();
    let gpu_util = (!utils.is_empty()).then(|| (mean(utils.iter().map(|u| u.mean)), max(utils.iter().map(|u| u.max))));
    let compute_floor_s = first.device_peak_flops.map(|peak| ranks.iter().map(|r| r.flops.total()).fold(0.0, f64::max) / peak);
    Ok(Measured {
        tps,
        // Without a time interval (one iteration), or with one reaching zero (few, noisy
        // iterations), tokens/s has no upper bound: no interval, said so, rather than infinity.
        tps_ci95: iter.ci95.filter(|&(lo, _)| lo > 0.0).map(|(lo, hi)| (tokens / hi, tokens / lo)),
        prefill_s_per_token: iter.mean / tokens,
        iter,
        comm_s: (max(comm.iter().cloned()), mean(comm.iter().cloned())),
        hidden_s: (max(hidden.iter().cloned()), mean(hidden.iter().cloned())),
        hidden_fraction: (hidden_sum + comm_sum > 0.0).then(|| hidden_sum / (hidden_sum + comm_sum)),
        compute_s: (max(compute.iter().cloned()), mean(compute.iter().cloned())),
        sent_per_iter_max: max(sent.iter().cloned()),
        peak_buffers: (max(buffers.iter().cloned()), mean(buffers.iter().cloned())),
        peak_device_max: (!device.is_empty()).then(|| max(device.iter().cloned())),
        tflops_per_gpu,
        mfu,
        gpu_util,
        efficiency_vs_floor: compute_floor_s.map(|f| f / iter.mean),
        compute_floor_s,
        decode: super::decode::measured(ranks, n),
        train: super::train::measured(ranks, n),
    })
}

/// Write `bytes` to `path` unless the same bytes are already there; a different existing file is
/// an error and is kept, unless `replace` (the run's own final tables), when it is replaced whole.
pub(crate) fn write_new_or_same(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    if path.exists() && replace {
        if std::fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let tmp = super::partial_name(path);
        write_synced(&tmp, bytes)?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        eprintln!("ringbench: replaced {}, which a reduction during the run had written, with the run's final table", path.display());
        return Ok(());
    }
    if path.exists() {
        let old = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            old == bytes,
            "{} exists and differs from what the rank files give; it is never overwritten (remove it, or reduce with --out)",
            path.display()
        );
        return Ok(());
    }
    let tmp = super::partial_name(path);
    write_synced(&tmp, bytes)?;
    super::publish(&tmp, path)
}

/// Replace `path` whole with `bytes` (through a new `.partial` file renamed over it), unless it
/// already holds them: for files derived again from data that is kept (a measured sweep's tables).
/// Returns whether it changed.
pub(crate) fn replace_derived(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = super::partial_name(path);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(true)
}

/// `bytes` into a new file, on the disk before it returns: a full disk is an error here. The file
/// is created new: a stale one of that name (a crash's leftover, or a link planted there) is
/// removed first, never followed.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let written = std::fs::OpenOptions::new().write(true).create_new(true).open(path).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        bail!("writing {}: {e}", path.display());
    }
    Ok(())
}

/// Reduce run directories into `summary.csv` and `ranks.csv` in `out`. Every rank file is read and
/// checked before anything is written. With `partial`, damaged or missing rank files are left out,
/// the affected runs are marked "partial", and the tables are named `summary-partial.csv` and
/// `ranks-partial.csv` so that they cannot be mistaken for complete ones.
/// In a directory of combined tables, the run directories they were reduced from.
pub const SOURCES: &str = "sources.json";

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The run directories a combined table directory names in its sources.json, or None where it
/// has none.
pub fn sources(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let path = dir.join(SOURCES);
    if !path.exists() {
        return Ok(None);
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?).with_context(|| format!("{}", path.display()))?;
    let dirs = doc["run_dirs"].as_array().ok_or_else(|| anyhow::anyhow!("{}: no run_dirs list", path.display()))?;
    Ok(Some(dirs.iter().filter_map(|d| d.as_str().map(PathBuf::from)).collect()))
}

pub fn reduce_into(dirs: &[PathBuf], out: &Path, opts: ReduceOptions) -> Result<Vec<StrategySummary>> {
    if dirs.is_empty() {
        bail!("no run directory given");
    }
    let mut runs = Vec::new();
    let mut partial_ids = Vec::new();
    for d in dirs {
        let (r, problems) = load(d, opts.partial).with_context(|| format!("run directory {}", d.display()))?;
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("ringbench: reduce --partial: left out: {p}");
            }
            partial_ids.extend(r.iter().map(|x| x.run_id.clone()));
        }
        runs.extend(r);
    }
    let summaries = summarize(&runs, &partial_ids)?;
    let (summary, ranks) = (csv_bytes(&summary_table(&summaries))?, csv_bytes(&ranks_table(&runs))?);
    let json = super::tables::summary_json(&summaries)?;
    // A look at a run in progress is never taken for its final tables.
    let looked = !partial_ids.is_empty() || summaries.iter().any(|s| s.status == RunStatus::Running);
    // The summary table is written last: where it stands, the tables beside it are whole (the
    // other ranks of an interrupted run wait for it, then leave, and mpirun ends the job).
    let sources = if dirs.iter().any(|d| same_dir(d, out)) {
        None
    } else {
        // Tables that combine several run directories say which, so that `report` can chart them.
        let sources: Vec<String> =
            dirs.iter().map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()).display().to_string()).collect();
        let mut bytes = serde_json::to_vec_pretty(&serde_json::json!({ "run_dirs": sources }))?;
        bytes.push(b'\n');
        Some(bytes)
    };
    if looked {
        // A look at a run in progress is drawn again at every look: the latest replaces it.
        replace_derived(&out.join("ranks-partial.csv"), &ranks)?;
        replace_derived(&out.join("summary-partial.json"), &json)?;
        if let Some(bytes) = &sources {
            write_new_or_same(&out.join(SOURCES), bytes, opts.owner)?;
        }
        replace_derived(&out.join("summary-partial.csv"), &summary)?;
    } else {
        let tables = [("ranks.csv", &ranks), ("summary.json", &json), ("summary.csv", &summary)];
        // Nothing is written where any table differs from one already there.
        for (name, bytes) in tables.iter().chain(sources.as_ref().map(|b| (SOURCES, b)).iter()) {
            let path = out.join(name);
            if !opts.owner && path.exists() {
                write_new_or_same(&path, bytes, false)?;
            }
        }
        if let Some(bytes) = &sources {
            write_new_or_same(&out.join(SOURCES), bytes, opts.owner)?;
        }
        for (name, bytes) in tables {
            write_new_or_same(&out.join(name), bytes, opts.owner)?;
        }
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryStats;
    use crate::config::Preset;
    use crate::metrics::IterationRecord;

    fn rank_run(rank: usize, iter_s: f64, peak: Option<f64>) -> RankRun {
        let config = RunConfig { warmup: 0, iters: 2, ..RunConfig::of_preset(Preset::Tiny, crate::config::StrategyKind::Ring, 2, 1, 2) };
        RankRun {
            run_id: "t".into(),
            launch_id: "l".into(),
            sequence: 0,
            flops: crate::metrics::flops::rank_flops(&config, rank),
            counted_flops: None,
            config,
            rank,
            local_rank: rank,
            host: "h".into(),
            pid: 1,
            device: "d".into(),
            libraries: String::new(),
            version: "0".into(),
            git_commit: "c".into(),
            start_utc: String::new(),
            end_utc: String::new(),
            status: RunStatus::Complete,
            iterations: vec![
                IterationRecord {
                    phases: Default::default(),
                    total_s: iter_s,
                    comm_s: 0.0,
                    hidden_s: 0.0,
                    compute_s: iter_s,
                    bytes_sent: 0,
                    bytes_received: 0
                };
                2
            ],
            memory: MemoryStats::default(),
            device_peak_flops: peak,
            gpu_util: None,
            op_profile: None,
            decode: Vec::new(),
            kv_cache_bytes: None,
        }
    }

    #[test]
    fn a_result_beyond_the_physical_bound_is_marked_invalid_not_reported() {
        // 2 ranks at 1 GFLOP/s peak; the tiny model's iteration needs ~0.2 GFLOP, so 1 ms is impossible.
        let impossible = [rank_run(0, 1e-3, Some(1e9)), rank_run(1, 1e-3, Some(1e9))];
        let s = &summarize(&impossible, &[]).unwrap()[0];
        assert_eq!(s.status, RunStatus::Invalid);
        assert!(s.invalid_reason.as_deref().unwrap().contains("exceeds the physical bound"), "{:?}", s.invalid_reason);
        // The row is written, marked, with its reason.
        let (header, rows) = summary_table(std::slice::from_ref(s));
        let col = |name: &str| rows[0][header.iter().position(|h| h == name).unwrap()].clone();
        assert_eq!(col("status"), "invalid");
        assert!(col("invalid_reason").contains("physical bound"));
        // 10 s an iteration is possible: reported with MFU and efficiency against the compute floor.
        let fine = [rank_run(0, 10.0, Some(1e9)), rank_run(1, 10.0, Some(1e9))];
        // Two iterations of 10 s and 1e-3 s: the interval of the mean time stops at zero, so
        // tokens/s has no upper bound and no interval.
        let mut noisy = fine.clone();
        for r in &mut noisy {
            r.iterations[1].total_s = 1e-3;
        }
        let m = summarize(&noisy, &[]).unwrap()[0].measured.clone().unwrap();
        assert!(m.iter.ci95.unwrap().0 == 0.0 && m.tps_ci95.is_none(), "{:?} {:?}", m.iter.ci95, m.tps_ci95);
        let s = summarize(&fine, &[]).unwrap();
        assert_eq!(s[0].status, RunStatus::Complete);
        let m = s[0].measured.as_ref().unwrap();
        let floor = fine.iter().map(|r| r.flops.total()).fold(0.0, f64::max) / 1e9;
        assert!((m.efficiency_vs_floor.unwrap() - floor / 10.0).abs() < 1e-12);
        assert!(m.mfu.unwrap() > 0.0 && m.mfu.unwrap() <= 1.0);
        // Without a known peak there is no bound to check and no MFU.
        let cpu = [rank_run(0, 1e-9, None), rank_run(1, 1e-9, None)];
        assert!(summarize(&cpu, &[]).unwrap()[0].measured.as_ref().unwrap().mfu.is_none());
    }

    #[test]
    fn planted_times_and_bytes_are_refused_naming_rank_and_dataset() {
        for (field, value, want) in [
            ("iter", f64::NAN, "dataset ring/iter_s[1] = NaN"),
            ("comm", f64::INFINITY, "dataset ring/comm_s[1] = inf"),
            ("compute", -1.0, "dataset ring/compute_s[1] = -1"),
        ] {
            let mut r = rank_run(1, 1.0, None);
            let it = &mut r.iterations[1];
            *match field {
                "iter" => &mut it.total_s,
                "comm" => &mut it.comm_s,
                _ => &mut it.compute_s,
            } = value;
            let e = check_values(&r, "rank-00001.h5").unwrap_err().to_string();
            assert!(e.starts_with("rank 1: rank-00001.h5: ") && e.contains(want), "{e}");
        }
        // The ring of 2 moves its blocks: rank_run's zero bytes disagree with the config.
        let r = rank_run(0, 1.0, None);
        let (sent, _) = crate::strategy::traffic(&r.config, 0);
        assert!(sent > 0);
        let e = check_values(&r, "rank-00000.h5").unwrap_err().to_string();
        assert!(e.contains(&format!("dataset ring/bytes_sent[0] = 0, but this config moves {sent} bytes")), "{e}");
    }
}
