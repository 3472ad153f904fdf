//! What each command does, from its parsed flags to its exit status: one file per command
//! (`mpi` for the three that run under MPI). `main` only picks one.

pub mod bench;
pub mod mpi;
pub mod plan;
pub mod reduce;
pub mod selftest;
pub mod sweep;

/// Exit status for bad input, the same on every rank.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit status of a run or reduce whose tables hold a result marked invalid (beyond the hardware's
/// physical bound): the tables are written, the status says they hold an impossible figure.
pub const EXIT_INVALID_RESULT: u8 = 3;
