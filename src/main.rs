//! ringbench: does ring attention with sequence parallelism beat tensor x pipeline parallelism for
//! long-context prefill on this cluster, by how much, and why? An MPI-launched SPMD program: every
//! rank parses the same flags, validates the same config, and runs its part of the strategy.

use clap::{Args, Parser, Subcommand};
use ringbench::backend::cpu::CpuBackend;
use ringbench::backend::cuda::device::{AttentionKernel, CudaBackend};
use ringbench::backend::Backend;
use ringbench::comm::emulated::{Emulated, EmulationTransfers};
use ringbench::comm::mpi::MpiComm;
use ringbench::comm::nccl::{placement_problem, NcclComm};
use ringbench::comm::watchdog::{Overrun, Watchdog, Watched};
use ringbench::comm::{Communicator, HostCollectives};
use ringbench::config::{BackendKind, ConfigArgs, ConfigError, EmulateArgs, RunConfig, StrategyChoice, Transport};
use ringbench::fault::Fault;
use ringbench::harness::{self, Place, RunOptions};
use ringbench::launch::{self, Launch};
use ringbench::output::status::RunStatus;
use ringbench::plan::HardwareArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ringbench",
    version,
    about = "Ring attention (sequence parallel) vs tensor x pipeline parallel, long-context prefill, over MPI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Directory of the CUDA headers NVRTC compiles the kernels against (cuda_bf16.h). Default:
    /// $CUDA_HOME, $CUDA_PATH, then /usr/local/cuda, each with include/ or targets/*/include/.
    #[arg(long, global = true, value_name = "DIR")]
    cuda_include: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The analytic model (no MPI, no GPU): per-rank memory, FLOPs and traffic, the compute floor,
    /// the physical bound on tokens/s, and a projection for a hardware profile.
    Plan(PlanArgs),
    /// Where each strategy wins: every strategy and split over a grid of world sizes, sequence
    /// lengths and K/V heads (`--mode plan`: the analytic model at any scale), with the fastest
    /// per point, the crossovers, charts and tables in --out.
    Sweep(ringbench::sweep::SweepArgs),
    /// Write PNG charts of a run directory next to its CSVs (tokens/s with CI, iteration times,
    /// per-rank peak memory, per-rank compute and exposed and hidden communication).
    Report(ReportArgs),
    /// Every backend op on this machine's GPU against the CPU backend, at awkward sizes; a table
    /// of errors; exit status 1 on any failure (or when there is no GPU).
    Selftest,
    /// GPUs, CUDA driver, NVRTC, cuBLAS, NCCL and CUDA headers as found on this machine.
    Info,
    /// Rebuild summary.csv and ranks.csv from the rank files of run directories (no MPI).
    /// With one directory the tables go into it (an identical existing table is left alone, a
    /// different one is refused); with several, into --out as one combined table.
    Reduce(ReduceArgs),
    /// Time warm-up and measured iterations of one strategy; rank 0 prints the mean iteration
    /// time, tokens/s and time per token.
    Run(RunArgs),
    /// Benchmarks of one part alone, on this machine's device (no MPI).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a strategy once and compare its final hidden states with the single-rank reference;
    /// prints the errors, the tolerance, and PASS or FAIL (exit status 1 on FAIL, on every rank).
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The attention kernel alone: one query block against one key/value block per sequence,
    /// TFLOP/s by the convention 4 x queries x keys x head_dim x heads, halved for causal.
    Attention(ringbench::bench::AttentionArgs),
    /// What one small kernel launch costs the host and the device; on the CUDA backend measured
    /// twice, with only the timeline's events ordering the streams (what runs use) and with
    /// cudarc's per-buffer events on as well.
    Launch(ringbench::bench::LaunchArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    emulate: EmulateArgs,
    /// Results root: the run lands in DIR/<run id>/ (rank files, summary.csv, ranks.csv).
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// Run id (a new directory name). Default: $SLURM_JOB_ID, else <UTC timestamp>-<strategy>.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    hardware: HardwareArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// A run directory holding rank-NNNNN.h5 files.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Args)]
struct ReduceArgs {
    /// Run directories holding rank-NNNNN.h5 files.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Where to write the tables (a directory; created if missing). Default: the one DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Leave out missing or damaged rank files instead of refusing; the tables are then written as
    /// summary-partial.csv and ranks-partial.csv, their runs marked "partial".
    #[arg(long)]
    partial: bool,
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

/// Exit status of a run or reduce whose tables hold a result marked invalid (beyond the hardware's
/// physical bound): the tables are written, the status says they hold an impossible figure.
const EXIT_INVALID_RESULT: u8 = 3;

/// How long a rank whose call overran waits before aborting, so that the peer it waits for can
/// report itself as the one that stalled (an abort from any rank ends them all).
const STALL_REPORT_GRACE: Duration = Duration::from_secs(3);

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
    match &cli.command {
        Command::Reduce(args) => return reduce(args),
        Command::Plan(args) => return plan(args),
        Command::Sweep(args) if args.mode == ringbench::sweep::SweepMode::Plan => return sweep(args),
        Command::Info => {
            print!("{}", ringbench::info::report(cli.cuda_include.as_deref()));
            return ExitCode::SUCCESS;
        }
        Command::Selftest => return selftest(cli.cuda_include.as_deref()),
        Command::Bench(BenchCommand::Attention(args)) => return bench_attention(args, cli.cuda_include.as_deref()),
        Command::Bench(BenchCommand::Launch(args)) => return bench_launch(args, cli.cuda_include.as_deref()),
        Command::Report(args) => {
            return match ringbench::report::report(&args.dir) {
                Ok(paths) => {
                    paths.iter().for_each(|p| println!("wrote {}", p.display()));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringbench: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {}
    }
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

fn selftest(include: Option<&std::path::Path>) -> ExitCode {
    let gpu = match CudaBackend::new(0, include) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("ringbench selftest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cpu = CpuBackend::new();
    // Every op with the default attention kernel, then the attention cases with each other one.
    let mut all = true;
    let mut kernels = vec![AttentionKernel::Auto, AttentionKernel::Flash64, AttentionKernel::Plain];
    if gpu.has_wgmma() {
        kernels.push(AttentionKernel::Wgmma);
    } else {
        println!("\n{} is {}: the wgmma kernel (sm_90a only) is not built here, not tested", gpu.device_name(), gpu.arch);
    }
    for kernel in kernels {
        if let Err(e) = gpu.set_attention_kernel(kernel) {
            // A kernel refused at load (kernels::refusal) fails its table and the rest go on.
            println!("\nringbench selftest on {}, attention kernel {kernel:?}: FAIL: {e:#}", gpu.device_name());
            all = false;
            continue;
        }
        let label = format!("{}, attention kernel {kernel:?}: {} at head dim 128", gpu.device_name(), kernel.describe(128));
        println!("\nringbench selftest on {label}");
        let keep = |name: &str| kernel == AttentionKernel::Auto || name.starts_with("attention");
        match ringbench::selftest::run(&cpu, &gpu, &label, kernel, &keep) {
            Ok(pass) => all &= pass,
            Err(e) => {
                eprintln!("ringbench selftest: error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!();
    for source in gpu.loaded_sources() {
        print!("{}", source.describe());
    }
    gpu.set_attention_kernel(AttentionKernel::Auto).expect("auto runs everywhere");
    match selftest_communicators(&cpu, &gpu) {
        Ok(pass) => all &= pass,
        Err(e) => {
            eprintln!("ringbench selftest: communicator cases: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The communicator cases on this GPU, through each transport the CUDA backend has: NCCL (its own
/// communication stream) and MPI with host staging. Each rank of a launch tests on its own.
fn selftest_communicators(cpu: &CpuBackend, gpu: &CudaBackend) -> anyhow::Result<bool> {
    let launch = Launch::init()?;
    let alone = || MpiComm::new(launch.world_for_strategies()).split_comm(launch.rank, 0);
    let kernel = AttentionKernel::Auto;
    let mut all = true;
    println!("\nringbench selftest of NCCL (one rank, communication stream) on {}", gpu.device_name());
    match NcclComm::library_version() {
        Some(v) => {
            let nccl = NcclComm::new(alone()?, gpu)?;
            all &= ringbench::selftest::comm::run(cpu, gpu, &nccl, &format!("{}, NCCL {v}", gpu.device_name()), kernel)?;
        }
        None => {
            println!("NCCL (libnccl.so, unversioned) not found: the NCCL cases cannot run: FAIL");
            all = false;
        }
    }
    println!("\nringbench selftest of MPI with host staging (one rank) on {}", gpu.device_name());
    all &= ringbench::selftest::comm::run(cpu, gpu, &alone()?, &format!("{}, MPI host staging", gpu.device_name()), kernel)?;
    Ok(all)
}

fn bench_attention(args: &ringbench::bench::AttentionArgs, include: Option<&std::path::Path>) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("ringbench: error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let result = match args.backend {
        BackendKind::Cpu => ringbench::bench::attention(&CpuBackend::new(), args),
        BackendKind::Cuda => match CudaBackend::new(0, include) {
            Ok(be) => {
                if let Err(e) = be.set_attention_kernel(args.kernel) {
                    eprintln!("ringbench bench attention: {e:#}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
                ringbench::bench::attention(&be, args)
            }
            Err(e) => {
                eprintln!("ringbench bench attention: --backend cuda: {e:#}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
    };
    match result {
        Ok(r) if args.json => println!("{}", serde_json::to_string(&r).expect("the result serialises")),
        Ok(r) => println!("{}", ringbench::bench::render(&r)),
        Err(e) => {
            if let Some(bad) = e.downcast_ref::<ConfigError>() {
                eprintln!("ringbench: error: {bad}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            eprintln!("ringbench bench attention: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn bench_launch(args: &ringbench::bench::LaunchArgs, include: Option<&std::path::Path>) -> ExitCode {
    use ringbench::backend::cuda::device::BufferEvents;
    if let Err(e) = args.validate() {
        eprintln!("ringbench: error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let results = match args.backend {
        BackendKind::Cpu => vec![ringbench::bench::launch(&CpuBackend::new(), args, "host, in order")],
        BackendKind::Cuda => match CudaBackend::new(0, include) {
            // Each measurement allocates its buffers after the setting it measures.
            Ok(be) => [(BufferEvents::Off, "timeline events only"), (BufferEvents::On, "cudarc buffer events too")]
                .into_iter()
                .map(|(events, label)| {
                    be.set_buffer_events(events);
                    let r = ringbench::bench::launch(&be, args, label);
                    be.set_buffer_events(BufferEvents::Off);
                    r
                })
                .collect(),
            Err(e) => {
                eprintln!("ringbench bench launch: --backend cuda: {e:#}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
    };
    for r in results {
        match r {
            Ok(r) if args.json => println!("{}", serde_json::to_string(&r).expect("the result serialises")),
            Ok(r) => println!("{}", ringbench::bench::render_launch(&r)),
            Err(e) => {
                eprintln!("ringbench bench launch: error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn plan(args: &PlanArgs) -> ExitCode {
    let planned = || -> Result<Vec<String>, ConfigError> {
        let world = args.config.implied_world();
        // `all` plans every strategy that validates and says why the others do not; one named
        // strategy that does not validate is bad input.
        let (cfgs, refused) = if args.config.strategy == StrategyChoice::All {
            let flags = args.config.size_flags();
            let mut ok = Vec::new();
            let mut refused = Vec::new();
            for (kind, r) in args.config.resolve_each(world)? {
                match r {
                    Ok(cfg) if StrategyChoice::runs_in_all(kind, &flags, &Ok(cfg.clone())) => ok.push(cfg),
                    Ok(_) => {}
                    Err(e) => refused.push((kind.name().to_string(), e.to_string())),
                }
            }
            (ok, refused)
        } else {
            (args.config.resolve(world)?, Vec::new())
        };
        // The headline (JSON tps_projected) is 8-GPU nodes; beside it, one NVLink domain of the
        // whole job (at least the seed's 16).
        let sizes = match args.hardware.gpus_per_node {
            Some(g) => vec![g],
            None => vec![8, world.max(16)],
        };
        let hw = args.hardware.calibrated(sizes[0])?;
        let plans: Vec<(RunConfig, ringbench::plan::Plan)> =
            cfgs.iter().map(|cfg| (cfg.clone(), ringbench::plan::plan(cfg, &hw, &sizes))).collect();
        let mut outputs: Vec<String> =
            plans
                .iter()
                .map(|(cfg, p)| {
                    if args.json {
                        serde_json::to_string_pretty(p).expect("the plan serialises")
                    } else {
                        ringbench::plan::render(cfg, p)
                    }
                })
                .collect();
        if !args.json && (plans.len() > 1 || !refused.is_empty()) {
            outputs.push(ringbench::plan::render_comparison(&plans, &refused));
        }
        Ok(outputs)
    };
    match planned() {
        Ok(outputs) if args.json && outputs.len() > 1 => println!("[{}]", outputs.join(",\n")),
        Ok(outputs) => println!("{}", outputs.join("\n")),
        Err(e) => {
            eprintln!("ringbench: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    }
    ExitCode::SUCCESS
}

fn sweep(args: &ringbench::sweep::SweepArgs) -> ExitCode {
    use ringbench::sweep;
    let prepared = || -> Result<(Vec<RunConfig>, ringbench::plan::Hardware), ConfigError> {
        // Nodes of 8 unless --gpus-per-node says otherwise.
        let hw = args.hardware.calibrated(args.hardware.gpus_per_node.unwrap_or(8))?;
        Ok((sweep::grid(args)?, hw))
    };
    let (cfgs, hw) = match prepared() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringbench: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let bar = sweep::progress(cfgs.len(), args.quiet);
    let points = sweep::evaluate(&cfgs, &hw, &mut || bar.inc(1));
    bar.finish_and_clear();
    print!("{}", sweep::render(&points, &hw, sweep::Basis::Projected));
    match sweep::write(&args.out, &points, &hw, sweep::Basis::Projected) {
        Ok(paths) => {
            println!("\n{} points (projected by the analytic model, not measured)", points.len());
            paths.iter().for_each(|p| println!("wrote {}", p.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn reduce(args: &ReduceArgs) -> ExitCode {
    let out = match (&args.out, args.dirs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.clone(),
        (None, _) => {
            eprintln!("ringbench: error: --out: several run directories need --out DIR for the combined tables");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if let Some(d) = args.dirs.iter().find(|d| !d.is_dir()) {
        eprintln!("ringbench: error: reduce {}: not a run directory (expected a directory holding rank-NNNNN.h5 files)", d.display());
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let opts = ringbench::output::reduce::ReduceOptions { partial: args.partial, owner: false };
    let written = std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", out.display()))
        .and_then(|()| ringbench::output::reduce::reduce_into(&args.dirs, &out, opts));
    match written {
        Ok(summaries) => {
            harness::print_summaries(&summaries);
            println!("wrote the tables to {}", out.display());
            let invalid: Vec<_> = summaries.iter().filter(|s| s.status == RunStatus::Invalid).collect();
            for s in &invalid {
                eprintln!(
                    "ringbench: error: the {} result is invalid: {}",
                    s.config.strategy.name(),
                    s.invalid_reason.as_deref().unwrap_or("")
                );
            }
            if invalid.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INVALID_RESULT)
            }
        }
        Err(e) => {
            eprintln!("ringbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: &Cli, launch: &Launch) -> anyhow::Result<ExitCode> {
    let config_args = match &cli.command {
        Command::Run(a) => &a.config,
        Command::Verify(a) => &a.config,
        Command::Sweep(a) => &a.config,
        _ => unreachable!("runs without MPI"),
    };
    let cfgs = match &cli.command {
        Command::Run(a) => a.emulate.resolve(config_args, launch.size)?,
        Command::Sweep(a) => {
            a.hardware.calibrated(a.hardware.gpus_per_node.unwrap_or(8))?;
            ringbench::sweep::grid_on(a, Some(launch.size))?
        }
        _ => config_args.resolve(launch.size)?,
    };
    let world = || MpiComm::new(launch.world_for_strategies());
    match cfgs[0].backend {
        BackendKind::Cpu => execute(cli, config_args, &cfgs, &CpuBackend::new(), launch, || Ok(world())),
        BackendKind::Cuda => {
            // Every rank must have its GPU before any collective work: agree first, so that one
            // rank without a GPU cannot leave the others waiting.
            let be = CudaBackend::new(launch.local_rank, cli.cuda_include.as_deref());
            let agree = world();
            if !agree.all_agree(be.is_ok())? {
                if let Err(e) = &be {
                    launch::say(&format!("ringbench: rank {} on host {}: --backend cuda: {e:#}", launch.rank, launch.host));
                }
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            let be = be?;
            // An emulated rank is one process: its copies need no transport between GPUs.
            if cfgs[0].transport() != Transport::Nccl {
                return execute(cli, config_args, &cfgs, &be, launch, || Ok(world()));
            }
            let problem = placement_problem(launch.local_size, be.devices(), &launch.host);
            if !agree.all_agree(problem.is_none())? {
                if let Some(p) = problem {
                    launch::say(&format!("ringbench: rank {}: {p}", launch.rank));
                }
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            execute(cli, config_args, &cfgs, &be, launch, || NcclComm::new(world(), &be))
        }
    }
}

/// `run` or `verify` on backend `be`, with the transport `connect` makes (watched) between ranks.
fn execute<B: Backend + EmulationTransfers + 'static, T: Communicator<B> + 'static>(
    cli: &Cli,
    config_args: &ConfigArgs,
    cfgs: &[RunConfig],
    be: &B,
    launch: &Launch,
    connect: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<ExitCode> {
    let (journal, who) = (launch.journal.clone(), launch.who());
    let dog = Watchdog::start(
        Duration::from_secs_f64(config_args.comm_timeout),
        launch.who(),
        Box::new(move |overrun| {
            launch::say(&format!("ringbench: {}", overrun.report()));
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
            let hw = a.hardware.calibrated(a.hardware.gpus_per_node.unwrap_or(8))?;
            let launched = ringbench::sweep::Launched { place: &place, journal: &launch.journal, local_size: launch.local_size };
            ringbench::sweep::run_points(cfgs, be, &comm, &|_| comm.split(0, comm.rank()), &launched, a, &hw).map(|valid| {
                if valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_INVALID_RESULT)
                }
            })
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
                let spec = std::env::var(ringbench::fault::ENV).unwrap_or_default();
                let iterations = cfgs.iter().map(|c| c.warmup + c.iters).max().unwrap_or(0);
                f.check(&spec, comm.size(), iterations)?;
            }
            let opts = RunOptions { out: a.out.clone(), run_id: a.run_id.clone(), quiet: a.quiet, fault };
            let choice = config_args.strategy.name();
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
                        &|cfg| Emulated::with_transfers(be, cfg, e.as_rank, transfers.clone()),
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
