//! A training step's projection (docs/design.md, "Training"): the forward as a prefill's, the
//! backward as its mirror at twice its compute (every K/V step, all-reduce, all-to-all and
//! pipeline hand-off again, hidden or exposed as the forward's, under twice the attention), plus
//! what only the backward moves (the ring's FP32 dK/dV accumulators, all-gather's
//! reduce-scatter: exposed), and the gradient all-reduce: each layer's started once the last
//! micro-batch's backward of that layer is done, under the backward of the layers before it (as
//! the CUDA backend runs it over NCCL), so that only what outlasts the backward is exposed; the
//! copied K/V heads' W_kv all-reduce after it, exposed.

use crate::config::RunConfig;
use crate::strategy::{Op, ProjectionInput, Spec, Transfer};
use serde::Serialize;

/// One training step on a placement, seconds of the busiest rank.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainProjection {
    pub forward_s: f64,
    pub backward_s: f64,
    pub grad_reduce_s: f64,
    pub step_s: f64,
    /// The gradient all-reduce's bytes a rank sends per step.
    pub grad_bytes: f64,
}

/// The backward's transfers that have no twin in the forward: the gradient messages of a ring
/// (sent after each step's attention) and the reduce-scatter of gathered K/V's gradients.
fn backward_only(t: &Transfer) -> bool {
    t.op == Op::ReduceScatter || (t.op == Op::RingStep && !t.overlapped)
}

/// The step of `cfg` (a training config) on the placement `forward` describes, whose forward
/// takes `forward_s`; `rank` is the busiest rank.
pub fn project(cfg: &RunConfig, spec: &Spec, forward: &ProjectionInput, forward_s: f64, rank: usize) -> TrainProjection {
    let mirror = ProjectionInput {
        attention_per_layer_mb_s: 2.0 * forward.attention_per_layer_mb_s,
        compute_s: 2.0 * forward.compute_s,
        ..*forward
    };
    let c = (spec.project)(cfg, &mirror);
    let seconds = |ts: &[Transfer], keep: &dyn Fn(&Transfer) -> bool| -> f64 {
        ts.iter().filter(|t| keep(t)).map(|t| forward.seconds(t) * t.calls as f64).sum()
    };
    let extra_s = seconds(&crate::strategy::backward_traffic(cfg, rank), &backward_only);
    // Recomputing, each layer's forward runs again inside the backward.
    let recomputed_s = if cfg.recompute { forward_s } else { 0.0 };
    let backward_s = mirror.compute_s + c.exposed_s + c.bubble_s + extra_s + recomputed_s;
    let grad = crate::strategy::grad_traffic(cfg, rank);
    let layers = grad.iter().filter(|t| t.overlapped).map(|t| t.calls).max().unwrap_or(0) as usize;
    let per_layer_backward_s = backward_s / (cfg.micro_batches() * layers.max(1)) as f64;
    let grad_reduce_s =
        seconds(&grad, &|t| !t.overlapped) + overlapped_tail(seconds(&grad, &|t| t.overlapped), layers, per_layer_backward_s);
    TrainProjection {
        forward_s,
        backward_s,
        grad_reduce_s,
        step_s: forward_s + backward_s + grad_reduce_s,
        grad_bytes: grad.iter().map(|t| (t.sent * t.calls) as f64).sum(),
    }
}

/// What of `total` seconds of gradient all-reduces over `layers` layers outlasts the backward:
/// each layer's (total / layers) starts when its backward is done, `per_layer_backward_s` after
/// the one before, and they run one after another on their stream; the step waits for the last,
/// which starts with the first layer's backward done.
fn overlapped_tail(total: f64, layers: usize, per_layer_backward_s: f64) -> f64 {
    if layers == 0 {
        return 0.0;
    }
    let (a, n) = (total / layers as f64, layers as f64);
    a.max(n * a - (n - 1.0) * per_layer_backward_s)
}

#[cfg(test)]
mod tests {
    use crate::config::{Preset, RunConfig, StrategyKind};
    use crate::plan::{project, Profile};

    #[test]
    fn the_gradient_all_reduce_is_exposed_only_where_it_outlasts_the_backward() {
        // 4 layers, 1 s of all-reduce each: under 2 s of backward per layer only the last one's
        // second is left; under 0.5 s, the queue runs 4 - 3 x 0.5 = 2.5 s past the backward.
        assert_eq!(super::overlapped_tail(4.0, 4, 2.0), 1.0);
        assert_eq!(super::overlapped_tail(4.0, 4, 0.5), 2.5);
        assert_eq!(super::overlapped_tail(0.0, 0, 1.0), 0.0);
    }

    /// The paper's model (16 layers, d 4096, MLP 16384, MHA, GELU) on 16 H100s: the step is its
    /// forward (the prefill's projection, unchanged) plus a backward of at least twice its
    /// compute plus the gradient all-reduce; ring all-reduces every weight in FP32 over its 16
    /// ranks, 2 x 15 / 16 of it, tp-pp nothing; a training step holds more than a prefill.
    #[test]
    fn a_training_step_is_its_forward_its_mirror_and_the_gradient_all_reduce() {
        let hw = Profile::H100Sxm.hardware();
        // Per layer: W_qkv 4096 x 12288, W_o 4096 x 4096, W_up and W_down 4096 x 16384, two gains.
        let (d, f) = (4096.0f64, 16384.0f64);
        let weights = 16.0 * (d * 3.0 * d + d * d + 2.0 * d * f + 2.0 * d);
        for (strategy, grad_bytes) in [(StrategyKind::Ring, 4.0 * weights * 2.0 * 15.0 / 16.0), (StrategyKind::TpPp, 0.0)] {
            let prefill = RunConfig::of_preset(Preset::Paper, strategy, 8, 2, 16);
            let train = RunConfig { train: true, ..prefill.clone() };
            let (p, t) = (project(&prefill, &hw, &[8]), project(&train, &hw, &[8]));
            let step = t.projections[0].train.clone().expect("a training projection");
            assert_eq!(step.forward_s, p.projections[0].iteration_s, "{strategy:?}");
            assert!(step.backward_s >= 2.0 * p.projections[0].compute_s, "{strategy:?}: {step:?}");
            assert!((step.step_s - (step.forward_s + step.backward_s + step.grad_reduce_s)).abs() < 1e-12);
            assert_eq!(t.projections[0].iteration_s, step.step_s);
            assert!(
                (step.grad_bytes - grad_bytes).abs() <= 1e-9 * grad_bytes.max(1.0),
                "{strategy:?}: {} vs {grad_bytes}",
                step.grad_bytes
            );
            assert!(t.memory.total > p.memory.total, "{strategy:?}: kept activations and gradients");
            assert!((t.rank_linear_flops - 3.0 * p.rank_linear_flops).abs() < 1e-6 * t.rank_linear_flops);
        }
    }
}
