//! Context parallelism with all-gathered K/V, as Llama 3 was trained: every rank holds the full
//! weights and its tokens of every sequence (any layout), and per layer all-gathers every rank's
//! K/V, then attends its queries to the whole sequence at their global positions. One collective
//! per layer, not overlapped (what it costs in exposed time is the comparison's point), and a K/V
//! buffer of the whole sequence, which is what limits it at long context.
//!
//! NCCL's AllGather moves equal blocks: a rank whose chunk is a token shorter than the longest
//! sends its block padded to the longest; the padding rows are never attended.

use super::decode::{self, combine::Route, Decoder};
use super::spec::{CommProjection, Op, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{RunConfig, StrategyKind};
use crate::model::backward::{attend_blocks_backward, begin_attention_backward, GradWorkspace};
use crate::model::{attend_blocks, Batch, Blocks, Saved, Workspace};
use crate::topology::LocalTokens;
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Allgather,
    size_names: &["sp"],
    sizes: super::shared::sp_sizes,
    resolve_sizes: super::shared::sp_resolve,
    uses_layout: true,
    world: super::shared::sp_world,
    check: super::shared::check_sequence_parallel,
    placement: super::shared::sequence_parallel_placement,
    traffic,
    buffers,
    splits: super::shared::no_splits,
    project,
    decode: |cfg, rank| {
        let prompt = super::shared::sequence_parallel_placement(cfg, rank).tokens.len();
        super::decode::sequence_parallel(cfg, rank, Route::Gather, prompt)
    },
    train: TrainSpec {
        grad_peers: |cfg, _| (0..cfg.split.sp()).collect(),
        kv_replicas: |_, rank| vec![rank],
        backward_traffic,
        dkv_rows: |cfg, _| cfg.split.sp() * cfg.micro_batch * super::shared::longest_tokens(cfg),
        extra_bytes: |cfg, _| (cfg.micro_batch * super::shared::longest_tokens(cfg) * 2 * cfg.model.kv_dim() * 4) as u64,
        pipelined: false,
    },
};

/// The local K/V padded to the longest block (what the all-gather sends), and the whole
/// sequence's K/V it gathers.
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let block = cfg.micro_batch * super::shared::longest_tokens(cfg);
    let local = super::shared::local_buffers(cfg, &super::shared::sequence_parallel_placement(cfg, rank));
    let all = cfg.split.sp() * block;
    crate::model::Buffers { kv_rows: block, kv_in_rows: all, attention_kv: (all, local.attention_kv.1), ..local }
}

/// Per layer and micro-batch one all-gather of the padded K/V block: as a ring all-gather moves
/// it, P - 1 blocks out and P - 1 in.
fn traffic(cfg: &RunConfig, _rank: usize) -> Vec<Transfer> {
    vec![per_layer(cfg, Op::AllGather, "K/V of every rank", 2)]
}

/// A collective of every rank's padded K/V block per layer and micro-batch, `value_bytes` per
/// value, moving P - 1 blocks each way as a ring does.
fn per_layer(cfg: &RunConfig, op: Op, what: &'static str, value_bytes: usize) -> Transfer {
    let m = &cfg.model;
    let block = (cfg.micro_batch * super::shared::longest_tokens(cfg) * 2 * m.kv_dim() * value_bytes) as u64;
    let wire = (cfg.split.sp() as u64 - 1) * block;
    Transfer {
        op,
        what,
        peers: (0..cfg.split.sp()).collect(),
        buffer_bytes: block,
        sent: wire,
        received: wire,
        calls: (m.layers * cfg.micro_batches()) as u64,
        overlapped: false,
    }
}

/// The backward, per layer and micro-batch: the K/V all-gather again (the gathered sequence is
/// not kept between the passes: that is what bounds its memory), and one FP32 reduce-scatter of
/// the gathered K/V's gradients, each rank its own block's sum: P - 1 FP32 blocks out and in.
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let mut out = traffic(cfg, rank);
    out.push(per_layer(cfg, Op::ReduceScatter, "dK/dV of every rank (FP32)", 4));
    out
}

/// The all-gather is exposed, on InfiniBand as soon as the group spans two nodes.
fn project(_: &RunConfig, x: &ProjectionInput) -> CommProjection {
    super::shared::project_collective(x, Op::AllGather, "one K/V all-gather")
}

pub struct Allgather<B: Backend> {
    cfg: RunConfig,
    /// Every rank's tokens: the layout of its block in the gathered K/V.
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
    decoder: Option<Decoder<B>>,
    /// With --train: the trainer, and this rank's block of the reduce-scattered dK|dV.
    trainer: Option<(Trainer<B>, B::Acc)>,
}

impl<B: Backend> Allgather<B> {
    pub fn new(cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        let stack = Stack::of(&SPEC, cfg, be, rank)?;
        let trainer = if cfg.train {
            let block = cfg.micro_batch * super::shared::longest_tokens(cfg);
            let shard = crate::model::Shard::whole(&cfg.model);
            Some((Trainer::new(be, cfg, &stack, &shard, &SPEC, rank)?, be.alloc_acc(block, 2 * cfg.model.kv_dim())?))
        } else {
            None
        };
        Ok(Allgather {
            cfg: cfg.clone(),
            layout: super::shared::sequence_layout(cfg),
            stack,
            decoder: decode::decoder_for(cfg, be, SPEC.decode, rank)?,
            trainer,
        })
    }
}

/// Gather every rank's K/V into ws.kv_in, then attend the batch's queries to each rank's block.
fn gathered_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    ws: &mut Workspace<B>,
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    let block = batch.seqs * layout.iter().map(LocalTokens::len).max().unwrap_or(0);
    ws.kv.set_rows(block);
    ws.kv_in.set_rows(layout.len() * block);
    comm.all_gather(&ws.kv, &mut ws.kv_in).with_context(|| format!("all-gather of K/V ({block} rows per rank)"))?;
    ws.o.set_rows(batch.rows());
    ws.lse.set_rows(batch.rows());
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    let (q, kv) = (Blocks::one(batch.seqs, batch.tokens), Blocks::padded(batch.seqs, layout, block));
    attend_blocks(be, &ws.q, &q, &ws.kv_in, &kv, ws.heads, causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ws.attn)
}

/// The backward of `gathered_attention`: the K/V gathered again, this rank's queries' share of
/// every rank's dK|dV, then the reduce-scatter that brings each rank the sum for its own block
/// (`own`); dQ stays local. Fills gws.dq and gws.dkv.
#[allow(clippy::too_many_arguments)]
fn gathered_backward<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    ws: &mut Workspace<B>,
    gws: &mut GradWorkspace<B>,
    own: &mut B::Acc,
    saved: &Saved<B>,
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    begin_attention_backward(be, gws, saved, ws.heads)?;
    let block = batch.seqs * layout.iter().map(LocalTokens::len).max().unwrap_or(0);
    ws.kv.set_rows(block);
    be.copy_rows(&saved.kv, 0, &mut ws.kv, 0, saved.kv.rows())?;
    ws.kv_in.set_rows(layout.len() * block);
    comm.all_gather(&ws.kv, &mut ws.kv_in).with_context(|| format!("backward all-gather of K/V ({block} rows per rank)"))?;
    gws.dkv_acc.set_rows(layout.len() * block);
    be.zero_acc(&mut gws.dkv_acc)?;
    let (q, kv) = (Blocks::one(batch.seqs, batch.tokens), Blocks::padded(batch.seqs, layout, block));
    let grads = (&gws.dattn, &saved.lse, &gws.delta);
    attend_blocks_backward(be, (&saved.q, &q), (&ws.kv_in, &kv), ws.heads, causal, grads, &mut gws.dq_acc, &mut gws.dkv_acc)?;
    own.set_rows(block);
    comm.reduce_scatter_acc(&gws.dkv_acc, own).with_context(|| format!("reduce-scatter of dK/dV ({block} rows per rank)"))?;
    own.set_rows(batch.rows());
    be.attention_store(&gws.dq_acc, &mut gws.dq)?;
    be.attention_store(own, &mut gws.dkv)
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Allgather<B> {
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()> {
        let (cfg, layout, dec) = (&self.cfg, &self.layout, &mut self.decoder);
        dec.iter_mut().for_each(Decoder::restart);
        self.stack.forward_all(be, cfg, keep, &mut |ws, batch, l| {
            decode::keep_own(dec, be, l, ws, batch)?;
            gathered_attention(be, comm, ws, batch, layout, cfg.causal)
        })
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }

    fn decode_step(&mut self, be: &B, comm: &C, step: usize, keep: bool) -> Result<()> {
        let comms = decode::Comms { tp: None, heads: None, context: Some(comm) };
        decode::step_own(decode::need(&mut self.decoder)?, be, &self.stack.layers, step, keep, &comms)
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    fn train_step(&mut self, be: &B, comm: &C, keep: bool) -> Result<StepPhases> {
        let (cfg, layout) = (&self.cfg, &self.layout);
        let (trainer, own) = self.trainer.as_mut().ok_or_else(|| anyhow::anyhow!("allgather set up without --train"))?;
        trainer.step(
            &mut self.stack,
            be,
            cfg,
            keep,
            &mut |ws, batch, _| gathered_attention(be, comm, ws, batch, layout, cfg.causal),
            &mut |ws, gws, saved, batch, _| gathered_backward(be, comm, ws, gws, own, saved, batch, layout, cfg.causal),
            &mut |_| Ok(()),
            (comm, Some(comm)),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _)| t.gradients())
    }
}
