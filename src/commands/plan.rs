//! `ringbench plan`: the analytic model for one strategy, or every one, on the hardware profile.

use super::EXIT_BAD_INPUT;
use crate::cli::PlanArgs;
use crate::config::{ConfigError, RunConfig, RunRequest, StrategyKind, StrategySelection};
use crate::strategy::resolve::runs_in_all;
use std::process::ExitCode;

pub fn run(args: &PlanArgs) -> ExitCode {
    let request = args.request();
    let planned = || -> Result<Vec<String>, ConfigError> {
        let sized = [request.tp, request.pp, request.ring, request.ulysses, request.cp].iter().any(Option::is_some);
        let world = match args.gpus {
            Some(0) => return Err(ConfigError("--gpus 0: must be at least 1".into())),
            Some(g) => {
                crate::config::require_at_most("--gpus", g, crate::config::MAX_RANKS)?;
                g
            }
            None => request.implied_world(),
        };
        // A world of one GPU that no flag asked for is a plan nobody meant: say so, never compare
        // strategies "on 1 GPU" silently.
        if args.gpus.is_none() && !sized && request.strategy != StrategySelection::One(StrategyKind::Reference) {
            return Err(ConfigError(format!(
                "--gpus: no flag says how many GPUs to plan {} on; give --gpus N (or the strategy's sizes: --tp, --pp, --ring, --ulysses, --cp)",
                request.strategy.name()
            )));
        }
        // The headline (JSON tps_projected) is 8-GPU nodes; beside it, one NVLink domain of the
        // whole job (at least the seed's 16).
        let sizes = match args.hardware.gpus_per_node {
            Some(g) => vec![g],
            None => vec![8, world.max(16)],
        };
        let hw = args.hardware.calibrated(sizes[0])?;
        // The double ring's window is a node, where --gpus-per-node says what one is (a search of
        // every split tries every window instead).
        let searching = request.strategy == StrategySelection::All && !sized;
        let request = match args.hardware.gpus_per_node {
            Some(g) if !searching => request.window_of_node(g, world),
            _ => request,
        };
        // `all` plans every strategy that validates and says why the others do not; one named
        // strategy that does not validate is bad input. Without size flags, `all` searches each
        // strategy's splits of the world, as the sweep does, and keeps each one's fastest that fits.
        let (cfgs, refused) = if request.strategy == StrategySelection::All && !sized {
            searched(&request, world, &hw)?
        } else if request.strategy == StrategySelection::All {
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

/// Each strategy's fastest split of `world` GPUs that fits the profile's GPU (else its fastest),
/// from the sweep's own grid of splits at this one point, so `plan` and `sweep` agree; the
/// strategies with no valid split, with the first reason.
#[allow(clippy::type_complexity)]
fn searched(
    request: &RunRequest,
    world: usize,
    hw: &crate::plan::Hardware,
) -> Result<(Vec<RunConfig>, Vec<(String, String)>), ConfigError> {
    let seq = request.seq_len.unwrap_or(request.preset.values().model.seq_len);
    let grid = crate::sweep::SweepGrid {
        request: RunRequest { seq_len: None, ..request.clone() },
        seq_lens: vec![seq],
        worlds: vec![world],
        kv_heads_list: Vec::new(),
    };
    let cfgs = crate::sweep::grid(&grid)?;
    // On the headline's nodes (`hw.gpus_per_node`), as the sweep ranks its points.
    let points = crate::sweep::evaluate(&cfgs, hw, &mut || {});
    let mut best = Vec::new();
    let mut refused = Vec::new();
    for kind in StrategySelection::All.strategies() {
        let mine: Vec<&crate::sweep::Point> = points.iter().filter(|p| p.cfg.strategy == kind).collect();
        let pick = mine
            .iter()
            .filter(|p| p.fits)
            .max_by(|a, b| a.tps.total_cmp(&b.tps))
            .or_else(|| mine.iter().max_by(|a, b| a.tps.total_cmp(&b.tps)));
        match pick {
            Some(p) => best.push(p.cfg.clone()),
            None => {
                let one = RunRequest { strategy: StrategySelection::One(kind), ..request.clone() };
                let why = match one.resolve(world) {
                    Err(e) => e.to_string(),
                    Ok(_) => "no split of this world in two dimensions".to_string(),
                };
                refused.push((kind.name().to_string(), why));
            }
        }
    }
    if best.is_empty() {
        let why: Vec<String> = refused.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        return Err(ConfigError(format!("--strategy all: no strategy has a split of {world} GPUs ({})", why.join("; "))));
    }
    Ok((best, refused))
}
