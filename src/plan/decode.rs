//! The decode projection (docs/design.md, "Decode"): a decode step reads every weight of the rank
//! and its share of the K/V cache once, so its time is bounded below by those bytes over the HBM
//! bandwidth, and the step waits for its small collectives, each a call's latency plus its bytes
//! over its link. TPOT = (bytes / bandwidth + collectives) per layer call, times the calls of a
//! step; MBU (the decode analogue of MFU) = bytes per step / (TPOT x bandwidth).

use super::hardware::Hardware;
use crate::config::RunConfig;
use crate::strategy::{decode_placement, decode_traffic, memory_estimate, Op, ProjectionInput};
use serde::Serialize;

/// The busiest rank's decode on one placement of the ranks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodePlan {
    pub steps: usize,
    /// Bytes one step reads from HBM on the busiest rank: its weights once per layer call
    /// (tp-pp's micro-batches each read them) and its K/V cache at the steps' mean length.
    pub weight_bytes_per_step: f64,
    pub cache_bytes_per_step: f64,
    /// The bound: those bytes at the full HBM bandwidth, nothing else. A measured TPOT below it
    /// is impossible.
    pub tpot_floor_s: f64,
    /// The step's collectives (latency and bytes of each call, exposed), and the pipeline's fill.
    pub collectives_s: f64,
    pub tpot_s: f64,
    pub tokens_per_s: f64,
    pub tokens_per_s_per_user: f64,
    /// Bandwidth utilization: bytes per step / (TPOT x HBM bandwidth).
    pub mbu: f64,
    /// The busiest rank's cache at its full length.
    pub kv_cache_bytes: f64,
    /// The largest batch whose weights and cache fit one GPU of the profile (0: not even one
    /// sequence).
    pub max_batch: usize,
    /// Every kind of message of a step on the busiest rank, as its strategy's decode states it:
    /// (kind, what, bytes sent per step, calls per step).
    pub traffic: Vec<(String, String, f64, f64)>,
}

/// The decode of `cfg` (with its decode tokens) on `hw` with nodes of `gpus_per_node`.
pub fn project(cfg: &RunConfig, hw: &Hardware, gpus_per_node: usize) -> DecodePlan {
    let world = cfg.world();
    let steps = cfg.decode_tokens.max(1);
    let per_rank: Vec<DecodePlan> = ranks(world).into_iter().map(|r| rank(cfg, hw, gpus_per_node, r, steps)).collect();
    let mut busiest = per_rank.iter().max_by(|a, b| a.tpot_s.total_cmp(&b.tpot_s)).cloned().expect("at least one rank");
    busiest.max_batch = max_batch(cfg, hw);
    busiest
}

/// The least time a decode step of `cfg` can take on `hw`: the busiest rank's bytes per step (its
/// weights per layer call and its cache at the steps' mean length) at the full HBM bandwidth.
/// A measured TPOT below it is a timing bug (`reduce` marks the run invalid).
pub fn tpot_floor(cfg: &RunConfig, hw: &Hardware) -> f64 {
    let steps = cfg.decode_tokens.max(1);
    ranks(cfg.world()).into_iter().map(|r| rank(cfg, hw, hw.gpus_per_node, r, steps).tpot_floor_s).fold(0.0, f64::max)
}

/// The ranks whose decode is projected: all of a job of up to 64, else the first, the middle and
/// the last (ranks differ only by their stage, their share of the appends and their owners,
/// which these span), so a sweep of large worlds stays quick.
fn ranks(world: usize) -> Vec<usize> {
    if world <= 64 {
        (0..world).collect()
    } else {
        vec![0, world / 2, world - 1]
    }
}

fn rank(cfg: &RunConfig, hw: &Hardware, gpus_per_node: usize, r: usize, steps: usize) -> DecodePlan {
    let p = decode_placement(cfg, r);
    let weights = memory_estimate(&RunConfig { decode_tokens: 0, ..cfg.clone() }, r, false).weights as f64;
    let calls = p.seqs.len().div_ceil(p.rows_per_call.max(1)).max(1) as f64;
    let full = p.cache.bytes() as f64;
    // Mean length over the steps: the prompt and half of what this rank appends.
    let cap = p.cache.capacity().max(1) as f64;
    let mean_cache = full * (p.cache.prompt as f64 + p.cache.slots as f64 / 2.0) / cap;
    let (weight_bytes, cache_bytes) = (weights * calls, mean_cache);
    let traffic = decode_traffic(cfg, r);
    let input = ProjectionInput {
        rank: r,
        traffic: &traffic,
        attention_per_layer_mb_s: 0.0,
        compute_s: 0.0,
        gpus_per_node,
        nvlink_bytes_per_s: hw.nvlink_bytes_per_s,
        ib_bytes_per_s: hw.ib_bytes_per_s,
        // A decode step's messages are small: NCCL's LL protocol's latencies.
        call_latency_s: hw.small_call_latency_s,
        nvlink_hop_latency_s: hw.small_nvlink_hop_latency_s,
        ib_hop_latency_s: hw.small_ib_hop_latency_s,
    };
    // Every call of a step waits for its collectives (a token's work is too small to hide them);
    // a pipeline hand-off is counted once, at its sender.
    let per_step = |t: &crate::strategy::Transfer| input.seconds(t) * t.calls as f64 / steps as f64;
    let collectives: f64 = traffic.iter().filter(|t| t.op != Op::PipelineRecv).map(per_step).sum();
    let floor = (weight_bytes + cache_bytes) / hw.hbm_bytes_per_s;
    // A pipeline of `pp` stages passes each of its `calls` micro-batches through every stage:
    // (calls + pp - 1) stage slots of one call's time.
    let pp = cfg.split.pp() as f64;
    let slots = (calls + pp - 1.0) / calls;
    let tpot = (floor + collectives) * slots;
    let batch = cfg.model.batch as f64;
    DecodePlan {
        steps: cfg.decode_tokens,
        weight_bytes_per_step: weight_bytes,
        cache_bytes_per_step: cache_bytes,
        tpot_floor_s: floor,
        collectives_s: collectives * slots + floor * (slots - 1.0),
        tpot_s: tpot,
        tokens_per_s: batch / tpot,
        tokens_per_s_per_user: 1.0 / tpot,
        mbu: (weight_bytes + cache_bytes) / (tpot * hw.hbm_bytes_per_s),
        kv_cache_bytes: full,
        max_batch: 0,
        traffic: traffic.iter().fold(Vec::new(), |mut out: Vec<(String, String, f64, f64)>, t| {
            let (sent, calls) = ((t.sent * t.calls) as f64 / steps as f64, t.calls as f64 / steps as f64);
            match out.iter_mut().find(|(op, what, _, _)| op == t.op.name() && what == t.what) {
                Some(line) => (line.2, line.3) = (line.2 + sent, line.3 + calls),
                None => out.push((t.op.name().to_string(), t.what.to_string(), sent, calls)),
            }
            out
        }),
    }
}

/// The largest batch (up to 2^20 sequences) whose every rank's buffers, cache included, fit one
/// GPU of `hw`, found by bisection on the memory estimate (which grows with the batch).
fn max_batch(cfg: &RunConfig, hw: &Hardware) -> usize {
    let fits = |b: usize| {
        let c = RunConfig { model: crate::config::ModelConfig { batch: b, ..cfg.model }, micro_batch: 1, ..cfg.clone() };
        // As the plan counts a rank's memory: weights, activations and cache (the CPU backend's
        // transient scratch is no GPU's).
        ranks(c.world()).into_iter().all(|r| {
            let e = memory_estimate(&c, r, false);
            (e.weights + e.activations + e.kv_cache) as f64 <= hw.memory_bytes
        })
    };
    if !fits(1) {
        return 0;
    }
    let (mut lo, mut hi) = (1usize, 2usize);
    while hi <= 1 << 20 && fits(hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
