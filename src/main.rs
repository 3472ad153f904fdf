//! ringbench: does ring attention with sequence parallelism beat tensor x pipeline parallelism for
//! long-context prefill on this cluster, by how much, and why? An MPI-launched SPMD program: every
//! rank parses the same flags, validates the same config, and runs its part of the strategy.

use clap::{Args, Parser, Subcommand};
use ringbench::backend::cpu::CpuBackend;
use ringbench::comm::mpi::MpiComm;
use ringbench::config::{BackendKind, ConfigArgs, ConfigError};
use ringbench::harness;
use ringbench::launch::{self, Launch};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ringbench",
    version,
    about = "Ring attention (sequence parallel) vs tensor x pipeline parallel, long-context prefill, over MPI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time warm-up and measured iterations of one strategy; rank 0 prints the mean iteration
    /// time, tokens/s and time per token.
    Run(RunArgs),
    /// Run a strategy once and compare its final hidden states with the single-rank reference;
    /// prints the errors, the tolerance, and PASS or FAIL (exit status 1 on FAIL, on every rank).
    Verify(VerifyArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Write the gathered final hidden states to this new HDF5 file (dataset `output`,
    /// [batch, seq, d_model], FP32). An existing file is refused.
    #[arg(long, value_name = "FILE")]
    save_output: Option<PathBuf>,
}

/// Exit status for bad input, the same on every rank.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Every rank sees the same flags: only rank 0 says what is wrong with them.
            if launch::rank_from_env().unwrap_or(0) == 0 {
                let _ = e.print();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let launch = match Launch::init() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringbench: on host {}: {e:#}", launch::hostname());
            return ExitCode::FAILURE;
        }
    };
    let code = match dispatch(&cli, &launch) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            // Bad input is found by every rank alike, before any work: a clean exit, no abort.
            Some(bad) => {
                if launch.rank == 0 {
                    eprintln!("ringbench: error: {bad}");
                }
                ExitCode::from(EXIT_BAD_INPUT)
            }
            None => launch.fail(&e),
        },
    };
    drop(launch); // finalises MPI before the process exits
    code
}

fn dispatch(cli: &Cli, launch: &Launch) -> anyhow::Result<ExitCode> {
    let config_args = match &cli.command {
        Command::Run(a) => &a.config,
        Command::Verify(a) => &a.config,
    };
    let cfg = config_args.resolve(launch.size)?;
    match cfg.backend {
        BackendKind::Cpu => {
            let be = CpuBackend::new();
            let comm = MpiComm::new(launch.world_for_strategies());
            match &cli.command {
                Command::Run(_) => harness::run(&cfg, &be, &comm).map(|()| ExitCode::SUCCESS),
                Command::Verify(a) => {
                    let pass = harness::verify(&cfg, &be, &comm, a.save_output.as_deref())?;
                    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                }
            }
        }
    }
}
