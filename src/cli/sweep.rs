//! `sweep`'s flags, resolved into a `sweep::SweepGrid`.

use super::args::{MeasureArgs, SplitArgs, WorkArgs};
use super::hardware::HardwareArgs;
use crate::config::StrategySelection;
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

/// The default grid's lengths: 8Ki to 1Mi tokens, doubling.
pub const DEFAULT_SEQ_LENS: [usize; 8] = [1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20];
/// The default grid's worlds: 8 to 256 GPUs, doubling.
pub const DEFAULT_WORLDS: [usize; 6] = [8, 16, 32, 64, 128, 256];
/// The default grid's batch: one sequence, the latency question.
pub const DEFAULT_BATCH: usize = 1;

#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// The strategies: `all` (the default), or one; the sizes of each one's split are the sweep's
    /// to choose.
    #[arg(long, value_enum, default_value = "all")]
    pub strategy: StrategySelection,
    /// Project every point with the analytic model, or measure every point of this launch's world.
    #[arg(long, value_enum, default_value = "plan")]
    pub mode: SweepMode,
    /// Sequence lengths, comma-separated, each a count or one with a suffix (k, M, Ki, Mi:
    /// 8Ki,32Ki,128Ki is 8192,32768,131072). Default: 8Ki to 1Mi, doubling.
    #[arg(long, value_delimiter = ',', value_name = "N,...", value_parser = super::args::token_count)]
    pub seq_lens: Vec<usize>,
    /// World sizes (GPUs), comma-separated. Default: 8, 16, ..., 256 (`--mode run`: the launch's,
    /// the only one it takes).
    #[arg(long, visible_alias = "worlds", value_delimiter = ',', value_name = "N,...")]
    pub gpus: Vec<usize>,
    /// K/V head counts, comma-separated. Default: the model's (--kv-heads or the preset's).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub kv_heads_list: Vec<usize>,
    /// Where the tables and charts go (created if missing; an existing file that differs is
    /// never overwritten). Default: a new directory results/sweep-<preset>-<hardware>-<UTC time>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// The model; --batch defaults to 1 here (the preset's batch otherwise decides the answer).
    #[command(flatten)]
    pub work: WorkArgs,
    /// With --decode-tokens, every point's decode too, ranked by TPOT beside the prefill.
    #[command(flatten)]
    pub decode: super::args::DecodeArg,
    /// With --train, every point's training step (forward, backward, gradient all-reduce).
    #[command(flatten)]
    pub train: super::args::TrainArg,
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// Used by `--mode run` only.
    #[command(flatten)]
    pub measure: MeasureArgs,
}

impl SweepArgs {
    /// The grid the flags describe, the defaults filled in.
    pub fn grid(&self) -> SweepGrid {
        let work = WorkArgs { batch: Some(self.work.batch.unwrap_or(DEFAULT_BATCH)), ..self.work.clone() };
        let default_worlds = self.gpus.is_empty() && self.mode == SweepMode::Plan;
        SweepGrid {
            request: crate::config::RunRequest {
                train: self.train.train,
                recompute: self.train.recompute,
                ..super::args::request(self.strategy, &work, None, &SplitArgs::default(), &self.measure, &self.decode)
            },
            seq_lens: if self.seq_lens.is_empty() { DEFAULT_SEQ_LENS.to_vec() } else { self.seq_lens.clone() },
            worlds: if default_worlds { DEFAULT_WORLDS.to_vec() } else { self.gpus.clone() },
            kv_heads_list: self.kv_heads_list.clone(),
        }
    }

    /// --out, or a directory under results/ named for the preset and the profile: a new one,
    /// stamped with the time, for a projected sweep; for a measured one a name every rank
    /// derives alike (`launch_world` ranks on `backend`), so that a rerun resumes it.
    pub fn out_dir(&self, launch_world: Option<usize>) -> PathBuf {
        if let Some(out) = &self.out {
            return out.clone();
        }
        let phase = match (self.train.train, self.train.recompute) {
            (false, _) => "",
            (true, false) => "-train",
            (true, true) => "-train-recompute",
        };
        let preset = format!("{}{phase}", self.work.preset.name());
        let name = match launch_world {
            None => format!("sweep-{preset}-{}-{}", self.hardware.hardware.name(), chrono::Utc::now().format("%Y%m%dT%H%M%SZ")),
            Some(w) => format!("sweep-{preset}-measured-{}-{w}ranks", self.measure.backend.name()),
        };
        PathBuf::from("results").join(name)
    }
}
