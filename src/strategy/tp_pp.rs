//! Megatron tensor parallel x pipeline parallel.
//!
//! Tensor parallel inside a stage: QKV and MLP-up are column-parallel (Y = X A, A split by columns:
//! each TP rank owns heads/tp heads and mlp/tp MLP columns, no communication); attention-out and
//! MLP-down are row-parallel (Y = X A, A split by rows: each rank holds a partial sum), each followed
//! by one all-reduce over the TP group: two per layer.
//! Pipeline across stages: stage k runs layers k L/pp .. (k+1) L/pp on each micro-batch in turn and
//! hands its activations to the same TP rank of stage k+1 (fill-drain, forward only). The hand-off
//! is a blocking send: stage k+1 posts its receive as soon as it is free, so stage k blocks only
//! while the next stage is still busy, which is the fill-drain schedule itself.

use super::{Stack, Strategy};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::model::{local_attention, Shard};
use crate::topology::{even_slice, tp_pp_coord, tp_pp_rank, LocalTokens, TpPpCoord};
use anyhow::{Context, Result};

/// Bytes `rank` sends and receives per iteration: per micro-batch and local layer, two
/// all-reduces of [micro-batch x seq, d_model] BF16 counted by NCCL's bus convention (2 (tp - 1) /
/// tp of the buffer each way, as `comm::metered` counts them); per micro-batch, the hand-off of
/// the same activations to the next stage, and from the previous one.
pub fn traffic(cfg: &RunConfig, rank: usize) -> (u64, u64) {
    let m = &cfg.model;
    let coord = tp_pp_coord(rank, cfg.tp);
    let activations = (cfg.micro_batch * m.seq_len * m.d_model * 2) as u64;
    let tp = cfg.tp as u64;
    let wire = if tp > 1 { 2 * (tp - 1) * activations / tp } else { 0 };
    let mbs = cfg.micro_batches() as u64;
    let all_reduce = 2 * wire * (m.layers / cfg.pp) as u64 * mbs;
    let send = if coord.stage + 1 < cfg.pp { activations * mbs } else { 0 };
    let recv = if coord.stage > 0 { activations * mbs } else { 0 };
    (all_reduce + send, all_reduce + recv)
}

pub struct TpPp<B: Backend, C> {
    cfg: RunConfig,
    coord: TpPpCoord,
    /// The ranks of this stage (the TP group); its all-reduces never involve other stages.
    tp_group: C,
    stack: Stack<B>,
}

impl<B: Backend, C: Communicator<B>> TpPp<B, C> {
    pub fn new(cfg: &RunConfig, be: &B, world: &C) -> Result<Self> {
        let m = &cfg.model;
        let coord = tp_pp_coord(world.rank(), cfg.tp);
        let tp_group = world.split(coord.stage, coord.tp_rank).context("creating the tensor-parallel group")?;
        let shard = Shard::tensor_parallel(m, cfg.tp, coord.tp_rank);
        let layers = even_slice(m.layers, cfg.pp, coord.stage);
        let rows = cfg.micro_batch * m.seq_len;
        let stack = Stack::new(cfg, be, &shard, layers, LocalTokens::whole(m.seq_len), rows, false)?;
        Ok(TpPp { cfg: cfg.clone(), coord, tp_group, stack })
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for TpPp<B, C> {
    fn forward(&mut self, be: &B, world: &C, keep: bool) -> Result<()> {
        let (cfg, TpPpCoord { stage, tp_rank }) = (&self.cfg, self.coord);
        let causal = cfg.causal;
        let prev = (stage > 0).then(|| tp_pp_rank(TpPpCoord { stage: stage - 1, tp_rank }, cfg.tp));
        let next = (stage + 1 < cfg.pp).then(|| tp_pp_rank(TpPpCoord { stage: stage + 1, tp_rank }, cfg.tp));
        let tp_group = &self.tp_group;
        for mb in 0..cfg.micro_batches() {
            match prev {
                None => self.stack.generate_input(be, cfg, mb)?,
                Some(p) => {
                    let rows = self.stack.batch(cfg, mb).rows();
                    self.stack.x.set_rows(rows);
                    world.recv(&mut self.stack.x, p).with_context(|| format!("pipeline receive of micro-batch {mb} from rank {p}"))?;
                }
            }
            self.stack
                .run_layers(be, cfg, mb, &mut |ws, batch| local_attention(be, ws, batch, causal), &mut |y| tp_group.all_reduce_sum(y))?;
            match next {
                Some(n) => world.send(&self.stack.x, n).with_context(|| format!("pipeline send of micro-batch {mb} to rank {n}"))?,
                None if keep => self.stack.keep(be, cfg, mb)?,
                None => {}
            }
        }
        Ok(())
    }

    fn output(&self) -> Option<&B::Act> {
        // Every TP rank of the last stage holds the same all-reduced output; the first one reports it.
        (self.coord.tp_rank == 0).then_some(self.stack.out.as_ref()).flatten()
    }
}
