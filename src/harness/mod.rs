//! The one harness every strategy runs under (STYLE.md, item 1): `run` applies the measurement
//! protocol to each config and writes the results; `verify` checks a strategy against the
//! reference and the FP64 oracle. One file per concern: admission, the run directory, the
//! measurement, the console, verification.

pub mod admit;
pub mod console;
mod measure;
mod rundir;
pub mod verify;
mod verify_train;

mod options;
pub use admit::check_memory;
pub use console::print_summaries;
pub use options::{Place, RunOptions};
pub use verify::{tolerance, within, Diff};

/// `verify`: the config admitted (`verify::admit`), then its forward pass or, with --train, its
/// training step, compared on rank 0 with the reference and the FP64 oracle; the verdict every
/// rank agrees on.
pub fn verify<B: Backend + 'static, C: Communicator<B> + 'static>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    save: Option<&std::path::Path>,
) -> Result<bool> {
    verify::admit(cfg, comm, save)?;
    match cfg.train {
        true => verify_train::verify_train(cfg, be, comm, save),
        false => verify::verify_forward(cfg, be, comm, save),
    }
}

use crate::backend::Backend;
use crate::comm::metered::Metered;
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::journal::Journal;
use crate::metrics::flops;
use crate::output::rankfile::{self, RankRun};
use crate::output::reduce;
use crate::output::status::RunStatus;
use anyhow::Result;

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
    let (dir, launch_id) = rundir::create_run_dir(comm, choice, opts)?;
    let run_id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if root {
        match cfgs[0].emulate {
            Some(e) => crate::outln!("ringbench run {run_id}: one process, {}, results in {}", e.label(), dir.display()),
            None => crate::outln!("ringbench run {run_id}: {} ranks, results in {}", comm.size(), dir.display()),
        }
    }
    let (h5_major, h5_minor, h5_release) = hdf5::library_version();
    let libraries = format!("{}; HDF5 {h5_major}.{h5_minor}.{h5_release}", place.mpi_library);
    journal.open(dir.clone(), place.rank, cfgs[0].rank_files());
    for (sequence, cfg) in cfgs.iter().enumerate() {
        if root {
            crate::outln!("{}", cfg.describe());
            if let Some(note) = crate::strategy::idle_owners_note(cfg) {
                crate::outln!("{note}");
            }
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
            decode: Vec::new(),
            kv_cache_bytes: (cfg.decode_tokens > 0)
                .then(|| crate::strategy::decode_placement(cfg, cfg.strategy_rank(comm.rank())).cache.bytes()),
        };
        journal.begin_run(run);
        let metered = Metered::new(strategy_comm(cfg)?);
        measure::measure(cfg, be, comm, &metered, root && !opts.quiet, opts.fault, journal)?;
        journal.finish_run(be.memory())?;
    }
    // Every rank file is complete before rank 0 reads them (shared filesystem, as on clusters).
    comm.barrier()?;
    if !root {
        return Ok(true);
    }
    let summaries = reduce::reduce_into(std::slice::from_ref(&dir), &dir, reduce::ReduceOptions { partial: false, owner: true })?;
    // A look taken while the run was in progress (`reduce --partial`) is superseded.
    for stale in ["summary-partial.csv", "ranks-partial.csv", "summary-partial.json"] {
        if std::fs::remove_file(dir.join(stale)).is_ok() {
            crate::outln!("removed {stale}, a look at the run in progress, now superseded by the final tables");
        }
    }
    print_summaries(&summaries);
    let files = if comm.size() == 1 { "1 rank file".to_string() } else { format!("{} rank files", comm.size()) };
    crate::outln!("wrote {files}, summary.csv, ranks.csv and summary.json to {}", dir.display());
    let invalid: Vec<_> = summaries.iter().filter(|s| s.status == RunStatus::Invalid).collect();
    for s in &invalid {
        eprintln!("ringbench: error: the {} result is invalid: {}", s.config.strategy.name(), s.invalid_reason.as_deref().unwrap_or(""));
    }
    Ok(invalid.is_empty())
}
