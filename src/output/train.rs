//! What `reduce` makes of a training step's phases (docs/design.md, "Training"): each rank's
//! mean over the measured iterations of its forward, backward and gradient reduction, the
//! slowest rank's; the gradient all-reduce's bytes from the strategy's table (the traffic
//! tests hold the transports to it).

use super::rankfile::RankRun;
use super::summary::{mean, TrainMeasured};

/// The phases of the first `n` measured iterations; None for a forward-pass run.
pub(super) fn measured(ranks: &[&RankRun], n: usize) -> Option<TrainMeasured> {
    let cfg = &ranks[0].config;
    if !cfg.train || n == 0 {
        return None;
    }
    let most = |f: &dyn Fn(&crate::metrics::PhaseRecord) -> f64| {
        ranks.iter().map(|r| mean(r.iterations[..n].iter().map(|i| f(&i.phases)))).fold(0.0, f64::max)
    };
    let phase = |k: usize| most(&|p| p.seconds[k]);
    let grad_bytes = ranks
        .iter()
        .map(|r| crate::strategy::grad_traffic(cfg, r.rank).iter().map(|t| t.sent * t.calls).sum::<u64>() as f64)
        .fold(0.0, f64::max);
    Some(TrainMeasured {
        forward_s: phase(0),
        backward_s: phase(1),
        grad_reduce_s: phase(2),
        grad_reduce_bytes: grad_bytes,
        comm_s: [0, 1, 2].map(|k| most(&|p| p.comm_s[k])),
        hidden_s: [0, 1, 2].map(|k| most(&|p| p.hidden_s[k])),
    })
}
