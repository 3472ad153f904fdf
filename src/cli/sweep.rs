//! `sweep`'s flags, resolved into a `sweep::SweepGrid`.

use super::args::ConfigArgs;
use super::hardware::HardwareArgs;
use crate::sweep::SweepGrid;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SweepMode {
    /// The analytic model at every point (no MPI, no GPU; any world size).
    Plan,
    /// Every point measured with `run`'s protocol, under this mpirun (its world), each point a run
    /// directory in --out; a rerun skips the points already complete and redoes an interrupted one.
    Run,
}

#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// The model, the measurement and the strategies (`--strategy all`, or one) as for `run`;
    /// the sizes of each strategy's split are the sweep's to choose.
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// Project every point with the analytic model, or measure every point of this launch's world.
    #[arg(long, value_enum, default_value = "plan")]
    pub mode: SweepMode,
    /// Sequence lengths, comma-separated, each a count or one with a suffix (k, M, Ki, Mi:
    /// 8Ki,32Ki,128Ki is 8192,32768,131072).
    #[arg(long, value_delimiter = ',', required = true, value_name = "N,...", value_parser = super::args::token_count)]
    pub seq_lens: Vec<usize>,
    /// World sizes (GPUs), comma-separated. Default: 8, 16, ..., 1024 (`--mode run`: the launch's,
    /// the only one it takes).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub worlds: Vec<usize>,
    /// K/V head counts, comma-separated. Default: the model's (--kv-heads or the preset's).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub kv_heads_list: Vec<usize>,
    /// Where the tables and charts go (created if missing; an existing file that differs is
    /// never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

impl SweepArgs {
    /// The grid the flags describe.
    pub fn grid(&self) -> SweepGrid {
        SweepGrid {
            request: self.config.request(),
            seq_lens: self.seq_lens.clone(),
            worlds: self.worlds.clone(),
            kv_heads_list: self.kv_heads_list.clone(),
        }
    }
}
