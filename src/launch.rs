//! Process start-up and tear-down under MPI: init, who and where this rank is (world rank, local
//! rank on its node, host name), and ending the whole job when one rank fails, so that no other
//! rank is left waiting in a collective. A failure names the rank and the host (STYLE.md, item 11).

use crate::console::{hostname, say};
use anyhow::{anyhow, Result};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub struct Launch {
    // Dropping the universe finalises MPI: it must outlive every communicator made from `world`.
    _universe: Universe,
    pub world: SimpleCommunicator,
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes on this node (MPI_Comm_split_type SHARED): selects the GPU.
    pub local_rank: usize,
    /// Processes on this node (they share its host memory).
    pub local_size: usize,
    pub host: String,
    /// This rank's record of what it measured: saved by the signal thread, the watchdog and the
    /// abort paths before the job ends.
    pub journal: crate::journal::Journal,
}

impl Launch {
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI was initialised twice"))?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let node = world.split_shared(rank as i32);
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        let host = hostname();
        let journal = crate::journal::Journal::new();
        install_panic_hook(rank, host.clone(), journal.clone());
        crate::journal::install_signal_thread(journal.clone(), rank, host.clone())?;
        Ok(Launch { size: world.size() as usize, world, rank, local_rank, local_size, host, journal, _universe: universe })
    }

    /// A communicator over the whole job for the strategies, separate from the launcher's own.
    pub fn world_for_strategies(&self) -> SimpleCommunicator {
        self.world.duplicate()
    }

    /// The MPI library's version line ("Open MPI v4.1.4, ...").
    pub fn mpi_library(&self) -> String {
        mpi::environment::library_version()
            .ok()
            .and_then(|v| v.replace('\0', "").lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "MPI (version unknown)".into())
    }

    /// "rank 3 on host gpu-07", as every report names a rank.
    pub fn who(&self) -> String {
        format!("rank {} on host {}", self.rank, self.host)
    }

    /// Report an error of this rank, save what it measured, and end the whole job.
    pub fn fail(&self, err: &anyhow::Error) -> ! {
        say(&format!("ringbench: {}: error: {err:#}", self.who()));
        self.journal.save_before_abort(&self.who());
        self.world.abort(1)
    }
}

/// This process's rank as the launcher announced it, readable before MPI starts (so that a
/// command-line error is printed once, by rank 0, not once per rank).
pub fn rank_from_env() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"].iter().find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// End the whole job from any thread (the watchdog's): report, then MPI_Abort.
pub fn abort_job(report: &str) -> ! {
    say(&format!("ringbench: {report}"));
    // SAFETY: MPI is initialised before any watchdog starts; MPI_Abort on the world communicator
    // is the documented way to end every process of the job and does not return.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
    std::process::abort();
}

/// A panic on one rank prints the rank, the host and the message, saves what the rank measured,
/// then aborts every rank.
fn install_panic_hook(rank: usize, host: String, journal: crate::journal::Journal) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        say(&format!("ringbench: rank {rank} on host {host}: panic: {info}"));
        journal.save_before_abort(&format!("rank {rank} on host {host}"));
        default(info);
        // SAFETY: MPI is initialised (the hook is installed after init) and MPI_Abort on the world
        // communicator is valid from any state; it does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
        }
        std::process::abort();
    }));
}
