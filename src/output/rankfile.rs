//! One HDF5 file per rank, `rank-NNNNN.h5`, with one group per strategy run (named after the
//! strategy) holding the run's attributes and per-iteration datasets. Readable by h5dump and h5py:
//! ```text
//! /tp-pp                      group; attributes: config (JSON), strategy, sequence, run_id,
//!                             launch_id, rank, local_rank, hostname, pid, device, libraries,
//!                             ringbench_version, git_commit, start_utc, end_utc (while running:
//!                             the last checkpoint), status, peak_buffers_bytes,
//!                             peak_device_bytes, device_peak_flops (both absent if unknown),
//!                             linear_flops, attention_flops (this rank's per iteration, by
//!                             the FLOP model), counted_linear_flops, counted_attention_flops
//!                             (as the backend counted the ops issued in a measured iteration),
//!                             gpu_util_mean, gpu_util_max, gpu_util_samples (NVML, percent;
//!                             absent where not sampled), profiled_linear_s,
//!                             profiled_attention_s, profiled_linear_flops,
//!                             profiled_attention_flops (the last warm-up iteration's GEMMs and
//!                             attention timed op by op on the device; absent without warm-up)
//!   iter_s, comm_s, hidden_s, compute_s   f64 [iters]  seconds per measured iteration:
//!                             the job's time, communication not hidden, communication hidden
//!                             under compute, and iter_s - comm_s
//!   bytes_sent, bytes_received u64 [iters]
//!   with --decode-tokens N (then iter_s is the prefill, the time to first token):
//!   decode_step_s, decode_comm_s  f64 [iters, N]  each decode step's time on this rank and
//!                             its communication not hidden
//!   decode_bytes_sent, decode_bytes_received  u64 [iters]  over all N steps
//!   and the attribute kv_cache_bytes (this rank's K/V cache at its full length)
//!   with --train (then iter_s is the whole training step):
//!   train_forward_s, train_backward_s, grad_reduce_s  f64 [iters]  the step's phases, and
//!                             of each its communication not hidden (`*_comm_s`) and hidden
//!                             (`*_hidden_s`): train_forward_comm_s, ..., grad_reduce_hidden_s
//! /ring                       the same
//! ```

use crate::backend::MemoryStats;
use crate::config::RunConfig;
use crate::metrics::flops::Flops;
use crate::metrics::IterationRecord;
use crate::output::status::RunStatus;
use anyhow::{anyhow, bail, Result};
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

/// One strategy run as one rank saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct RankRun {
    pub run_id: String,
    /// The launch that wrote it (made by rank 0, the same on every rank): two launches that
    /// chose the same run id are never reduced as one job.
    pub launch_id: String,
    /// Position of this strategy run within the launch (0 first).
    pub sequence: u32,
    pub config: RunConfig,
    pub rank: usize,
    pub local_rank: usize,
    pub host: String,
    /// The rank's process id on `host` (tells a live run from one whose process is gone).
    pub pid: u32,
    pub device: String,
    /// MPI and HDF5 library versions.
    pub libraries: String,
    pub version: String,
    pub git_commit: String,
    pub start_utc: String,
    pub end_utc: String,
    pub status: RunStatus,
    pub iterations: Vec<IterationRecord>,
    pub memory: MemoryStats,
    pub flops: Flops,
    /// The FLOPs of the ops this rank issued in its last measured iteration, as the backend
    /// counted them (`backend::FlopCounter`); None before any.
    pub counted_flops: Option<Flops>,
    /// The device's dense BF16 peak FLOP/s, where known (for MFU).
    pub device_peak_flops: Option<f64>,
    /// NVML's GPU utilization over the measured iterations, where sampled.
    pub gpu_util: Option<crate::metrics::gpu_util::GpuUtilization>,
    /// The last warm-up iteration's GEMMs and attention, timed op by op (none without warm-up).
    pub op_profile: Option<crate::metrics::OpProfile>,
    /// Each measured iteration's decode steps (empty without --decode-tokens).
    pub decode: Vec<crate::metrics::DecodeRecord>,
    /// This rank's K/V cache at its full length, with --decode-tokens.
    pub kv_cache_bytes: Option<u64>,
}

/// Now, as rank files write their times (UTC, milliseconds, RFC 3339).
pub fn utc_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn rank_file_name(rank: usize) -> String {
    format!("rank-{rank:05}.h5")
}

pub fn rank_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(rank_file_name(rank))
}

fn text(s: &str) -> hdf5::Result<VarLenUnicode> {
    s.parse().map_err(|e| hdf5::Error::from(format!("{e}")))
}

fn write_group(file: &hdf5::File, run: &RankRun) -> hdf5::Result<()> {
    let g = file.create_group(run.config.strategy.name())?;
    let config = serde_json::to_string(&run.config).map_err(|e| hdf5::Error::from(e.to_string()))?;
    for (name, value) in [
        ("config", config.as_str()),
        ("strategy", run.config.strategy.name()),
        ("run_id", &run.run_id),
        ("launch_id", &run.launch_id),
        ("hostname", &run.host),
        ("device", &run.device),
        ("libraries", &run.libraries),
        ("ringbench_version", &run.version),
        ("git_commit", &run.git_commit),
        ("start_utc", &run.start_utc),
        ("end_utc", &run.end_utc),
        ("status", run.status.name()),
    ] {
        g.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&text(value)?)?;
    }
    let mut ints = vec![
        ("sequence", run.sequence as u64),
        ("rank", run.rank as u64),
        ("local_rank", run.local_rank as u64),
        ("pid", run.pid as u64),
        ("peak_buffers_bytes", run.memory.buffers_peak_bytes),
    ];
    if let Some(b) = run.memory.device_peak_bytes {
        ints.push(("peak_device_bytes", b));
    }
    if let Some(b) = run.kv_cache_bytes {
        ints.push(("kv_cache_bytes", b));
    }
    for (name, value) in ints {
        g.new_attr::<u64>().create(name)?.write_scalar(&value)?;
    }
    let mut floats = vec![("linear_flops", run.flops.linear), ("attention_flops", run.flops.attention)];
    if let Some(c) = run.counted_flops {
        floats.extend([("counted_linear_flops", c.linear), ("counted_attention_flops", c.attention)]);
    }
    if let Some(p) = run.device_peak_flops {
        floats.push(("device_peak_flops", p));
    }
    if let Some(u) = run.gpu_util {
        floats.extend([("gpu_util_mean", u.mean), ("gpu_util_max", u.max), ("gpu_util_samples", u.samples as f64)]);
    }
    if let Some(p) = run.op_profile {
        floats.extend([
            ("profiled_linear_s", p.linear_s),
            ("profiled_attention_s", p.attention_s),
            ("profiled_linear_flops", p.linear_flops),
            ("profiled_attention_flops", p.attention_flops),
        ]);
    }
    for (name, value) in floats {
        g.new_attr::<f64>().create(name)?.write_scalar(&value)?;
    }
    let n = run.iterations.len();
    let series = |f: fn(&IterationRecord) -> f64| -> Vec<f64> { run.iterations.iter().map(f).collect() };
    for (name, values) in [
        ("iter_s", series(|r| r.total_s)),
        ("comm_s", series(|r| r.comm_s)),
        ("hidden_s", series(|r| r.hidden_s)),
        ("compute_s", series(|r| r.compute_s)),
    ] {
        g.new_dataset::<f64>().shape([n]).create(name)?.write_raw(&values)?;
    }
    let counts = |f: fn(&IterationRecord) -> u64| -> Vec<u64> { run.iterations.iter().map(f).collect() };
    for (name, values) in [("bytes_sent", counts(|r| r.bytes_sent)), ("bytes_received", counts(|r| r.bytes_received))] {
        g.new_dataset::<u64>().shape([n]).create(name)?.write_raw(&values)?;
    }
    if run.config.train {
        for (k, phase) in PHASES.into_iter().enumerate() {
            for (what, part) in [("s", 0), ("comm_s", 1), ("hidden_s", 2)] {
                let values: Vec<f64> = run.iterations.iter().map(|r| phase_part(&r.phases, part)[k]).collect();
                g.new_dataset::<f64>().shape([n]).create(format!("{phase}_{what}").as_str())?.write_raw(&values)?;
            }
        }
    }
    if run.config.decode_tokens > 0 {
        let (iters, steps) = (run.decode.len(), run.config.decode_tokens);
        let flat = |f: fn(&crate::metrics::DecodeRecord) -> &Vec<f64>| -> Vec<f64> {
            run.decode.iter().flat_map(|d| f(d).iter().copied()).collect()
        };
        for (name, values) in [("decode_step_s", flat(|d| &d.step_s)), ("decode_comm_s", flat(|d| &d.comm_s))] {
            if values.len() != iters * steps {
                return Err(hdf5::Error::from(format!("{name}: {} values for {iters} iterations of {steps} steps", values.len())));
            }
            g.new_dataset::<f64>().shape([iters, steps]).create(name)?.write_raw(&values)?;
        }
        let totals = |f: fn(&crate::metrics::DecodeRecord) -> u64| -> Vec<u64> { run.decode.iter().map(f).collect() };
        for (name, values) in [("decode_bytes_sent", totals(|d| d.bytes_sent)), ("decode_bytes_received", totals(|d| d.bytes_received))] {
            g.new_dataset::<u64>().shape([iters]).create(name)?.write_raw(&values)?;
        }
    }
    Ok(())
}

/// The names a training step's phases have in a rank file.
const PHASES: [&str; 3] = ["train_forward", "train_backward", "grad_reduce"];

/// Seconds (0), communication not hidden (1) or hidden (2) of a record's phases.
fn phase_part(p: &crate::metrics::PhaseRecord, part: usize) -> &[f64; 3] {
    [&p.seconds, &p.comm_s, &p.hidden_s][part]
}

fn phase_part_mut(p: &mut crate::metrics::PhaseRecord, part: usize) -> &mut [f64; 3] {
    match part {
        0 => &mut p.seconds,
        1 => &mut p.comm_s,
        _ => &mut p.hidden_s,
    }
}

/// Write this rank's file with every strategy run so far. The file is rebuilt under a temporary
/// name, closed (HDF5 reports a failed flush only there), synced to the disk, and read back and
/// compared before it is renamed over the previous version (this rank's own last checkpoint): so
/// the file on disk is always complete, and a full disk is an error that names the rank, the
/// file and the cause, never a damaged file in place of a good one.
pub fn write(dir: &Path, rank: usize, runs: &[RankRun]) -> Result<PathBuf> {
    let path = rank_file(dir, rank);
    let tmp = super::partial_name(&path);
    let failed = |why: String| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("rank {rank}: writing its results file {} failed: {why}; the previous version, if any, is kept", path.display())
    };
    let written = (|| -> hdf5::Result<()> {
        let file = hdf5::File::create(&tmp)?;
        for run in runs {
            write_group(&file, run)?;
        }
        file.flush()?;
        file.close()
    })();
    if let Err(e) = written {
        return Err(failed(cause(&e.to_string())));
    }
    if let Err(e) = std::fs::File::open(&tmp).and_then(|f| f.sync_all()) {
        return Err(failed(format!("syncing {}: {e}", tmp.display())));
    }
    match read(&tmp) {
        Ok(back) if back.len() == runs.len() && back.iter().zip(runs).all(|(a, b)| a == b) => {}
        Ok(_) => return Err(failed(format!("{} reads back different from what was written", tmp.display()))),
        Err(e) => return Err(failed(format!("{} does not read back: {}", tmp.display(), cause(&format!("{e:#}"))))),
    }
    std::fs::rename(&tmp, &path).map_err(|e| failed(format!("moving {} into place: {e}", tmp.display())))?;
    // The rename itself is durable once the directory is synced.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        bail!("rank {rank}: syncing results directory {}: {e}", dir.display());
    }
    Ok(path)
}

/// The operating system's reason inside an HDF5 error report (its `error message = '...'`), else
/// the report's first line: HDF5's reports run to several lines of offsets and buffers.
fn cause(report: &str) -> String {
    let first = report.lines().next().unwrap_or(report).trim();
    match report.split("error message = '").nth(1).and_then(|r| r.split('\'').next()) {
        Some(os) => format!("{os} ({})", first.split(':').next().unwrap_or(first)),
        None => first.to_string(),
    }
}

fn read_group(g: &hdf5::Group) -> hdf5::Result<RankRun> {
    let s = |name: &str| -> hdf5::Result<String> { Ok(g.attr(name)?.read_scalar::<VarLenUnicode>()?.as_str().to_string()) };
    let u = |name: &str| -> hdf5::Result<u64> { g.attr(name)?.read_scalar::<u64>() };
    let f = |name: &str| -> hdf5::Result<f64> { g.attr(name)?.read_scalar::<f64>() };
    let mut config: RunConfig = serde_json::from_str(&s("config")?).map_err(|e| hdf5::Error::from(format!("attribute config: {e}")))?;
    config.model = config.model.normalized();
    let floats = |name: &str| -> hdf5::Result<Vec<f64>> { g.dataset(name)?.read_raw::<f64>() };
    let ints = |name: &str| -> hdf5::Result<Vec<u64>> { g.dataset(name)?.read_raw::<u64>() };
    let (total, comm, hidden, compute) = (floats("iter_s")?, floats("comm_s")?, floats("hidden_s")?, floats("compute_s")?);
    let (sent, received) = (ints("bytes_sent")?, ints("bytes_received")?);
    let n = total.len();
    if [comm.len(), hidden.len(), compute.len(), sent.len(), received.len()].iter().any(|&l| l != n) {
        return Err(hdf5::Error::from("per-iteration datasets differ in length"));
    }
    // A training run's phases (absent from a forward pass's file).
    let mut phases = vec![crate::metrics::PhaseRecord::default(); if config.train { n } else { 0 }];
    for (k, phase) in PHASES.into_iter().enumerate().filter(|_| config.train) {
        for (what, part) in [("s", 0), ("comm_s", 1), ("hidden_s", 2)] {
            let values = floats(&format!("{phase}_{what}"))?;
            if values.len() != n {
                return Err(hdf5::Error::from(format!("{phase}_{what} holds {} values, iter_s {n}", values.len())));
            }
            for (p, v) in phases.iter_mut().zip(values) {
                phase_part_mut(p, part)[k] = v;
            }
        }
    }
    let iterations = (0..n)
        .map(|i| IterationRecord {
            total_s: total[i],
            comm_s: comm[i],
            hidden_s: hidden[i],
            compute_s: compute[i],
            bytes_sent: sent[i],
            bytes_received: received[i],
            phases: phases.get(i).copied().unwrap_or_default(),
        })
        .collect();
    let decode = read_decode(g, &config)?;
    Ok(RankRun {
        run_id: s("run_id")?,
        launch_id: s("launch_id")?,
        sequence: u("sequence")? as u32,
        config,
        rank: u("rank")? as usize,
        local_rank: u("local_rank")? as usize,
        host: s("hostname")?,
        pid: u("pid")? as u32,
        device: s("device")?,
        libraries: s("libraries")?,
        version: s("ringbench_version")?,
        git_commit: s("git_commit")?,
        start_utc: s("start_utc")?,
        end_utc: s("end_utc")?,
        status: RunStatus::parse(&s("status")?).ok_or_else(|| hdf5::Error::from("attribute status: not a run status"))?,
        iterations,
        memory: MemoryStats {
            buffers_peak_bytes: u("peak_buffers_bytes")?,
            device_peak_bytes: g.attr("peak_device_bytes").and_then(|a| a.read_scalar::<u64>()).ok(),
        },
        flops: Flops { linear: f("linear_flops")?, attention: f("attention_flops")? },
        counted_flops: match (f("counted_linear_flops"), f("counted_attention_flops")) {
            (Ok(linear), Ok(attention)) => Some(Flops { linear, attention }),
            _ => None,
        },
        device_peak_flops: g.attr("device_peak_flops").and_then(|a| a.read_scalar::<f64>()).ok(),
        gpu_util: match (f("gpu_util_mean"), f("gpu_util_max"), f("gpu_util_samples")) {
            (Ok(mean), Ok(max), Ok(samples)) => Some(crate::metrics::gpu_util::GpuUtilization { mean, max, samples: samples as u64 }),
            _ => None,
        },
        decode,
        kv_cache_bytes: g.attr("kv_cache_bytes").and_then(|a| a.read_scalar::<u64>()).ok(),
        op_profile: match (f("profiled_linear_s"), f("profiled_attention_s"), f("profiled_linear_flops"), f("profiled_attention_flops")) {
            (Ok(linear_s), Ok(attention_s), Ok(linear_flops), Ok(attention_flops)) => {
                Some(crate::metrics::OpProfile { linear_s, attention_s, linear_flops, attention_flops })
            }
            _ => None,
        },
    })
}

/// The decode steps of a run with --decode-tokens: [iters, N] per step, totals per iteration.
fn read_decode(g: &hdf5::Group, config: &RunConfig) -> hdf5::Result<Vec<crate::metrics::DecodeRecord>> {
    let steps = config.decode_tokens;
    if steps == 0 {
        return Ok(Vec::new());
    }
    let (step_s, comm_s) = (g.dataset("decode_step_s")?.read_raw::<f64>()?, g.dataset("decode_comm_s")?.read_raw::<f64>()?);
    let (sent, received) = (g.dataset("decode_bytes_sent")?.read_raw::<u64>()?, g.dataset("decode_bytes_received")?.read_raw::<u64>()?);
    let iters = sent.len();
    if step_s.len() != iters * steps || comm_s.len() != iters * steps || received.len() != iters {
        return Err(hdf5::Error::from("decode datasets differ in length"));
    }
    Ok((0..iters)
        .map(|i| crate::metrics::DecodeRecord {
            step_s: step_s[i * steps..(i + 1) * steps].to_vec(),
            comm_s: comm_s[i * steps..(i + 1) * steps].to_vec(),
            bytes_sent: sent[i],
            bytes_received: received[i],
        })
        .collect())
}

/// Every strategy run in a rank file, in launch order.
pub fn read(path: &Path) -> Result<Vec<RankRun>> {
    let file = hdf5::File::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut runs = Vec::new();
    for name in file.member_names().map_err(|e| anyhow::anyhow!("{e}"))? {
        let g = file.group(&name).map_err(|e| anyhow::anyhow!("group {name}: {e}"))?;
        runs.push(read_group(&g).map_err(|e| anyhow::anyhow!("group {name}: {e}"))?);
    }
    runs.sort_by_key(|r| r.sequence);
    Ok(runs)
}
