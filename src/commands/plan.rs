//! `ringbench plan`: the analytic model for one strategy, or every one, on the hardware profile.

use super::EXIT_BAD_INPUT;
use crate::cli::PlanArgs;
use crate::config::{ConfigError, RunConfig, StrategySelection};
use crate::strategy::resolve::runs_in_all;
use std::process::ExitCode;

pub fn run(args: &PlanArgs) -> ExitCode {
    let request = args.config.request();
    let planned = || -> Result<Vec<String>, ConfigError> {
        let world = request.implied_world();
        // `all` plans every strategy that validates and says why the others do not; one named
        // strategy that does not validate is bad input.
        let (cfgs, refused) = if request.strategy == StrategySelection::All {
            let flags = request.size_flags();
            let mut ok = Vec::new();
            let mut refused = Vec::new();
            for (kind, r) in request.resolve_each(world)? {
                match r {
                    Ok(cfg) if runs_in_all(kind, &flags, &Ok(cfg.clone())) => ok.push(cfg),
                    Ok(_) => {}
                    Err(e) => refused.push((kind.name().to_string(), e.to_string())),
                }
            }
            if ok.is_empty() {
                let why: Vec<String> = refused.iter().map(|(k, e)| format!("{k}: {e}")).collect();
                return Err(ConfigError(format!(
                    "--strategy all: no strategy fits these sizes on {world} rank{} ({})",
                    if world == 1 { "" } else { "s" },
                    if why.is_empty() { "none splits the world in two dimensions".to_string() } else { why.join("; ") }
                )));
            }
            (ok, refused)
        } else {
            (request.resolve(world)?, Vec::new())
        };
        // The headline (JSON tps_projected) is 8-GPU nodes; beside it, one NVLink domain of the
        // whole job (at least the seed's 16).
        let sizes = match args.hardware.gpus_per_node {
            Some(g) => vec![g],
            None => vec![8, world.max(16)],
        };
        let hw = args.hardware.calibrated(sizes[0])?;
        let plans: Vec<(RunConfig, crate::plan::Plan)> =
            cfgs.iter().map(|cfg| (cfg.clone(), crate::plan::plan(cfg, &hw, &sizes))).collect();
        let mut outputs: Vec<String> = plans
            .iter()
            .map(|(cfg, p)| {
                if args.json {
                    serde_json::to_string_pretty(p).expect("the plan serialises")
                } else {
                    crate::plan::render::render(cfg, p)
                }
            })
            .collect();
        if !args.json && (plans.len() > 1 || !refused.is_empty()) {
            outputs.push(crate::plan::render::render_comparison(&plans, &refused));
        }
        Ok(outputs)
    };
    match planned() {
        Ok(outputs) if args.json && outputs.len() > 1 => crate::outln!("[{}]", outputs.join(",\n")),
        Ok(outputs) => crate::outln!("{}", outputs.join("\n")),
        Err(e) => {
            eprintln!("ringbench: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    }
    ExitCode::SUCCESS
}
