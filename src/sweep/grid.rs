//! The sweep's grid: every strategy and split of each world, length and K/V head count that
//! validates.

use super::point::SweepGrid;
use crate::config::{ConfigError, RunConfig, RunRequest, StrategyKind, StrategySelection};
use crate::strategy::resolve::{runs_in_all, SizeFlags};

/// The largest world a plan sweep takes: its cost per point grows with the ranks.
const MAX_WORLD: usize = 1 << 16;

/// Every config of the grid that validates, in order of world, K/V heads, length, strategy and
/// inner size. Flags that fix a split (--tp, --pp, --ring, --ulysses, --cp) or the length
/// (--seq-len) are refused: the sweep sets them.
pub fn grid(args: &SweepGrid) -> Result<Vec<RunConfig>, ConfigError> {
    grid_on(args, None)
}

/// The grid on the launch's `world` (`--mode run`), or on --worlds.
pub fn grid_on(args: &SweepGrid, launch_world: Option<usize>) -> Result<Vec<RunConfig>, ConfigError> {
    let c = &args.request;
    for (flag, given) in
        [("--tp", c.tp), ("--pp", c.pp), ("--ring", c.ring), ("--ulysses", c.ulysses), ("--cp", c.cp), ("--seq-len", c.seq_len)]
    {
        if let Some(v) = given {
            return Err(ConfigError(format!(
                "{flag} {v}: a sweep tries every split of each world and every length of --seq-lens; it takes no {flag}"
            )));
        }
    }
    let worlds = match launch_world {
        Some(w) if args.worlds.is_empty() || args.worlds == [w] => vec![w],
        Some(w) => {
            return Err(ConfigError(format!(
                "--gpus {}: a measured sweep runs on the launch's world only, {w} rank{} (start one mpirun per world size)",
                args.worlds.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(","),
                if w == 1 { "" } else { "s" }
            )))
        }
        None if args.worlds.is_empty() => (3..=10).map(|e| 1 << e).collect(),
        None => args.worlds.clone(),
    };
    for (flag, list) in [("--seq-lens", &args.seq_lens), ("--gpus", &worlds), ("--kv-heads-list", &args.kv_heads_list)] {
        crate::config::require_positive(&list.iter().map(|&v| (flag, v)).collect::<Vec<_>>())?;
        if let Some((i, v)) = list.iter().enumerate().find(|(i, v)| list[..*i].contains(v)) {
            return Err(ConfigError(format!(
                "{flag}: {v} is given twice (entries {} and {})",
                list.iter().position(|x| x == v).unwrap() + 1,
                i + 1
            )));
        }
    }
    for &w in &worlds {
        crate::config::require_at_most("--gpus", w, MAX_WORLD)?;
    }
    let kv_list: Vec<Option<usize>> =
        if args.kv_heads_list.is_empty() { vec![c.kv_heads] } else { args.kv_heads_list.iter().map(|&k| Some(k)).collect() };
    let kinds: Vec<StrategyKind> = c.strategy.strategies();
    let mut out: Vec<RunConfig> = Vec::new();
    let mut first_error = None;
    for &world in &worlds {
        for &kv in &kv_list {
            for &seq in &args.seq_lens {
                for &kind in &kinds {
                    let start = out.len();
                    for inner in (1..=world).filter(|i| world % i == 0) {
                        let split = SizeFlags::split(inner, world);
                        let point = RunRequest {
                            strategy: StrategySelection::One(kind),
                            seq_len: Some(seq),
                            kv_heads: kv,
                            tp: split.tp,
                            pp: split.pp,
                            ulysses: split.ulysses,
                            window: split.window,
                            ..c.clone()
                        };
                        match point.resolve(world) {
                            Ok(cfgs) => {
                                // Under `all`, as in `run`, usp and tp-cp take two-dimensional
                                // splits only: with a size of 1 they are ring, ulysses or tp-pp,
                                // which the sweep has already.
                                let all = SizeFlags { all: true, ..Default::default() };
                                for cfg in cfgs {
                                    let counts = c.strategy != StrategySelection::All || runs_in_all(kind, &all, &Ok(cfg.clone()));
                                    if counts && !out[start..].contains(&cfg) {
                                        out.push(cfg);
                                    }
                                }
                            }
                            Err(e) => {
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        let why = first_error.map(|e| format!(" (for example: {e})")).unwrap_or_default();
        return Err(ConfigError(format!("no strategy and split of the sweep's grid validates{why}")));
    }
    Ok(out)
}
