//! The command line: every clap type of ringbench, and the conversion of flags into the plain
//! values the layers below take (`config::RunRequest`, `plan::Hardware`, `bench::AttentionBench`,
//! `sweep::SweepGrid`). Nothing below this wing sees clap (STYLE.md, item 14).

pub mod args;
pub mod bench;
pub mod hardware;
pub mod sweep;
pub mod values;

use crate::config::StrategySelection;
pub use args::{ConfigArgs, EmulateArgs};
use clap::{Args, Parser, Subcommand};
pub use hardware::HardwareArgs;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ringbench",
    version,
    about = "Which way of splitting long-context prefill over GPUs is fastest, by how much, and why: every strategy measured side by side under MPI, or projected for a cluster by an analytic model"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Directory of the CUDA headers NVRTC compiles the kernels against (cuda_bf16.h). Default:
    /// $CUDA_HOME, $CUDA_PATH, then /usr/local/cuda, each with include/ or targets/*/include/.
    #[arg(long, global = true, value_name = "DIR")]
    pub cuda_include: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// The analytic model (no MPI, no GPU): per-rank memory, FLOPs and traffic, the compute floor,
    /// the physical bound on tokens/s, and a projection for a hardware profile.
    Plan(PlanArgs),
    /// Where each strategy wins: every strategy and split over a grid of world sizes, sequence
    /// lengths and K/V heads (`--mode plan`: the analytic model at any scale), with the fastest
    /// per point, the crossovers, charts and tables in --out.
    Sweep(sweep::SweepArgs),
    /// Write PNG charts of a run directory next to its CSVs (tokens/s with CI, iteration times,
    /// per-rank peak memory, per-rank compute and exposed and hidden communication), or of a
    /// directory `reduce A B --out C` wrote.
    Report(ReportArgs),
    /// Every backend op on this machine's GPU against the CPU backend, at awkward sizes; a table
    /// of errors; exit status 1 on any failure (or when there is no GPU).
    Selftest,
    /// GPUs, CUDA driver, NVRTC, cuBLAS, NCCL and CUDA headers as found on this machine.
    Info,
    /// Rebuild summary.csv, ranks.csv and summary.json from the rank files of run directories (no MPI).
    /// With one directory the tables go into it (an identical existing table is left alone, a
    /// different one is refused); with several, into --out as one combined table.
    Reduce(ReduceArgs),
    /// Time warm-up and measured iterations of one strategy; rank 0 prints the mean iteration
    /// time, tokens/s and prefill time per token.
    Run(RunArgs),
    /// Benchmarks of one part alone, on this machine's device (no MPI).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a strategy once and compare its final hidden states with the single-rank reference;
    /// prints the errors, the tolerance, and PASS or FAIL (exit status 1 on FAIL, on every rank).
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The attention kernel alone: one query block against one key/value block per sequence,
    /// TFLOP/s by the convention 4 x queries x keys x head_dim x heads, halved for causal.
    Attention(bench::AttentionArgs),
    /// What one small kernel launch costs the host and the device; on the CUDA backend measured
    /// twice, with only the timeline's events ordering the streams (what runs use) and with
    /// cudarc's per-buffer events on as well.
    Launch(bench::LaunchArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub emulate: EmulateArgs,
    /// Results root: the run lands in DIR/<run id>/ (rank files, summary.csv, ranks.csv).
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub out: PathBuf,
    /// Run id (a new directory name). Default: $SLURM_JOB_ID, else <UTC timestamp>-<strategy>.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct PlanArgs {
    /// Parallel strategy, or `all` (the default): every strategy, each at its fastest split of
    /// --gpus that fits (or at the split its size flags give), ranked by tokens/s.
    #[arg(long, value_enum)]
    pub strategy: Option<StrategySelection>,
    /// GPUs in the job. Without size flags (--tp, --pp, --ring, --ulysses, --cp) each strategy's
    /// splits of this many GPUs are searched as the sweep does. Default: the size flags' product.
    #[arg(long, value_name = "N")]
    pub gpus: Option<usize>,
    #[command(flatten)]
    pub work: args::WorkArgs,
    #[command(flatten)]
    pub length: args::LengthArg,
    #[command(flatten)]
    pub split: args::SplitArgs,
    #[command(flatten)]
    pub decode: args::DecodeArg,
    #[command(flatten)]
    pub train: args::TrainArg,
    #[command(flatten)]
    pub hardware: HardwareArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PlanArgs {
    /// The flags as plain data; `all` where no strategy is named.
    pub fn request(&self) -> crate::config::RunRequest {
        let strategy = self.strategy.unwrap_or(StrategySelection::All);
        let request = args::request(strategy, &self.work, self.length.seq_len, &self.split, &args::MeasureArgs::default(), &self.decode);
        crate::config::RunRequest { train: self.train.train, recompute: self.train.recompute, ..request }
    }
}

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory holding rank-NNNNN.h5 files.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct ReduceArgs {
    /// Run directories holding rank-NNNNN.h5 files.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where to write the tables (a directory; created if missing). Default: the one DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Leave out missing or damaged rank files instead of refusing; the tables are then written as
    /// summary-partial.csv and ranks-partial.csv, their runs marked "partial".
    #[arg(long)]
    pub partial: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Write the gathered final hidden states to this new HDF5 file (dataset `output`,
    /// [batch, seq, d_model], FP32). An existing file is refused.
    #[arg(long, value_name = "FILE")]
    pub save_output: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every command says what it is for in `--help` (issue 27, item 9).
    #[test]
    fn every_flag_of_every_command_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "ringbench", &mut missing);
        assert!(missing.is_empty(), "flags without a help line: {missing:?}");
    }

    /// Each command lists only the flags it acts on (issue 27, item 9): a projection takes no
    /// measurement flags, a sweep no split or single length.
    #[test]
    fn each_command_lists_only_its_own_flags() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<String> {
            let sub = cli.find_subcommand(name).unwrap_or_else(|| panic!("no {name}"));
            sub.get_arguments().filter_map(|a| a.get_long().map(String::from)).collect()
        };
        let (plan, sweep, run) = (flags("plan"), flags("sweep"), flags("run"));
        for f in ["warmup", "iters", "backend", "comm", "seed", "comm-timeout", "out", "run-id", "emulate-world"] {
            assert!(!plan.contains(&f.to_string()), "plan lists --{f}");
        }
        for f in ["tp", "pp", "ring", "ulysses", "cp", "seq-len", "run-id"] {
            assert!(!sweep.contains(&f.to_string()), "sweep lists --{f}");
        }
        for f in ["hardware", "peak-tflops", "calibrate", "gpus", "json", "seq-lens"] {
            assert!(!run.contains(&f.to_string()), "run lists --{f}");
        }
        for f in ["gpus", "seq-len", "tp", "hardware", "batch"] {
            assert!(plan.contains(&f.to_string()), "plan lacks --{f}");
        }
        for f in ["gpus", "seq-lens", "batch", "backend", "iters"] {
            assert!(sweep.contains(&f.to_string()), "sweep lacks --{f}");
        }
    }
}
