//! What `reduce` makes of a run's decode steps (docs/design.md, "Decode"), by the serving
//! benchmarks' definitions: the job's step is its slowest rank's, each step one inter-token
//! latency (ITL); TPOT is a request's mean step time, (end-to-end - TTFT) / N; decode tokens/s =
//! batch / TPOT, and 1 / TPOT per user.

use super::rankfile::RankRun;
use super::summary::{mean, DecodeMeasured};
use crate::metrics::{quantile, Stats};

/// The decode figures of the first `n` measured iterations (which every rank completed); None
/// for a run without decode steps.
pub(super) fn measured(ranks: &[&RankRun], n: usize) -> Option<DecodeMeasured> {
    let first = ranks[0];
    let (steps, batch) = (first.config.decode_tokens, first.config.model.batch);
    if steps == 0 || n == 0 || ranks.iter().any(|r| r.decode.len() < n) {
        return None;
    }
    let job_step = |i: usize, j: usize| ranks.iter().map(|r| r.decode[i].step_s[j]).fold(0.0, f64::max);
    let all: Vec<f64> = (0..n).flat_map(|i| (0..steps).map(move |j| (i, j))).map(|(i, j)| job_step(i, j)).collect();
    let per_request: Vec<f64> = all.chunks(steps).map(|c| c.iter().sum::<f64>() / steps as f64).collect();
    let tpot = Stats::of(&per_request)?;
    let q = |p| quantile(&all, p).unwrap_or(f64::NAN);
    let comm: Vec<f64> = ranks.iter().map(|r| mean(r.decode[..n].iter().flat_map(|d| d.comm_s.iter().copied()))).collect();
    let sent = ranks.iter().map(|r| mean(r.decode[..n].iter().map(|d| d.bytes_sent as f64)) / steps as f64).fold(0.0, f64::max);
    let cache: Vec<f64> = ranks.iter().filter_map(|r| r.kv_cache_bytes).map(|b| b as f64).collect();
    Some(DecodeMeasured {
        steps,
        itl: (q(0.5), q(0.9), q(0.99)),
        tokens_per_s: batch as f64 / tpot.mean,
        tokens_per_s_per_user: 1.0 / tpot.mean,
        tpot,
        comm_s: (comm.iter().cloned().fold(0.0, f64::max), mean(comm.iter().cloned())),
        sent_per_step_max: sent,
        kv_cache: (cache.iter().cloned().fold(0.0, f64::max), mean(cache.iter().cloned())),
    })
}
