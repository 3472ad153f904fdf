//! `ringbench bench attention` and `bench launch`: one part alone on this machine's device.

use super::EXIT_BAD_INPUT;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::device::CudaBackend;
use crate::cli::bench::{AttentionArgs, LaunchArgs};
use crate::config::{BackendKind, ConfigError};
use std::process::ExitCode;

pub fn attention(cli: &AttentionArgs, include: Option<&std::path::Path>) -> ExitCode {
    let args = &cli.bench();
    if let Err(e) = args.validate() {
        eprintln!("ringbench: error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let result = match args.backend {
        BackendKind::Cpu => crate::bench::attention(&CpuBackend::new(), args),
        BackendKind::Cuda => match CudaBackend::new(0, include) {
            Ok(be) => {
                if let Err(e) = be.set_attention_kernel(args.kernel) {
                    eprintln!("ringbench bench attention: {e:#}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
                crate::bench::attention(&be, args)
            }
            Err(e) => {
                eprintln!("ringbench bench attention: --backend cuda: {e:#}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
    };
    match result {
        Ok(r) if args.json => crate::outln!("{}", serde_json::to_string(&r).expect("the result serialises")),
        Ok(r) => crate::outln!("{}", crate::bench::render(&r)),
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

pub fn launch(cli: &LaunchArgs, include: Option<&std::path::Path>) -> ExitCode {
    let args = &cli.bench();
    use crate::backend::cuda::device::BufferEvents;
    if let Err(e) = args.validate() {
        eprintln!("ringbench: error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let results = match args.backend {
        BackendKind::Cpu => vec![crate::bench::launch(&CpuBackend::new(), args, "host, in order")],
        BackendKind::Cuda => match CudaBackend::new(0, include) {
            // Each measurement allocates its buffers after the setting it measures.
            Ok(be) => [(BufferEvents::Off, "timeline events only"), (BufferEvents::On, "cudarc buffer events too")]
                .into_iter()
                .map(|(events, label)| {
                    be.set_buffer_events(events);
                    let r = crate::bench::launch(&be, args, label);
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
            Ok(r) if args.json => crate::outln!("{}", serde_json::to_string(&r).expect("the result serialises")),
            Ok(r) => crate::outln!("{}", crate::bench::render_launch(&r)),
            Err(e) => {
                eprintln!("ringbench bench launch: error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
