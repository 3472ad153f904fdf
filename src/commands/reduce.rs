//! `ringbench reduce`: the tables of one run directory, or several combined.

use super::{EXIT_BAD_INPUT, EXIT_INVALID_RESULT};
use crate::cli::ReduceArgs;
use crate::harness;
use crate::output::status::RunStatus;
use std::process::ExitCode;

pub fn run(args: &ReduceArgs) -> ExitCode {
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
    let opts = crate::output::reduce::ReduceOptions { partial: args.partial, owner: false };
    let written = std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", out.display()))
        .and_then(|()| crate::output::reduce::reduce_into(&args.dirs, &out, opts));
    match written {
        Ok(summaries) => {
            harness::print_summaries(&summaries);
            crate::outln!("wrote the tables to {}", out.display());
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

/// `ringbench report DIR`: the charts of a run directory.
pub fn report(dir: &std::path::Path) -> ExitCode {
    match crate::report::report(dir) {
        Ok(paths) => {
            paths.iter().for_each(|p| crate::outln!("wrote {}", p.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
