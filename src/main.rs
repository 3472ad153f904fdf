//! ringbench: for this model, this context length and this GPU cluster, which way of splitting
//! long-context work over the GPUs is fastest, by how much, and why? An MPI-launched SPMD program:
//! every rank parses the same flags, validates the same config, and runs its part of the strategy.
//! This file only picks the command (`ringbench::commands`).

use clap::Parser;
use ringbench::cli::sweep::SweepMode;
use ringbench::cli::{BenchCommand, Cli, Command};
use ringbench::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Every rank sees the same flags: only rank 0 says what is wrong with them.
            if ringbench::launch::rank_from_env().unwrap_or(0) == 0 {
                let _ = e.print();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let include = cli.cuda_include.as_deref();
    match &cli.command {
        Command::Reduce(args) => commands::reduce::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Sweep(args) if args.mode == SweepMode::Plan => commands::sweep::plan(args),
        Command::Info => {
            ringbench::out!("{}", ringbench::info::report(include));
            ExitCode::SUCCESS
        }
        Command::Selftest => commands::selftest::run(include),
        Command::Bench(BenchCommand::Attention(args)) => commands::bench::attention(args, include),
        Command::Bench(BenchCommand::Launch(args)) => commands::bench::launch(args, include),
        Command::Report(args) => commands::reduce::report(&args.dir),
        Command::Run(_) | Command::Verify(_) | Command::Sweep(_) => commands::mpi::run(&cli),
    }
}
