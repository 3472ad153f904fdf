//! A strategy as a table (STYLE.md, item 1): what each rank owns, every message it sends, its
//! buffers and its projection inputs. Each strategy file fills one `Spec`; everything outside
//! `src/strategy/` reads these and never branches on the kind.

use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, StrategyKind};
use crate::model::Buffers;
use crate::model::Shard;
use crate::topology::LocalTokens;
use anyhow::Result;
use std::ops::Range;

pub use super::traffic::{Op, Transfer};

/// A strategy set up on one rank: what the harness drives.
pub trait Strategy<B: Backend, C: Communicator<B>> {
    /// One iteration: the forward pass over the whole batch. With `keep`, the final hidden states
    /// of the tokens this rank outputs (see `output_tokens`) are kept for `output`.
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()>;

    /// The kept final hidden states: [batch x tokens per sequence, d_model], sequence-major, in
    /// the order of `output_tokens`; None if this rank outputs nothing.
    fn output(&self) -> Option<&B::Act>;

    /// Decode step `step` (0-based) after a forward pass of a config with `decode_tokens`: one
    /// new token per sequence through every layer, with the cache the forward pass kept. With
    /// `keep`, its outputs are kept for `decode_output`.
    fn decode_step(&mut self, be: &B, comm: &C, step: usize, keep: bool) -> Result<()>;

    /// The kept decode outputs: [own sequences x decode tokens, d_model], sequence-major, for
    /// the sequences `decode_placement` says it reports; None if it reports none.
    fn decode_output(&self) -> Option<&B::Act>;

    /// One training step of a config with `train` (docs/design.md, "Training"): the forward over
    /// the batch keeping activations, the backward, the gradient reduction; with `keep`, the
    /// gradients are kept for `gradients`. Its phases' seconds on this rank.
    fn train_step(&mut self, be: &B, comm: &C, keep: bool) -> Result<StepPhases>;

    /// The kept gradients of the last training step with `keep`: dL/dX of the rows of
    /// `output_tokens` ([batch x tokens, d_model], sequence-major) and every layer's weight
    /// gradients (its shard, after the reduction); None before one.
    fn gradients(&self) -> Option<Gradients<'_, B>>;
}

/// What one rank owns of the model (docs/design.md, "Strategies"): the statement that FLOPs, memory,
/// the coverage test and `verify`'s assembly of outputs are derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The tokens of every sequence whose hidden states it holds between layers: the rows its
    /// linear layers, norms and MLP run on.
    pub tokens: LocalTokens,
    /// Its slice of every layer's weights (query heads, K/V heads, MLP columns).
    pub shard: Shard,
    /// The layers it runs.
    pub layers: Range<usize>,
    /// The attention it computes: the queries of these tokens, for these query heads (Ulysses:
    /// every token of the sequence for heads / P heads; everyone else: its own tokens and heads).
    pub attention_tokens: LocalTokens,
    pub attention_heads: Range<usize>,
    /// Whether it reports the final hidden states of `tokens` (each token by exactly one rank).
    pub outputs: bool,
}

/// One strategy as a table (STYLE.md, item 1): its sizes, checks, placement, traffic, buffers
/// and projection. Everything outside `src/strategy/` reads these and never branches on the kind.
pub struct Spec {
    pub kind: StrategyKind,
    /// The parallel sizes it takes, as CSV columns (tp-pp: tp, pp; ring, allgather, ulysses: sp;
    /// usp: ulysses, ring; tp-cp: tp, cp).
    pub size_names: &'static [&'static str],
    pub sizes: fn(&RunConfig) -> Vec<usize>,
    /// Sets its sizes in the config from the flags as given, with its defaults for a job of
    /// `world` ranks where a flag is absent.
    pub resolve_sizes: fn(&mut RunConfig, &SizeFlags, usize),
    /// Whether its tokens follow `--layout`.
    pub uses_layout: bool,
    /// Ranks it occupies.
    pub world: fn(&RunConfig) -> usize,
    /// Its own checks of the config on a job of `world` ranks (the model's are `resolve::validate`'s).
    pub check: fn(&RunConfig, usize) -> Result<(), ConfigError>,
    pub placement: fn(&RunConfig, usize) -> Placement,
    pub traffic: fn(&RunConfig, usize) -> Vec<Transfer>,
    pub buffers: fn(&RunConfig, usize) -> Buffers,
    /// The (color, key) of each `Communicator::split` the rank makes, in order: the emulated
    /// transport forms the same groups from them.
    pub splits: fn(&RunConfig, usize) -> Vec<(usize, usize)>,
    /// Its communication on a hardware profile, for `plan`.
    pub project: fn(&RunConfig, &ProjectionInput) -> CommProjection,
    /// What each rank does in a decode step (docs/design.md, "Decode").
    pub decode: fn(&RunConfig, usize) -> super::decode::DecodePlacement,
    /// What it adds for a training step.
    pub train: TrainSpec,
}

/// What `plan` knows when it asks a strategy for its communication time: the busiest rank, its
/// compute, and the links of one placement.
pub struct ProjectionInput<'a> {
    pub rank: usize,
    pub traffic: &'a [Transfer],
    /// The rank's attention seconds per layer and micro-batch at the profile's attention rate.
    pub attention_per_layer_mb_s: f64,
    /// The rank's compute seconds per iteration (linear, attention, element-wise).
    pub compute_s: f64,
    pub gpus_per_node: usize,
    pub nvlink_bytes_per_s: f64,
    pub ib_bytes_per_s: f64,
    /// Each call's latency before its bytes, and per step of its algorithm on each link.
    pub call_latency_s: f64,
    pub nvlink_hop_latency_s: f64,
    pub ib_hop_latency_s: f64,
}

impl ProjectionInput<'_> {
    /// The latency of one call of `t` before its bytes: the call's, and a hop's per step of its
    /// algorithm (a ring all-reduce over n ranks takes 2 (n - 1) steps, an all-gather and an
    /// all-to-all n - 1, a send one), on NVLink or, where `crosses`, the network.
    pub fn latency(&self, t: &Transfer, crosses: bool) -> f64 {
        let n = t.peers.iter().filter(|&&p| p != self.rank).count() as f64 + 1.0;
        let steps = match t.op {
            Op::AllReduce => 2.0 * (n - 1.0),
            Op::AllGather | Op::AllToAll | Op::ReduceScatter => n - 1.0,
            Op::RingStep | Op::PipelineSend | Op::PipelineRecv => 1.0,
        };
        self.call_latency_s + steps * if crosses { self.ib_hop_latency_s } else { self.nvlink_hop_latency_s }
    }

    /// The bandwidth between ranks `peers` (and this rank): NVLink inside a node, else InfiniBand.
    pub fn link(&self, peers: &[usize]) -> (bool, f64) {
        let node = self.rank / self.gpus_per_node;
        let crosses = peers.iter().any(|&p| p / self.gpus_per_node != node);
        (crosses, if crosses { self.ib_bytes_per_s } else { self.nvlink_bytes_per_s })
    }

    /// Seconds of one call of `t` on its link (the larger of its two directions), latency first.
    pub fn seconds(&self, t: &Transfer) -> f64 {
        let (crosses, bw) = self.link(&t.peers);
        self.latency(t, crosses) + t.sent.max(t.received) as f64 / bw
    }

    /// The calls of the exposed (not overlapped) transfers, in seconds per iteration.
    pub fn exposed_s(&self) -> f64 {
        self.traffic.iter().filter(|t| !t.overlapped && t.op != Op::PipelineRecv).map(|t| self.seconds(t) * t.calls as f64).sum()
    }
}

/// A strategy's communication on one placement, per iteration of the busiest rank.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommProjection {
    /// Whether its heaviest traffic leaves the node.
    pub crosses_nodes: bool,
    pub link_bytes_per_s: f64,
    /// Communication not hidden under compute.
    pub exposed_s: f64,
    /// Of the overlapped transfers, the fraction that runs under compute (1 where none).
    pub hidden_fraction: f64,
    /// Idle time of a pipeline's fill and drain.
    pub bubble_s: f64,
    /// Labelled per-call figures for the console ("ring step transfer", ...).
    pub details: Vec<(&'static str, f64)>,
}

/// The parallel-size flags as given (None where absent), for each strategy's spec to take its
/// sizes from (`strategy::Spec::resolve_sizes`), with its own defaults for the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeFlags {
    pub tp: Option<usize>,
    pub pp: Option<usize>,
    pub ring: Option<usize>,
    pub ulysses: Option<usize>,
    pub cp: Option<usize>,
    pub window: Option<usize>,
    /// Under `--strategy all`, where --tp and --ring are tp-pp's and ring's, not the 2-D ones'.
    pub all: bool,
}

impl SizeFlags {
    /// The split of a `world`-rank job with inner size `inner`, as each strategy names it (tp x
    /// pp, ulysses x ring, tp x cp, window x windows); the outer size follows, and a strategy
    /// without an inner size (ring, allgather, ulysses) takes the world.
    pub fn split(inner: usize, world: usize) -> Self {
        SizeFlags { tp: Some(inner), pp: Some(world / inner), ulysses: Some(inner), window: Some(inner), ..Default::default() }
    }
}

/// What a strategy adds for a training step.
pub struct TrainSpec {
    /// The world ranks whose weight gradients rank `rank`'s are summed with, itself included:
    /// those that hold the same weights (or the same shard) and saw other tokens.
    pub grad_peers: fn(&RunConfig, usize) -> Vec<usize>,
    /// Every message of its backward pass (its forward's are `Spec::traffic`), the gradient
    /// all-reduce apart (`grad_traffic`).
    pub backward_traffic: fn(&RunConfig, usize) -> Vec<Transfer>,
    /// The world ranks whose W_kv gradient is a part of the same K/V heads' as `rank`'s (itself
    /// included): tensor parallelism over more ranks than K/V heads copies each head to several,
    /// and each computes only its query heads' share. [rank] where nothing is copied.
    pub kv_replicas: fn(&RunConfig, usize) -> Vec<usize>,
    /// Rows of the FP32 dK|dV accumulator its attention backward fills (its own rows, the
    /// longest ring block, the whole gathered sequence).
    pub dkv_rows: fn(&RunConfig, usize) -> usize,
    /// Bytes of its own training buffers beyond the `Trainer`'s (the ring's travelling dK|dV).
    pub extra_bytes: fn(&RunConfig, usize) -> u64,
    /// Whether it runs every micro-batch's forward before the first backward (a pipeline's
    /// fill-drain schedule, GPipe's), so keeps the activations of all of them.
    pub pipelined: bool,
}

/// Seconds of each phase of one training step on this rank, by the host's clock after the
/// device has finished the phase's work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepPhases {
    pub forward_s: f64,
    pub backward_s: f64,
    pub grad_reduce_s: f64,
    /// Of each phase (forward, backward, gradient reduction), the communication not hidden
    /// under compute and the communication hidden, as the metered transport saw it.
    pub comm_s: [f64; 3],
    pub hidden_s: [f64; 3],
}

impl StepPhases {
    /// Phase `k`'s communication since the last take (the metered transport's; none elsewhere).
    pub fn take_comm<B: Backend, C: Communicator<B>>(&mut self, comm: &C, k: usize) -> Result<()> {
        if let Some((exposed, hidden)) = comm.take_phase_times()? {
            self.comm_s[k] += exposed;
            self.hidden_s[k] += hidden;
        }
        Ok(())
    }
}

/// A rank's kept gradients (`Strategy::gradients`).
pub struct Gradients<'a, B: Backend> {
    pub input: Option<&'a B::Act>,
    pub layers: &'a [crate::model::backward::LayerGrads<B>],
}
