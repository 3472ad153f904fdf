//! DeepSpeed-Ulysses: tokens are sharded everywhere but inside attention. Every rank holds the full
//! weights and a contiguous chunk of every sequence; per layer, after its QKV projection and RoPE
//! at the true positions, an all-to-all turns Q, K and V from [its tokens, all heads] into [every
//! token, heads / P] (K/V heads split the same way, or replicated where P exceeds them); attention
//! is local over the whole sequence; an all-to-all turns the output back into [its tokens, all
//! heads] for the output projection and MLP. P must divide the heads.
//!
//! The all-to-all moves equal blocks: each rank's rows are padded to the longest chunk, and
//! block j of a packed buffer holds this rank's rows of rank j's head slice.

use super::decode::{self, owned_rows, padded, CacheShape, DecodePlacement, Decoder, Group};
use super::heads::{Exchange, HeadGroup};
use super::spec::{CommProjection, Op, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{ConfigError, Layout, RunConfig, StrategyKind};
use crate::model::backward::{attend_blocks_backward, GradWorkspace};
use crate::model::{attend_blocks, Batch, Saved, Shard, Workspace};
use crate::topology::{chunk_count, even_slice, ring_tokens, LocalTokens};
use anyhow::Result;

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Ulysses,
    size_names: &["sp"],
    sizes: super::shared::sp_sizes,
    resolve_sizes: super::shared::sp_resolve,
    uses_layout: false,
    world: super::shared::sp_world,
    check,
    placement,
    traffic,
    buffers,
    splits: super::shared::no_splits,
    project,
    decode,
    train: TrainSpec {
        grad_peers: |cfg, _| (0..cfg.split.sp()).collect(),
        kv_replicas: |_, rank| vec![rank],
        backward_traffic: |cfg, rank| {
            let calls = (cfg.model.layers * cfg.micro_batches()) as u64;
            group(cfg, rank).backward_traffic(cfg.micro_batch, calls, (0..cfg.split.sp()).collect())
        },
        dkv_rows: |cfg, rank| cfg.micro_batch * tokens(cfg, rank).len(),
        extra_bytes: |cfg, rank| head_trainer_bytes(&group(cfg, rank), cfg.micro_batch, kept_layers(cfg)),
        pipelined: false,
    },
};

fn tokens(cfg: &RunConfig, rank: usize) -> LocalTokens {
    ring_tokens(Layout::Contiguous, cfg.model.seq_len, cfg.split.sp(), rank)
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let p = cfg.split.sp();
    if p == 0 {
        return Err(ConfigError("--ring 0: must be at least 1".into()));
    }
    if p != world {
        return Err(ConfigError(format!("--ring {p}: the job has {world} ranks (world size must equal the ulysses size, set by --ring)")));
    }
    check_heads(cfg, p, "--ring")?;
    if cfg.model.seq_len < chunk_count(Layout::Contiguous, p) {
        return Err(ConfigError(format!(
            "--seq-len {}: ulysses over {p} ranks needs at least {p} tokens (one per rank)",
            cfg.model.seq_len
        )));
    }
    Ok(())
}

/// A Ulysses group of `n` (set by `flag`) splits the heads: n divides them, and divides the K/V
/// heads or is a multiple of them (each K/V head replicated).
pub(super) fn check_heads(cfg: &RunConfig, n: usize, flag: &str) -> Result<(), ConfigError> {
    let m = &cfg.model;
    if m.heads % n != 0 {
        return Err(ConfigError(format!("{flag} {n}: a Ulysses group of {n} ranks needs --heads {} divisible by it", m.heads)));
    }
    if m.kv_heads % n != 0 && n % m.kv_heads != 0 {
        return Err(ConfigError(format!(
            "{flag} {n} with --kv-heads {}: a Ulysses group of {n} ranks needs the K/V heads divisible by it, or it a multiple of them (each K/V head replicated)",
            m.kv_heads
        )));
    }
    Ok(())
}

/// Its contiguous chunk for the linear layers; every token for its heads / P query heads in attention.
fn placement(cfg: &RunConfig, rank: usize) -> Placement {
    let m = &cfg.model;
    Placement {
        tokens: tokens(cfg, rank),
        shard: Shard::whole(m),
        layers: 0..m.layers,
        attention_tokens: LocalTokens::whole(m.seq_len),
        attention_heads: even_slice(m.heads, cfg.split.sp(), rank),
        outputs: true,
    }
}

/// Decode: the new tokens of an even slice of the sequences; the cache by heads (heads / P of
/// every token); an all-to-all of the new tokens' Q, K, V to heads and one back, per layer.
fn decode(cfg: &RunConfig, rank: usize) -> DecodePlacement {
    let m = &cfg.model;
    let p = cfg.split.sp();
    let rows = m.batch.div_ceil(p).max(1);
    let kv_cols = 2 * Shard::head_slice(m, p, rank).1.len() * m.head_dim();
    let cache = CacheShape { layers: m.layers, batch: m.batch, prompt: m.seq_len, slots: cfg.decode_tokens, kv_cols };
    let group = Group { ranks: (0..p).collect(), member: rank };
    DecodePlacement {
        heads: Some((group, (0..p).map(|j| padded(owned_rows(m.batch, p, j), rows)).collect())),
        ..DecodePlacement::whole_model(cfg, decode::owned_seqs(m.batch, p, rank), cache)
    }
}

/// The group of the whole job: every rank, in contiguous chunks.
fn group(cfg: &RunConfig, rank: usize) -> HeadGroup {
    let layout: Vec<LocalTokens> = (0..cfg.split.sp()).map(|r| tokens(cfg, r)).collect();
    let longest = layout.iter().map(LocalTokens::len).max().unwrap_or(0);
    HeadGroup::new(&cfg.model, rank, layout, longest)
}

/// The workspace for its own rows, accumulators for every token of its heads, and the packed and
/// exchanged Q, K|V and output.
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let local = super::shared::local_buffers(cfg, &placement(cfg, rank));
    let g = group(cfg, rank);
    let (_, all) = g.rows(cfg.micro_batch);
    let (_, kvw) = g.widths();
    crate::model::Buffers {
        acc_rows: all,
        acc_heads: g.attention_heads().heads,
        extra: g.buffers(cfg.micro_batch),
        attention_kv: (all, 2 * kvw),
        ..local
    }
}

/// Per layer and micro-batch three all-to-alls of padded blocks over the whole job.
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let calls = (cfg.model.layers * cfg.micro_batches()) as u64;
    group(cfg, rank).traffic(cfg.micro_batch, calls, (0..cfg.split.sp()).collect())
}

/// The all-to-alls are exposed (attention needs all of Q, K and V first).
fn project(_: &RunConfig, x: &ProjectionInput) -> CommProjection {
    super::shared::project_collective(x, Op::AllToAll, "all-to-alls per layer")
}

pub struct Ulysses<B: Backend> {
    cfg: RunConfig,
    group: HeadGroup,
    stack: Stack<B>,
    ex: Exchange<B>,
    decoder: Option<Decoder<B>>,
    trainer: Option<(Trainer<B>, HeadTrainer<B>)>,
}

impl<B: Backend> Ulysses<B> {
    pub fn new(cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        let stack = Stack::of(&SPEC, cfg, be, rank)?;
        let ex = Exchange::alloc(be, &buffers(cfg, rank).extra)?;
        let g = group(cfg, rank);
        let trainer = if cfg.train {
            let t = Trainer::new(be, cfg, &stack, &Shard::whole(&cfg.model), &SPEC, rank)?;
            Some((t, HeadTrainer::new(be, &g, cfg.micro_batch, kept_layers(cfg))?))
        } else {
            None
        };
        Ok(Ulysses { cfg: cfg.clone(), group: g, stack, ex, decoder: decode::decoder_for(cfg, be, SPEC.decode, rank)?, trainer })
    }
}

/// Attention of this rank's heads over every token: to heads, attend, back to tokens.
#[allow(clippy::too_many_arguments)]
fn ulysses_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    g: &HeadGroup,
    ws: &mut Workspace<B>,
    ex: &mut Exchange<B>,
    batch: &Batch,
    causal: bool,
    cache: Option<(&mut Decoder<B>, usize)>,
) -> Result<()> {
    g.to_heads(be, comm, ws, ex, batch.seqs)?;
    let blocks = g.blocks(batch.seqs);
    if let Some((dec, layer)) = cache {
        dec.store_prompt(be, layer, &ex.kv_all, &blocks, batch.first_seq)?;
    }
    ws.o.set_rows(blocks.rows);
    ws.lse.set_rows(blocks.rows);
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    attend_blocks(be, &ex.q_all, &blocks, &ex.kv_all, &blocks, g.attention_heads(), causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ex.attn_all)?;
    g.to_tokens(be, comm, ws, ex, batch.seqs)
}

/// Layers whose head-layout activations a rank keeps: every one, or the one whose backward
/// runs when each layer's forward is recomputed (its slot refilled by the recomputation).
pub(super) fn kept_layers(cfg: &RunConfig) -> usize {
    if cfg.recompute {
        1
    } else {
        cfg.model.layers
    }
}

/// Bytes of a `HeadTrainer` keeping `layers` layers (`HeadTrainer::new`'s buffers).
pub(super) fn head_trainer_bytes(g: &HeadGroup, micro_batch: usize, layers: usize) -> u64 {
    let (_, all) = g.rows(micro_batch);
    let ((w, kvw), heads) = (g.widths(), g.attention_heads().heads);
    (2 * layers * all * (2 * w + 2 * kvw) + 4 * all * (w + 2 * kvw + heads)) as u64
}

/// A Ulysses group's training state: per layer, the head-layout Q, K|V and output the backward
/// reads (kept from the forward: the backward reverses the all-to-alls instead of repeating
/// them), and the FP32 gradients of its heads over every token.
pub(super) struct HeadTrainer<B: Backend> {
    pub kept: Vec<[B::Act; 3]>,
    pub dq: B::Acc,
    pub dkv: B::Acc,
    pub delta: B::Acc,
}

impl<B: Backend> HeadTrainer<B> {
    pub fn new(be: &B, g: &HeadGroup, micro_batch: usize, layers: usize) -> Result<Self> {
        let (_, all) = g.rows(micro_batch);
        let ((w, kvw), heads) = (g.widths(), g.attention_heads().heads);
        let kept =
            (0..layers).map(|_| Ok([be.alloc_act(all, w)?, be.alloc_act(all, 2 * kvw)?, be.alloc_act(all, w)?])).collect::<Result<_>>()?;
        Ok(HeadTrainer { kept, dq: be.alloc_acc(all, w)?, dkv: be.alloc_acc(all, 2 * kvw)?, delta: be.alloc_acc(all, heads)? })
    }

    /// Keep layer `l`'s head-layout Q, K|V and output (after `ulysses_attention`).
    pub fn keep(&mut self, be: &B, ex: &Exchange<B>, l: usize) -> Result<()> {
        self.keep_inputs(be, ex, l)?;
        self.keep_output(be, ex, l)
    }

    /// Keep layer `l`'s head-layout Q and this rank's K|V (after `to_heads`: before a ring
    /// moves other blocks through ex.kv_all).
    pub fn keep_inputs(&mut self, be: &B, ex: &Exchange<B>, l: usize) -> Result<()> {
        let slot = l % self.kept.len();
        for (src, dst) in [&ex.q_all, &ex.kv_all].into_iter().zip(self.kept[slot].iter_mut()) {
            dst.set_rows(src.rows());
            be.copy_rows(src, 0, dst, 0, src.rows())?;
        }
        Ok(())
    }

    /// Keep layer `l`'s head-layout attention output (ex.attn_all).
    pub fn keep_output(&mut self, be: &B, ex: &Exchange<B>, l: usize) -> Result<()> {
        let slots = self.kept.len();
        let dst = &mut self.kept[l % slots][2];
        dst.set_rows(ex.attn_all.rows());
        be.copy_rows(&ex.attn_all, 0, dst, 0, ex.attn_all.rows())
    }

    /// The backward of `ulysses_attention` for layer `l`: dO to heads, attention's backward of
    /// this rank's heads over every token, dQ and dK|dV back to tokens (gws.dq, gws.dkv).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<C: Communicator<B>>(
        &mut self,
        be: &B,
        comm: &C,
        g: &HeadGroup,
        ex: &mut Exchange<B>,
        (ws, gws, saved): (&mut Workspace<B>, &mut GradWorkspace<B>, &Saved<B>),
        batch: &Batch,
        l: usize,
        causal: bool,
    ) -> Result<()> {
        let [q, kv, o] = &self.kept[l % self.kept.len()];
        g.grad_to_heads(be, comm, &gws.dattn, ex, batch.seqs)?;
        let heads = g.attention_heads();
        be.attention_backward_delta(o, &ex.q_all, heads.heads, &mut self.delta)?;
        let blocks = g.blocks(batch.seqs);
        for acc in [&mut self.dq, &mut self.dkv] {
            acc.set_rows(blocks.rows);
            be.zero_acc(acc)?;
        }
        let grads = (&ex.q_all, &saved.lse, &self.delta);
        attend_blocks_backward(be, (q, &blocks), (kv, &blocks), heads, causal, grads, &mut self.dq, &mut self.dkv)?;
        be.attention_store(&self.dq, &mut ex.q_all)?;
        be.attention_store(&self.dkv, &mut ex.kv_all)?;
        let rows = batch.rows();
        g.grads_to_tokens(be, comm, ex, (&mut gws.dq, &mut gws.dkv, &mut ws.kv), &mut gws.dkv_acc, rows, batch.seqs)
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Ulysses<B> {
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()> {
        let (causal, g, ex, dec) = (self.cfg.causal, &self.group, &mut self.ex, &mut self.decoder);
        dec.iter_mut().for_each(Decoder::restart);
        self.stack.forward_all(be, &self.cfg, keep, &mut |ws, batch, l| {
            ulysses_attention(be, comm, g, ws, ex, batch, causal, dec.as_mut().map(|d| (d, l)))
        })
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }

    fn decode_step(&mut self, be: &B, comm: &C, step: usize, keep: bool) -> Result<()> {
        let comms = decode::Comms { tp: None, heads: Some(comm), context: None };
        decode::step_own(decode::need(&mut self.decoder)?, be, &self.stack.layers, step, keep, &comms)
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    fn train_step(&mut self, be: &B, comm: &C, keep: bool) -> Result<StepPhases> {
        let (causal, g, ex) = (self.cfg.causal, &self.group, &mut self.ex);
        let (trainer, heads) = self.trainer.as_mut().ok_or_else(|| anyhow::anyhow!("ulysses set up without --train"))?;
        // The forward and the backward take turns with the exchange buffers.
        let ex = std::cell::RefCell::new(ex);
        let heads = std::cell::RefCell::new(heads);
        trainer.step(
            &mut self.stack,
            be,
            &self.cfg,
            keep,
            &mut |ws, batch, l| {
                let mut ex = ex.borrow_mut();
                ulysses_attention(be, comm, g, ws, &mut ex, batch, causal, None)?;
                heads.borrow_mut().keep(be, &ex, l)
            },
            &mut |ws, gws, saved, batch, l| {
                heads.borrow_mut().backward(be, comm, g, &mut ex.borrow_mut(), (ws, gws, saved), batch, l, causal)
            },
            &mut |_| Ok(()),
            (comm, Some(comm)),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _)| t.gradients())
    }
}
