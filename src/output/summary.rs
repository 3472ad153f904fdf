//! What `reduce` makes of a run's rank files: a strategy run's summary and its measured figures,
//! as the tables, the console and the sweep read them.

use super::rankfile::RankRun;
use super::status::RunStatus;
use crate::config::RunConfig;
use crate::metrics::Stats;

/// One strategy run, reduced over its ranks.
#[derive(Clone, Debug)]
pub struct StrategySummary {
    pub config: RunConfig,
    pub first: RankRun,
    /// Complete; Incomplete if any rank was interrupted; Running if a rank's process is still at
    /// it (a look with --partial); Partial if rank files are missing; Invalid if the result is
    /// physically impossible (`invalid_reason` says why).
    pub status: RunStatus,
    pub invalid_reason: Option<String>,
    /// None when no iteration was measured (interrupted during warm-up).
    pub measured: Option<Measured>,
}

#[derive(Clone, Debug)]
pub struct Measured {
    /// Job iteration time in seconds (slowest rank per iteration).
    pub iter: Stats,
    pub tps: f64,
    /// None where the iteration time's interval is missing or reaches zero (no upper bound).
    pub tps_ci95: Option<(f64, f64)>,
    pub prefill_s_per_token: f64,
    /// Per-rank mean communication / compute seconds per iteration: max and mean over ranks.
    pub comm_s: (f64, f64),
    /// Per-rank mean communication hidden under compute per iteration: max and mean over ranks.
    pub hidden_s: (f64, f64),
    /// Of all communication time (exposed + hidden, summed over ranks), the part hidden; None
    /// when there was no communication.
    pub hidden_fraction: Option<f64>,
    pub compute_s: (f64, f64),
    /// Bytes a rank sends per iteration, the most of any rank.
    pub sent_per_iter_max: f64,
    /// Backend buffers' high-water mark: max and mean over ranks, bytes.
    pub peak_buffers: (f64, f64),
    /// Device (CPU: process resident) peak, max over ranks, where reported.
    pub peak_device_max: Option<f64>,
    pub tflops_per_gpu: f64,
    pub mfu: Option<f64>,
    /// NVML's GPU utilization in percent: mean of the ranks' means, max of their maxima (where sampled).
    pub gpu_util: Option<(f64, f64)>,
    /// With a known device peak: the busiest rank's FLOPs at peak (the plan's compute floor), and
    /// floor / measured iteration time.
    pub compute_floor_s: Option<f64>,
    pub efficiency_vs_floor: Option<f64>,
    /// The decode steps, with --decode-tokens (then `iter` is the prefill: the time to first token).
    pub decode: Option<DecodeMeasured>,
    /// The phases of a training step, with --train (then `iter` is the whole step).
    pub train: Option<TrainMeasured>,
}

/// A training step's phases (`output::train` computes them): per-rank means over the measured
/// iterations, the max over ranks, seconds; and the gradient all-reduce's bytes as the
/// strategy states them (a rank's send per step, the most of any rank).
#[derive(Clone, Debug)]
pub struct TrainMeasured {
    pub forward_s: f64,
    pub backward_s: f64,
    pub grad_reduce_s: f64,
    pub grad_reduce_bytes: f64,
    /// Of each phase (forward, backward, gradient reduction), the communication not hidden and
    /// hidden: the slowest rank's mean, seconds.
    pub comm_s: [f64; 3],
    pub hidden_s: [f64; 3],
}

/// A run's decode steps (`output::decode` computes them), reduced over its ranks and measured iterations.
#[derive(Clone, Debug)]
pub struct DecodeMeasured {
    /// Decode steps per iteration.
    pub steps: usize,
    /// TPOT in seconds: one value per measured iteration (each a batch of requests), the mean of
    /// its job steps.
    pub tpot: Stats,
    /// Inter-token latency percentiles (p50, p90, p99) over every measured job step, seconds.
    pub itl: (f64, f64, f64),
    pub tokens_per_s: f64,
    pub tokens_per_s_per_user: f64,
    /// Per-rank mean communication not hidden per step: max and mean over ranks, seconds.
    pub comm_s: (f64, f64),
    /// Bytes a rank sends per step, the most of any rank.
    pub sent_per_step_max: f64,
    /// K/V cache bytes per rank at its full length: max and mean over ranks.
    pub kv_cache: (f64, f64),
}

pub(super) fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}
