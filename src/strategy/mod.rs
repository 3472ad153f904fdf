//! The parallel strategies behind one interface. A strategy owns its weights and buffers, drives
//! the model layer by layer over micro-batches, and talks to other ranks only through a
//! `Communicator`. The harness (timing, verification) is the same for all of them.

pub mod reference;
pub mod ring;
pub mod tp_pp;

use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{MlpAct, RunConfig, StrategyKind};
use crate::model::{generate_input, layer_forward, Batch, LayerWeights, Shard, Workspace};
use crate::topology::{self, LocalTokens, TpPpCoord};
use anyhow::Result;

pub trait Strategy<B: Backend, C: Communicator<B>> {
    /// One iteration: the forward pass over the whole batch. With `keep`, the final hidden states
    /// of the tokens this rank outputs (see `output_tokens`) are kept for `output`.
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()>;

    /// The kept final hidden states: [batch x tokens per sequence, d_model], sequence-major, in
    /// the order of `output_tokens`; None if this rank outputs nothing.
    fn output(&self) -> Option<&B::Act>;
}

/// Bytes (sent, received) that `rank` of the strategy moves per iteration, as `comm::metered`
/// counts them: each strategy states its own traffic beside its forward pass.
pub fn traffic(cfg: &RunConfig, rank: usize) -> (u64, u64) {
    match cfg.strategy {
        StrategyKind::Reference => (0, 0),
        StrategyKind::TpPp => tp_pp::traffic(cfg, rank),
        StrategyKind::Ring => ring::traffic(cfg, rank),
    }
}

/// Which tokens of every sequence `rank` ends up holding final hidden states for; None for ranks
/// that hold none (every tp-pp rank but the last stage's first TP rank). Pure, so rank 0 can place
/// every rank's rows without asking.
pub fn output_tokens(cfg: &RunConfig, rank: usize) -> Option<LocalTokens> {
    let whole = LocalTokens::whole(cfg.model.seq_len);
    match cfg.strategy {
        StrategyKind::Reference => (rank == 0).then_some(whole),
        StrategyKind::TpPp => (rank == topology::tp_pp_rank(TpPpCoord { stage: cfg.pp - 1, tp_rank: 0 }, cfg.tp)).then_some(whole),
        StrategyKind::Ring => Some(topology::ring_tokens(cfg.layout, cfg.model.seq_len, cfg.ring, rank)),
    }
}

/// Host or device memory one rank of a strategy needs, from the config alone. `weights` and
/// `activations` are exactly the backend buffers a strategy allocates (tested against the measured
/// high-water mark); `scratch` bounds the CPU backend's transient FP32 copies inside operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub activations: u64,
    pub scratch: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.scratch
    }
}

/// The shard of each layer `rank` holds: all of it, or its tensor-parallel slice.
pub fn rank_shard(cfg: &RunConfig, rank: usize) -> Shard {
    match cfg.strategy {
        StrategyKind::TpPp => Shard::tensor_parallel(&cfg.model, cfg.tp, topology::tp_pp_coord(rank, cfg.tp).tp_rank),
        StrategyKind::Reference | StrategyKind::Ring => Shard::whole(&cfg.model),
    }
}

/// What rank `rank` allocates; `keep` adds the kept output of `verify`, emulation its scratch buffer.
pub fn memory_estimate(cfg: &RunConfig, rank: usize, keep: bool) -> MemoryEstimate {
    let m = &cfg.model;
    let (bf, f32b) = (2u64, 4u64);
    let d = m.d_model as u64;
    let (tokens, largest, layers) = match cfg.strategy {
        StrategyKind::Reference => (m.seq_len, m.seq_len, m.layers),
        StrategyKind::TpPp => (m.seq_len, m.seq_len, m.layers / cfg.pp),
        StrategyKind::Ring => {
            let lens: Vec<usize> = (0..cfg.ring).map(|r| topology::ring_tokens(cfg.layout, m.seq_len, cfg.ring, r).len()).collect();
            (lens[rank], lens.iter().copied().max().unwrap_or(0), m.layers)
        }
    };
    let shard = rank_shard(cfg, rank);
    let heads = shard.heads(m);
    let ring = cfg.strategy == StrategyKind::Ring;
    let (w, kvw, f, hl) = (heads.width() as u64, heads.kv_width() as u64, shard.mlp.len() as u64, heads.heads as u64);
    let up = f * m.mlp_act.up_factor() as u64;
    let rows = (cfg.micro_batch * tokens) as u64;
    let kv_rows = (cfg.micro_batch * largest) as u64;
    let weights = layers as u64 * bf * (2 * d + d * w + d * 2 * kvw + w * d + d * up + f * d);
    let gated = if m.mlp_act == MlpAct::Swiglu { rows * f } else { 0 };
    let workspace = bf
        * (rows * d
            + rows * w
            + kv_rows.max(rows) * 2 * kvw
            + if ring { kv_rows * 2 * kvw } else { 0 }
            + rows * w
            + rows * d
            + rows * up
            + gated)
        + f32b * (rows * w + rows * hl);
    let x = bf * rows * d;
    let out = if keep { bf * (m.batch * tokens) as u64 * d } else { 0 };
    let emulation = if cfg.emulate.is_some() { crate::comm::emulated::scratch_bytes(cfg) } else { 0 };
    // The largest matmul's FP32 operands and result, or attention's FP32 K/V copy and score tile.
    let matmul = f32b * (rows * d + d * up + rows * up);
    let attention = f32b * (kv_rows * 2 * kvw + 64 * kv_rows + 64 * w);
    MemoryEstimate { weights, activations: workspace + x + out + emulation, scratch: matmul.max(attention) + bf * rows * d }
}

/// Set up the strategy `cfg` names on this rank: generate its weights, allocate its buffers.
pub fn build<'a, B: Backend + 'a, C: Communicator<B> + 'a>(cfg: &RunConfig, be: &B, comm: &C) -> Result<Box<dyn Strategy<B, C> + 'a>> {
    Ok(match cfg.strategy {
        StrategyKind::Reference => Box::new(reference::Reference::new(cfg, be)?),
        StrategyKind::TpPp => Box::new(tp_pp::TpPp::new(cfg, be, comm)?),
        StrategyKind::Ring => Box::new(ring::Ring::new(cfg, be, comm.rank())?),
    })
}

/// Micro-batch `micro_batch`: sequences micro_batch x mb .. (micro_batch + 1) x mb, on `tokens`.
fn micro_batch_of<'a>(cfg: &RunConfig, micro_batch: usize, tokens: &'a LocalTokens) -> Batch<'a> {
    Batch { first_seq: micro_batch * cfg.micro_batch, seqs: cfg.micro_batch, tokens }
}

/// A run of consecutive layers on one rank with its buffers: what every strategy drives per
/// micro-batch (the whole model for reference and ring, one pipeline stage for tp-pp).
pub(crate) struct Stack<B: Backend> {
    pub layers: Vec<LayerWeights<B>>,
    pub ws: Workspace<B>,
    /// The micro-batch's hidden states, updated in place layer by layer.
    pub x: B::Act,
    /// Kept final hidden states of the whole batch (allocated on the first kept forward).
    pub out: Option<B::Act>,
    pub tokens: LocalTokens,
}

impl<B: Backend> Stack<B> {
    /// Layers `layers` of shard `shard`, for micro-batches of this rank's `tokens`; `kv_rows` is the
    /// largest K/V block the buffers must hold (> the local rows only for the ring).
    pub fn new(
        cfg: &RunConfig,
        be: &B,
        shard: &Shard,
        layers: std::ops::Range<usize>,
        tokens: LocalTokens,
        kv_rows: usize,
        ring: bool,
    ) -> Result<Self> {
        let m = &cfg.model;
        let rows = cfg.micro_batch * tokens.len();
        Ok(Stack {
            layers: layers.map(|l| LayerWeights::generate(be, m, shard, l, cfg.seed)).collect::<Result<_>>()?,
            ws: Workspace::new(be, m, shard, rows, kv_rows, ring)?,
            x: be.alloc_act(rows, m.d_model)?,
            out: None,
            tokens,
        })
    }

    pub fn batch(&self, cfg: &RunConfig, micro_batch: usize) -> Batch<'_> {
        micro_batch_of(cfg, micro_batch, &self.tokens)
    }

    pub fn generate_input(&mut self, be: &B, cfg: &RunConfig, micro_batch: usize) -> Result<()> {
        let batch = micro_batch_of(cfg, micro_batch, &self.tokens);
        generate_input(be, &cfg.model, cfg.seed, &batch, &mut self.x)
    }

    /// Every layer of the stack on the current micro-batch in x.
    pub fn run_layers(
        &mut self,
        be: &B,
        cfg: &RunConfig,
        micro_batch: usize,
        attention: &mut dyn FnMut(&mut Workspace<B>, &Batch) -> Result<()>,
        reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
    ) -> Result<()> {
        let batch = micro_batch_of(cfg, micro_batch, &self.tokens);
        for w in &self.layers {
            layer_forward(be, w, &mut self.ws, &mut self.x, &batch, &mut |ws| attention(ws, &batch), reduce)?;
        }
        Ok(())
    }

    /// Copy the micro-batch's final hidden states into the kept output.
    pub fn keep(&mut self, be: &B, cfg: &RunConfig, micro_batch: usize) -> Result<()> {
        let rows = self.x.rows();
        if self.out.is_none() {
            self.out = Some(be.alloc_act(cfg.model.batch * self.tokens.len(), cfg.model.d_model)?);
        }
        let out = self.out.as_mut().expect("allocated above");
        be.copy_rows(&self.x, 0, out, micro_batch * rows, rows)
    }
}
