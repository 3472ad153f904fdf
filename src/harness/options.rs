//! What a run is told: who and where this rank is, and where its results go.

use crate::fault::Fault;
use std::path::PathBuf;

/// Who and where this rank is, for its results.
#[derive(Clone, Debug)]
pub struct Place {
    pub rank: usize,
    pub local_rank: usize,
    pub host: String,
    /// MPI library version, as the library reports it.
    pub mpi_library: String,
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
