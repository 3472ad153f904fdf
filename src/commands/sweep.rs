//! `ringbench sweep --mode plan`: the analytic model over a grid (the measured mode runs under MPI,
//! in `commands::mpi`).

use super::EXIT_BAD_INPUT;
use crate::cli::sweep::SweepArgs;
use crate::config::{ConfigError, RunConfig};
use std::process::ExitCode;

pub fn plan(args: &SweepArgs) -> ExitCode {
    use crate::sweep;
    let prepared = || -> Result<(Vec<RunConfig>, crate::plan::Hardware), ConfigError> {
        // Nodes of 8 unless --gpus-per-node says otherwise.
        let hw = args.hardware.calibrated(args.hardware.gpus_per_node.unwrap_or(8))?;
        Ok((sweep::grid(&args.grid())?, hw))
    };
    let (cfgs, hw) = match prepared() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringbench: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let out = args.out_dir(None);
    // One sweep at a time in --out, and a projected one never over a measured one's tables.
    let _claim = match sweep::claim::claim(&out, sweep::Basis::Projected) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbench: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let bar = sweep::progress(cfgs.len(), args.quiet);
    let points = sweep::evaluate(&cfgs, &hw, &mut || bar.inc(1));
    bar.finish_and_clear();
    crate::out!("{}", sweep::render(&points, &hw, sweep::Basis::Projected));
    match sweep::write(&out, &points, &hw, sweep::Basis::Projected) {
        Ok(paths) => {
            crate::outln!("\n{} points (projected by the analytic model, not measured)", points.len());
            paths.iter().for_each(|p| crate::outln!("wrote {}", p.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
