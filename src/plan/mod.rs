//! The analytic model: from a config and a hardware profile, without running anything, what each
//! rank holds, computes and sends, what the hardware allows (the physical bound), and what a run
//! should show (the projection). Bandwidths are per direction; a link's time is bytes / bandwidth.
//!
//! Projection, per iteration on the busiest rank:
//! - compute: linear FLOPs at peak x GEMM efficiency, attention FLOPs at peak x attention
//!   efficiency, plus the element-wise passes (norms, RoPE, GELU, residuals) at HBM bandwidth;
//! - ring: each of the P - 1 transfers of a layer runs under that step's attention; only what
//!   exceeds it is exposed (`ring_hidden_fraction` says how much is hidden);
//! - tp-pp: the two all-reduces per layer are exposed (2 (tp-1)/tp of the buffer each way, at the
//!   TP group's link); the pipeline runs fill-drain, (micro-batches + pp - 1) stage slots, plus the
//!   activation hand-offs of the fill.

use crate::config::{RunConfig, StrategyKind};
use crate::metrics::flops::{self, linear_per_token_layer};
use crate::strategy::{memory_estimate, Op, ProjectionInput};
use serde::Serialize;

pub mod decode;
pub mod hardware;
pub mod rates;
pub mod render;
pub mod train;

pub use hardware::{Hardware, Profile};

/// Memory of the busiest rank, bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub weights: f64,
    /// Hidden states of one micro-batch on this rank.
    pub activations_per_micro_batch: f64,
    /// The K/V blocks: the local one and, for the ring, the second buffer of the next step.
    pub kv_buffers: f64,
    /// One pipeline hand-off per micro-batch (0 without a pipeline). It is received into the
    /// activations buffer itself, so it is not added to the total.
    pub pipeline_buffers: f64,
    /// Every other activation buffer of a layer (norm, Q, attention output and FP32 accumulators,
    /// projections, MLP), and of decode but its cache.
    pub workspace: f64,
    /// The decode K/V cache at its full length (0 without --decode-tokens).
    pub kv_cache: f64,
    pub total: f64,
    pub capacity: f64,
    pub fits: bool,
}

/// How long an iteration takes on one placement of the ranks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Projection {
    pub gpus_per_node: usize,
    pub nodes: usize,
    /// The link the strategy's heaviest traffic crosses: "nvlink" or "ib".
    pub link: String,
    pub link_bytes_per_s: f64,
    pub compute_s: f64,
    /// Of the transfers that run under compute (the ring's), the fraction hidden; None where the
    /// strategy overlaps none (its communication is all exposed).
    pub hidden_fraction: Option<f64>,
    /// The strategy's own per-call figures, seconds ("ring step transfer", "one all-reduce", ...).
    pub details: Vec<(String, f64)>,
    /// Communication not hidden under compute: ring transfers beyond their step's attention,
    /// all-reduces, all-gathers and all-to-alls, the pipeline's fill hand-offs.
    pub exposed_comm_s: f64,
    /// Idle stage slots of the fill-drain pipeline.
    pub pipeline_bubble_s: f64,
    pub iteration_s: f64,
    pub tps_projected: f64,
    pub prefill_s_per_token: f64,
    /// Time to first token: the iteration time of one sequence alone (batch and micro-batch 1),
    /// the prefill latency a user waits for.
    pub ttft_s: f64,
    /// With --train: the step's phases (then `iteration_s` is the whole step).
    pub train: Option<train::TrainProjection>,
}

impl Projection {
    /// The strategy's figure named `label`, if it states one.
    pub fn detail(&self, label: &str) -> Option<f64> {
        self.details.iter().find(|(l, _)| l == label).map(|(_, v)| *v)
    }
}

/// One kind of message of the busiest rank, per iteration and per layer and sequence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrafficLine {
    pub op: String,
    pub what: String,
    pub sent_per_iter: f64,
    pub received_per_iter: f64,
    /// Divided by the layers the rank runs and the sequences of the batch (a pipeline hand-off:
    /// by the sequences alone).
    pub sent_per_layer_sequence: f64,
    pub received_per_layer_sequence: f64,
    /// What `*_per_layer_sequence` is per: "layer and sequence", "sequence" (a pipeline's
    /// hand-offs) or "layer" (a training step's gradient all-reduce, once per step).
    pub per: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub strategy: String,
    pub world: usize,
    pub hardware: Hardware,
    pub params: f64,
    pub linear_flops_per_token: f64,
    pub attention_flops_per_token: f64,
    /// The busiest rank's FLOPs per iteration.
    pub rank_linear_flops: f64,
    pub rank_attention_flops: f64,
    /// K/V block one ring step moves per sequence (0 for tp-pp).
    pub ring_step_bytes: f64,
    /// One TP all-reduce's buffer, per sequence (0 without TP).
    pub allreduce_bytes: f64,
    /// One pipeline hand-off, per sequence (0 without PP).
    pub pipeline_bytes: f64,
    /// Bytes the busiest rank sends per iteration over each kind of traffic.
    pub ring_bytes_per_iter: f64,
    pub allreduce_bytes_per_iter: f64,
    pub pipeline_bytes_per_iter: f64,
    /// Every kind of message of the busiest rank, as its strategy states them.
    pub traffic: Vec<TrafficLine>,
    pub memory: MemoryPlan,
    pub memory_per_rank_bytes: f64,
    /// Whether the busiest rank's memory fits one GPU of the profile.
    pub fits: bool,
    /// Where it does not: the strategies and splits of the same world whose busiest rank would fit.
    pub fits_instead: Vec<String>,
    /// Every FLOP at peak on the busiest rank, nothing else.
    pub compute_floor_s: f64,
    /// The physical upper bound: every GPU at peak on the model's FLOPs, no communication.
    pub tps_bound: f64,
    /// Projection for the chosen (or default 8-GPU) node size.
    pub tps_projected: f64,
    /// Time to first token on the same placement.
    pub ttft_s: f64,
    pub projections: Vec<Projection>,
    /// With --decode-tokens: the decode steps on the headline's placement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode: Option<decode::DecodePlan>,
}

const BF16: f64 = 2.0;

/// How far a projection may be from what a run measures, as a fraction of its tokens/s: the
/// spread of the measured rates a profile's efficiencies stand for (docs/commands.md, "plan"; the H100: cuBLAS BF16
/// GEMMs of the models' shapes at 660 to 803 TFLOP/s, +-10% about their middle). Two projections
/// closer than this are a tie: the model cannot tell them apart.
pub const PROJECTION_UNCERTAINTY: f64 = 0.10;

/// Whether `b` tokens/s is within the projection's uncertainty of `a`.
pub fn within_uncertainty(a: f64, b: f64) -> bool {
    (a - b).abs() <= PROJECTION_UNCERTAINTY * a.max(b)
}

/// The plan of `cfg` on `hw` for each node size in `node_sizes` (the first is the headline), and
/// where it does not fit, the strategies and splits of its world that would.
pub fn plan(cfg: &RunConfig, hw: &Hardware, node_sizes: &[usize]) -> Plan {
    let mut p = project(cfg, hw, node_sizes);
    if !p.fits {
        p.fits_instead = fitting_strategies(cfg, hw);
    }
    p
}

/// The plan without the search for alternatives (`fits_instead` left empty): what a sweep asks
/// at each of its points.
pub fn project(cfg: &RunConfig, hw: &Hardware, node_sizes: &[usize]) -> Plan {
    let m = &cfg.model;
    let (d, f, l) = (m.d_model as f64, m.mlp as f64, m.layers as f64);
    let world = cfg.world();
    let tokens = cfg.tokens_per_iteration() as f64;
    let job = flops::job_flops(cfg);
    // The busiest rank: the one with the most FLOPs (all equal but for the contiguous ring).
    let busiest = (0..world).max_by(|&a, &b| flops::rank_flops(cfg, a).total().total_cmp(&flops::rank_flops(cfg, b).total())).unwrap_or(0);
    // The forward's compute: a training step's is three times it (`train::project`).
    let forward_cfg = RunConfig { train: false, ..cfg.clone() };
    let rf = flops::rank_flops(&forward_cfg, busiest);
    let step_flops = flops::rank_flops(cfg, busiest);
    let mb = cfg.micro_batch as f64;
    let seqs = m.batch as f64;

    let spec = crate::strategy::spec(cfg.strategy);
    let place = crate::strategy::placement(cfg, busiest);
    let transfers = (spec.traffic)(cfg, busiest);
    let layers_local = place.layers.len() as f64;
    // Per sequence: a call moves a micro-batch's worth.
    let of_op = |op: Op| transfers.iter().filter(move |t| t.op == op);
    let ring_step_bytes = of_op(Op::RingStep).map(|t| t.sent).max().unwrap_or(0) as f64 / mb;
    let allreduce_bytes = of_op(Op::AllReduce).map(|t| t.buffer_bytes).max().unwrap_or(0) as f64 / mb;
    let pipeline_bytes = of_op(Op::PipelineSend).chain(of_op(Op::PipelineRecv)).map(|t| t.buffer_bytes).max().unwrap_or(0) as f64 / mb;
    // A fold from +0: an empty f64 sum is -0.0, which JSON would print.
    let sent_by = |op: Op| of_op(op).map(|t| (t.sent * t.calls) as f64).fold(0.0, |a, b| a + b);
    let ring_bytes_per_iter = sent_by(Op::RingStep);
    let allreduce_bytes_per_iter = sent_by(Op::AllReduce);
    let pipeline_bytes_per_iter = sent_by(Op::PipelineSend);
    let mut traffic: Vec<TrafficLine> = Vec::new();
    let (backward, grads) = (crate::strategy::backward_traffic(cfg, busiest), crate::strategy::grad_traffic(cfg, busiest));
    let units = transfers.iter().chain(&backward).map(|t| (t, false)).chain(grads.iter().map(|t| (t, true)));
    for (t, gradient) in units {
        let (per, unit) = match (gradient, t.op) {
            (true, _) => (layers_local, "layer"),
            (false, Op::PipelineSend | Op::PipelineRecv) => (seqs, "sequence"),
            _ => (layers_local * seqs, "layer and sequence"),
        };
        let (sent, received) = ((t.sent * t.calls) as f64, (t.received * t.calls) as f64);
        match traffic.iter_mut().find(|l| l.op == t.op.name() && l.what == t.what) {
            Some(l) => {
                l.sent_per_iter += sent;
                l.received_per_iter += received;
                l.sent_per_layer_sequence += sent / per;
                l.received_per_layer_sequence += received / per;
            }
            None => traffic.push(TrafficLine {
                op: t.op.name().into(),
                what: t.what.into(),
                sent_per_iter: sent,
                received_per_iter: received,
                sent_per_layer_sequence: sent / per,
                received_per_layer_sequence: received / per,
                per: unit.into(),
            }),
        }
    }

    let est = memory_estimate(cfg, busiest, false);
    let buffers = (spec.buffers)(cfg, busiest);
    let rows = (cfg.micro_batch * place.tokens.len()) as f64;
    let kv_w = place.shard.heads(m).kv_width() as f64;
    let kv_buffers = BF16 * 2.0 * kv_w * ((buffers.kv_rows as f64).max(rows) + buffers.kv_in_rows as f64);
    let activations = BF16 * rows * d;
    let pipeline_buffers = if pipeline_bytes > 0.0 { activations } else { 0.0 };
    let total = (est.weights + est.activations + est.kv_cache) as f64;
    let memory = MemoryPlan {
        weights: est.weights as f64,
        activations_per_micro_batch: activations,
        kv_buffers,
        pipeline_buffers,
        workspace: est.activations as f64 - activations - kv_buffers,
        kv_cache: est.kv_cache as f64,
        // weights + activations + kv_buffers + workspace + kv_cache = total
        total,
        capacity: hw.memory_bytes,
        fits: total <= hw.memory_bytes,
    };

    // Per layer: W_qkv [d, d + 2 kv_dim], W_o [d, d], W_up [d, F] ([d, 2F] gated), W_down [F, d], two gains.
    let params = l * (d * (d + 2.0 * m.kv_dim() as f64) + d * d + d * f * m.mlp_act.up_factor() as f64 + f * d + 2.0 * d);
    let flops_per_token = job.total() / tokens;
    let compute_floor_s = step_flops.total() / hw.peak_flops;
    let tps_bound = world as f64 * hw.peak_flops / flops_per_token;

    // Element-wise passes per layer and token row: ~10 reads/writes of d-wide rows, 4 of the
    // rank's MLP columns.
    let elementwise_s = rows / mb * seqs * layers_local * (10.0 * d + 4.0 * place.shard.mlp.len() as f64) * BF16 / hw.hbm_bytes_per_s;
    // At the rates of this rank's own sizes: its GEMM shapes, its attention's waves.
    let attention_s = rf.attention / (hw.peak_flops * hw.attention_efficiency * rates::attention_wave_fraction(hw, cfg, &place));
    let compute_s = rates::linear_s(hw, cfg, &place, rf.linear) + attention_s + elementwise_s;
    let attention_per_layer_mb_s = attention_s / (layers_local * seqs / mb);

    let overlaps = transfers.iter().any(|t| t.overlapped && t.op == Op::RingStep);
    let projections = node_sizes
        .iter()
        .map(|&g| {
            let input = ProjectionInput {
                rank: busiest,
                traffic: &transfers,
                attention_per_layer_mb_s,
                compute_s,
                gpus_per_node: g,
                nvlink_bytes_per_s: hw.nvlink_bytes_per_s,
                ib_bytes_per_s: hw.ib_bytes_per_s,
                call_latency_s: hw.call_latency_s,
                nvlink_hop_latency_s: hw.nvlink_hop_latency_s,
                ib_hop_latency_s: hw.ib_hop_latency_s,
            };
            let c = (spec.project)(cfg, &input);
            let forward_s = compute_s + c.exposed_s + c.bubble_s;
            let train = cfg.train.then(|| train::project(cfg, spec, &input, forward_s, busiest));
            let iteration_s = train.as_ref().map_or(forward_s, |t| t.step_s);
            Projection {
                gpus_per_node: g,
                nodes: world.div_ceil(g),
                link: if c.crosses_nodes { "ib" } else { "nvlink" }.into(),
                link_bytes_per_s: c.link_bytes_per_s,
                compute_s,
                hidden_fraction: overlaps.then_some(c.hidden_fraction),
                details: c.details.iter().map(|(l, v)| (l.to_string(), *v)).collect(),
                exposed_comm_s: c.exposed_s,
                pipeline_bubble_s: c.bubble_s,
                iteration_s,
                tps_projected: tokens / iteration_s,
                prefill_s_per_token: iteration_s / tokens,
                ttft_s: iteration_s,
                train,
            }
        })
        .collect::<Vec<_>>();
    // One sequence alone: the same placement's iteration at batch 1.
    let mut projections = projections;
    if m.batch > 1 {
        let one = RunConfig {
            model: crate::config::ModelConfig { batch: 1, ..*m },
            micro_batch: 1,
            decode_tokens: 0,
            train: false,
            ..cfg.clone()
        };
        for (p, q) in projections.iter_mut().zip(project(&one, hw, node_sizes).projections) {
            p.ttft_s = q.iteration_s;
        }
    }

    Plan {
        strategy: cfg.strategy.name().into(),
        world,
        hardware: hw.clone(),
        params,
        linear_flops_per_token: linear_per_token_layer(cfg) * l,
        attention_flops_per_token: job.attention / tokens,
        rank_linear_flops: step_flops.linear,
        rank_attention_flops: step_flops.attention,
        ring_step_bytes,
        allreduce_bytes,
        pipeline_bytes,
        ring_bytes_per_iter,
        allreduce_bytes_per_iter,
        pipeline_bytes_per_iter,
        traffic,
        memory_per_rank_bytes: memory.total,
        fits: memory.fits,
        fits_instead: Vec::new(),
        memory,
        compute_floor_s,
        tps_bound,
        tps_projected: projections.first().map_or(0.0, |p| p.tps_projected),
        ttft_s: projections.first().map_or(0.0, |p| p.ttft_s),
        decode: (cfg.decode_tokens > 0).then(|| decode::project(cfg, hw, node_sizes.first().copied().unwrap_or(hw.gpus_per_node))),
        projections,
    }
}

/// Of the strategies and splits a job of `cfg.world()` ranks allows (each sequence-parallel one
/// over the world, every inner x outer = world of the others), those that validate and whose
/// busiest rank fits one GPU of `hw`.
pub fn fitting_strategies(cfg: &RunConfig, hw: &Hardware) -> Vec<String> {
    let world = cfg.world();
    let base = RunConfig { emulate: None, ..cfg.clone() };
    let candidates: Vec<RunConfig> = crate::strategy::SPECS
        .iter()
        .filter(|s| s.kind != StrategyKind::Reference)
        .flat_map(|s| crate::strategy::every_split(s, &base, world))
        .collect();
    candidates
        .into_iter()
        .filter(|c| crate::strategy::resolve::validate(c, world).is_ok())
        .filter(|c| {
            let busiest =
                (0..world).map(|r| memory_estimate(c, r, false)).map(|e| e.weights + e.activations + e.kv_cache).max().unwrap_or(0);
            busiest as f64 <= hw.memory_bytes
        })
        .map(|c| format!("{} {}", c.strategy.name(), c.describe_split().replace(&format!(", {}", c.layout.name()), "")))
        .collect()
}

/// The physical bound on tokens/s for a measured run on a device of known peak: every rank at peak
/// on the model's FLOPs.
pub fn tps_bound(cfg: &RunConfig, peak_flops: f64) -> f64 {
    let job = flops::job_flops(cfg);
    cfg.world() as f64 * peak_flops / (job.total() / cfg.tokens_per_iteration() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Preset, Split};

    fn paper(strategy: StrategyKind, causal: bool) -> RunConfig {
        RunConfig { causal, ..RunConfig::of_preset(Preset::Paper, strategy, 8, 2, 16) }
    }

    #[test]
    fn the_paper_preset_reproduces_the_design_facts() {
        let hw = Profile::H100Sxm.hardware();
        // Computed here from the definitions, independently of the plan's code.
        let (d, f, s, l) = (4096.0f64, 16384.0f64, 100_000.0f64, 16.0f64);
        let params = l * (3.0 * d * d + d * d + 2.0 * d * f); // W_qkv, W_o, W_up, W_down
        let linear_per_token = 2.0 * params;
        let attention_per_token = |causal: bool| l * 4.0 * s * d * if causal { 0.5 } else { 1.0 };
        let bound = |causal: bool| 16.0 * 989e12 / (linear_per_token + attention_per_token(causal));

        let ring = plan(&paper(StrategyKind::Ring, true), &hw, &[16, 8]);
        assert!((ring.params / 3.22e9 - 1.0).abs() < 1e-3 && (ring.params / params - 1.0).abs() < 1e-4, "{}", ring.params);
        assert!(
            (ring.linear_flops_per_token / 6.44e9 - 1.0).abs() < 1e-3
                && (ring.linear_flops_per_token / linear_per_token - 1.0).abs() < 1e-12
        );
        // Exact pair counting: (S + 1) / S above the "half" convention.
        assert!((ring.attention_flops_per_token / attention_per_token(true) - 1.0).abs() < 2e-5);
        assert!((ring.tps_bound / 810e3 - 1.0).abs() < 0.01 && (ring.tps_bound / bound(true) - 1.0).abs() < 1e-4, "{}", ring.tps_bound);
        assert_eq!(ring.ring_step_bytes, 6250.0 * 4096.0 * 2.0 * 2.0); // 102.4 MB
        assert_eq!(ring.ring_step_bytes, 102.4e6);
        let non_causal = plan(&paper(StrategyKind::Ring, false), &hw, &[8]);
        assert!((non_causal.tps_bound / 485e3 - 1.0).abs() < 0.01 && (non_causal.tps_bound / bound(false) - 1.0).abs() < 1e-9);

        let tp = plan(&paper(StrategyKind::TpPp, true), &hw, &[16, 8]);
        assert_eq!(tp.allreduce_bytes, 819.2e6);
        assert_eq!(tp.tps_bound, ring.tps_bound, "the bound is the model's, not the strategy's");
        // Full replication: 6.4 GB of weights per ring rank; a tp-pp rank holds 1/16 of the
        // matrices and its stage's norm gains whole.
        assert!((ring.memory.weights / (2.0 * (params + 2.0 * d * l)) - 1.0).abs() < 1e-12);
        assert!((tp.memory.weights / (2.0 * (params / 16.0 + 2.0 * d * l / 2.0)) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn projections_stay_under_the_bound_and_the_ring_slows_when_it_leaves_nvlink() {
        let hw = Profile::H100Sxm.hardware();
        for causal in [true, false] {
            for strategy in [
                StrategyKind::Ring,
                StrategyKind::TpPp,
                StrategyKind::Allgather,
                StrategyKind::Ulysses,
                StrategyKind::Usp,
                StrategyKind::TpCp,
            ] {
                let mut cfg = paper(strategy, causal);
                cfg.split = Split::of_sizes(strategy, 8, 2, if strategy == StrategyKind::Usp { 2 } else { 16 }, 8, 2, 8);
                let p = plan(&cfg, &hw, &[16, 8]);
                for pr in &p.projections {
                    assert!(pr.tps_projected < p.tps_bound, "{strategy:?}: {} >= {}", pr.tps_projected, p.tps_bound);
                    assert!(pr.iteration_s >= p.compute_floor_s);
                }
            }
        }
        let ring = plan(&paper(StrategyKind::Ring, true), &hw, &[16, 8]);
        let m = &ring.memory;
        assert_eq!(m.weights + m.activations_per_micro_batch + m.kv_buffers + m.workspace, m.total, "the parts add up");
        let (one, two) = (&ring.projections[0], &ring.projections[1]);
        assert_eq!((one.link.as_str(), two.link.as_str()), ("nvlink", "ib"));
        let step = |p: &Projection| p.detail("ring step transfer").unwrap();
        assert!(step(two) > 8.0 * step(one));
        assert!(two.tps_projected <= one.tps_projected);
        assert!(one.hidden_fraction == Some(1.0), "a 102 MB step at 450 GB/s hides under the step's attention");
    }

    /// docs/design.md's traffic for the strategies beside the ring, on the paper preset over 16 ranks,
    /// per layer and sequence: an all-gather brings in 15/16 of the sequence's K/V; Ulysses sends
    /// 15/16 of its tokens' Q, K, V and output.
    #[test]
    fn allgather_and_ulysses_move_what_design_says() {
        let hw = Profile::H100Sxm.hardware();
        let line = |p: &Plan, op: &str| {
            p.traffic
                .iter()
                .filter(|t| t.op == op)
                .fold((0.0, 0.0), |a, t| (a.0 + t.sent_per_layer_sequence, a.1 + t.received_per_layer_sequence))
        };
        let ag = plan(&paper(StrategyKind::Allgather, true), &hw, &[8]);
        assert_eq!(line(&ag, "all-gather").1, 15.0 / 16.0 * 100_000.0 * 8192.0 * 2.0);
        let ul = plan(&paper(StrategyKind::Ulysses, true), &hw, &[8]);
        assert_eq!(line(&ul, "all-to-all").0, 15.0 / 16.0 * 6250.0 * 16384.0 * 2.0);
        // Neither overlaps its collective: all of it is exposed, so on 2 nodes it costs more.
        for p in [&ag, &ul] {
            let pr = &p.projections[0];
            assert!(pr.exposed_comm_s > 0.0 && pr.link == "ib", "{}: {pr:?}", p.strategy);
        }
        // An all-gather holds the whole sequence's K/V: more than the ring's two blocks.
        let ring = plan(&paper(StrategyKind::Ring, true), &hw, &[8]);
        assert!(ag.memory.kv_buffers > 8.0 * ring.memory.kv_buffers);
    }

    fn llama(preset: Preset, strategy: StrategyKind, inner: usize, outer: usize, seq_len: usize) -> RunConfig {
        let mut cfg = RunConfig::of_preset(preset, strategy, inner, 1, outer);
        cfg.model.seq_len = seq_len;
        cfg.model.batch = 1;
        cfg.split = Split::of_sizes(strategy, inner, 1, outer, inner, outer, inner);
        cfg
    }

    /// docs/design.md's tp-cp traffic for Llama 3 405B at 131,072 tokens on TP 8 x CP 16: each step
    /// rings (S / c) x 2 x (kv_dim / t) x 2 B, one K/V head of 128 here; the weights are the TP 8
    /// shard of the whole layer stack.
    #[test]
    fn tp_cp_on_llama3_405b_moves_and_holds_what_design_says() {
        let cfg = llama(Preset::Llama3_405b, StrategyKind::TpCp, 8, 16, 131_072);
        assert_eq!(cfg.world(), 128);
        crate::strategy::resolve::validate(&cfg, 128).unwrap();
        let p = plan(&cfg, &Profile::H200Sxm.hardware(), &[8, 128]);
        assert_eq!(p.ring_step_bytes, (131_072 / 16 * 2 * (8 * 128 / 8) * 2) as f64);
        assert_eq!(p.ring_step_bytes, 4_194_304.0);
        // Per layer [16384 x 16384 + 2 x 1024] Q|K|V, [16384 x 16384] out, [16384 x 2 x 53248] gate|up,
        // [53248 x 16384] down, each split 8 ways; the two norm gains whole.
        let (d, kv, f, l) = (16384.0f64, 1024.0f64, 53248.0f64, 126.0f64);
        let shard = (d * (d + 2.0 * kv) + d * d + 2.0 * d * f + f * d) / 8.0 + 2.0 * d;
        assert_eq!(p.memory.weights, 2.0 * l * shard);
        assert!((p.memory.weights / 1e9 - 100.42).abs() < 0.01, "{} GB", p.memory.weights / 1e9);
        // It fits an H200 and not an H100; the ring's replicated 803 GB fits neither.
        assert!(p.fits);
        assert!(!plan(&cfg, &Profile::H100Sxm.hardware(), &[8]).fits);
        assert!(!plan(&llama(Preset::Llama3_405b, StrategyKind::Ring, 1, 128, 131_072), &Profile::H200Sxm.hardware(), &[8]).fits);
        // On 8-GPU nodes the TP group stays on NVLink and the ring crosses InfiniBand: the
        // all-reduce takes the same time on both placements, the ring step's bytes 9x longer, each
        // after NCCL's latency for one hop of its link.
        let (nodes, domain) = (&p.projections[0], &p.projections[1]);
        assert_eq!((nodes.link.as_str(), domain.link.as_str()), ("ib", "nvlink"));
        assert_eq!(nodes.detail("one all-reduce"), domain.detail("one all-reduce"));
        let step = |pr: &Projection| pr.detail("ring step transfer").unwrap();
        let (call, nvlink_hop, net_hop) =
            (hardware::NCCL_BASE_LATENCY_S, hardware::NCCL_NVLINK_HOP_LATENCY_S, hardware::NCCL_NET_HOP_LATENCY_S);
        assert!(((step(nodes) - call - net_hop) / (step(domain) - call - nvlink_hop) - 9.0).abs() < 1e-9);
        assert!((step(nodes) - (call + net_hop + 4_194_304.0 / 50e9)).abs() < 1e-15);
        // One sequence: time to first token is the iteration.
        assert_eq!(nodes.ttft_s, nodes.iteration_s);
    }

    /// usp on 8-GPU nodes keeps its all-to-alls inside a node and rings across; with more than one
    /// sequence, time to first token is one sequence's iteration, shorter than the batch's.
    #[test]
    fn usp_keeps_its_all_to_alls_in_the_node() {
        let hw = Profile::H100Sxm.hardware();
        let mut cfg = llama(Preset::Llama3_8b, StrategyKind::Usp, 8, 2, 131_072);
        cfg.split = Split::Usp { u: 8, r: 2 };
        cfg.model.batch = 4;
        let p = plan(&cfg, &hw, &[8, 16]);
        let a2a = |pr: &Projection| pr.detail("all-to-alls per layer").unwrap();
        assert!(a2a(&p.projections[0]) > 0.0 && a2a(&p.projections[0]) == a2a(&p.projections[1]));
        assert_eq!(p.projections[0].link, "ib");
        // The all-to-all moves 7/8 of the group's Q, K|V and output, per layer and sequence.
        let sent: f64 = p.traffic.iter().filter(|t| t.op == "all-to-all").map(|t| t.sent_per_layer_sequence).sum();
        let tokens = 131_072.0 / 16.0;
        assert_eq!(sent, 7.0 / 8.0 * tokens * 8.0 * (2.0 * 4096.0 + 2.0 * 1024.0) * 2.0 / 8.0);
        let pr = &p.projections[0];
        assert!(pr.ttft_s < pr.iteration_s / 3.0 && pr.ttft_s > 0.0, "{} vs {}", pr.ttft_s, pr.iteration_s);
    }
}
