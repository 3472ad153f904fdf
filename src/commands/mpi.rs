//! The commands that run under MPI (`run`, `verify`, `sweep --mode run`): every rank resolves the
//! same configs, binds its backend, agrees with the others that it can, and runs its part behind
//! the watchdog.

use super::{EXIT_BAD_INPUT, EXIT_INVALID_RESULT};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::device::CudaBackend;
use crate::backend::Backend;
use crate::cli::args::MeasureArgs;
use crate::cli::{Cli, Command};
use crate::comm::emulated::{Emulated, EmulationTransfers};
use crate::comm::mpi::MpiComm;
use crate::comm::nccl::{placement_problem, NcclComm};
use crate::comm::watchdog::{Overrun, Watchdog, Watched};
use crate::comm::{Communicator, HostCollectives};
use crate::config::{BackendKind, ConfigError, RunConfig, Transport};
use crate::console;
use crate::fault::Fault;
use crate::harness::{self, Place, RunOptions};
use crate::launch::{self, Launch};
use std::process::ExitCode;
use std::time::Duration;

/// How long a rank whose call overran waits before aborting, so that the peer it waits for can
/// report itself as the one that stalled (an abort from any rank ends them all).
const STALL_REPORT_GRACE: Duration = Duration::from_secs(3);

/// `run`, `verify` or a measured sweep: MPI up, the command, MPI down. Bad input found by every
/// rank alike is a clean exit; any other error ends the whole job naming the rank.
pub fn run(cli: &Cli) -> ExitCode {
    let launch = match Launch::init() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringbench: on host {}: {e:#}", console::hostname());
            return ExitCode::FAILURE;
        }
    };
    let code = match dispatch(cli, &launch) {
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
    let measure = match &cli.command {
        Command::Run(a) => &a.config.measure,
        Command::Verify(a) => &a.config.measure,
        Command::Sweep(a) => &a.measure,
        _ => unreachable!("runs without MPI"),
    };
    // A measured sweep's hardware profile (calibrated once, before any work: bad input there
    // stops every rank alike), for the projections beside its measurements.
    let hw = match &cli.command {
        Command::Sweep(a) => Some(a.hardware.calibrated(a.hardware.gpus_per_node.unwrap_or(8))?),
        _ => None,
    };
    let cfgs = match &cli.command {
        Command::Run(a) => a.emulate.request().resolve(&node_window(a.config.request(), launch), launch.size)?,
        Command::Sweep(a) => crate::sweep::grid_on(&a.grid(), Some(launch.size))?,
        Command::Verify(a) => node_window(a.config.request(), launch).resolve(launch.size)?,
        _ => unreachable!("runs without MPI"),
    };
    let hw = hw.as_ref();
    let world = || MpiComm::new(launch.world_for_strategies());
    match cfgs[0].backend {
        BackendKind::Cpu => execute(cli, measure, &cfgs, hw, &CpuBackend::new(), launch, || Ok(world())),
        BackendKind::Cuda => {
            // Every rank must have its GPU before any collective work: agree first, so that one
            // rank without a GPU cannot leave the others waiting.
            let be = CudaBackend::new(launch.local_rank, cli.cuda_include.as_deref());
            let agree = world();
            if !agree.all_agree(be.is_ok())? {
                if let Err(e) = &be {
                    console::say(&format!("ringbench: rank {} on host {}: --backend cuda: {e:#}", launch.rank, launch.host));
                }
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            let be = be?;
            // An emulated rank is one process: its copies need no transport between GPUs.
            if cfgs[0].transport() != Transport::Nccl {
                return execute(cli, measure, &cfgs, hw, &be, launch, || Ok(world()));
            }
            let problem = placement_problem(launch.local_size, be.devices(), &launch.host);
            if !agree.all_agree(problem.is_none())? {
                if let Some(p) = problem {
                    console::say(&format!("ringbench: rank {}: {p}", launch.rank));
                }
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            execute(cli, measure, &cfgs, hw, &be, launch, || NcclComm::new(world(), &be))
        }
    }
}

/// The request, the double ring's window a node (the ranks sharing a host, the same on every
/// rank: the launch places ranks in blocks).
fn node_window(request: crate::config::RunRequest, launch: &Launch) -> crate::config::RunRequest {
    request.window_of_node(launch.local_size, launch.size)
}

/// `run` or `verify` on backend `be`, with the transport `connect` makes (watched) between ranks.
fn execute<B: Backend + EmulationTransfers + 'static, T: Communicator<B> + 'static>(
    cli: &Cli,
    measure: &MeasureArgs,
    cfgs: &[RunConfig],
    hw: Option<&crate::plan::Hardware>,
    be: &B,
    launch: &Launch,
    connect: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<ExitCode> {
    let (journal, who) = (launch.journal.clone(), launch.who());
    let dog = Watchdog::start(
        Duration::from_secs_f64(measure.comm_timeout),
        launch.who(),
        Box::new(move |overrun| {
            console::say(&format!("ringbench: {}", overrun.report()));
            journal.save_before_abort(&who);
            if let Overrun::Waiting(_) = overrun {
                // The rank that stalled, if it is alive, names itself within a watchdog tick.
                std::thread::sleep(STALL_REPORT_GRACE);
            }
            launch::abort_job(&format!("{who}: aborting the job (watchdog)"))
        }),
    );
    // Creating a communicator is collective (NCCL's init waits for every rank): watched too.
    let transport = dog.guard("communicator setup", None, 0, connect)?;
    let comm = Watched::new(transport, dog);
    // A sweep checks each point's memory as it comes to it, and leaves out those that do not fit.
    if !matches!(cli.command, Command::Sweep(_)) {
        harness::check_memory(cfgs, be, &comm, launch.local_size, matches!(cli.command, Command::Verify(_)))?;
    }
    match &cli.command {
        Command::Sweep(a) => {
            let place =
                Place { rank: launch.rank, local_rank: launch.local_rank, host: launch.host.clone(), mpi_library: launch.mpi_library() };
            let hw = hw.expect("a sweep's hardware is resolved with its grid");
            let launched = crate::sweep::Launched { place: &place, journal: &launch.journal, local_size: launch.local_size };
            crate::sweep::run_points(
                cfgs,
                be,
                &comm,
                &|_| comm.split(0, comm.rank()),
                &launched,
                &a.out_dir(Some(launch.size)),
                a.quiet,
                hw,
            )
            .map(|valid| if valid { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID_RESULT) })
        }
        Command::Run(a) => {
            let place = Place {
                rank: cfgs[0].strategy_rank(launch.rank),
                local_rank: launch.local_rank,
                host: launch.host.clone(),
                mpi_library: launch.mpi_library(),
            };
            let fault = Fault::from_env()?;
            if let Some(f) = fault {
                let spec = std::env::var(crate::fault::ENV).unwrap_or_default();
                let iterations = cfgs.iter().map(|c| c.warmup + c.iters).max().unwrap_or(0);
                f.check(&spec, comm.size(), iterations)?;
            }
            let opts = RunOptions { out: a.out.clone(), run_id: a.run_id.clone(), quiet: a.quiet, fault };
            let choice = a.config.strategy.name();
            let journal = &launch.journal;
            match cfgs[0].emulate {
                None => harness::run(cfgs, choice, be, &comm, &|_| comm.split(0, comm.rank()), &place, &opts, journal),
                Some(e) => {
                    let transfers = be.emulation_transfers()?;
                    harness::run(
                        cfgs,
                        choice,
                        be,
                        &comm,
                        &|cfg| Emulated::with_transfers(be, &crate::strategy::emulation::job(cfg, e.as_rank), e.as_rank, transfers.clone()),
                        &place,
                        &opts,
                        journal,
                    )
                }
            }
            .map(|valid| if valid { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID_RESULT) })
        }
        Command::Verify(a) => {
            if a.save_output.is_some() && cfgs.len() > 1 {
                return Err(ConfigError("--save-output takes one strategy's output; --strategy all runs two".into()).into());
            }
            let mut pass = true;
            for cfg in cfgs {
                pass &= harness::verify(cfg, be, &comm, a.save_output.as_deref())?;
            }
            Ok(if pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        _ => unreachable!("runs without MPI"),
    }
}
