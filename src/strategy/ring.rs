//! Sequence parallelism with ring attention. Every rank holds the full weights and its tokens of
//! every sequence (zigzag or contiguous). Per layer, after the local QKV projection and RoPE, the
//! K/V blocks travel around the ring in P steps: at step s a rank attends its queries to the block
//! it holds (the one rank r - s computed) while sending that block on to r + 1 and receiving the
//! next one from r - 1 into the second buffer; partial results merge into FP32 (O, LSE)
//! accumulators. Output projection and MLP are local. No collective besides the ring.

use super::{Stack, Strategy};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::model::{attend, Batch, Shard, Workspace};
use crate::topology::{ring_block_owner, ring_peers, ring_tokens, LocalTokens};
use anyhow::{Context, Result};

pub struct Ring<B: Backend> {
    cfg: RunConfig,
    rank: usize,
    /// Every ring position's tokens: the layout of the K/V block that arrives from it.
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
}

impl<B: Backend> Ring<B> {
    pub fn new(cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        let m = &cfg.model;
        let layout: Vec<LocalTokens> = (0..cfg.ring).map(|r| ring_tokens(cfg.layout, m.seq_len, cfg.ring, r)).collect();
        let largest = layout.iter().map(LocalTokens::len).max().unwrap_or(0);
        let stack = Stack::new(cfg, be, &Shard::whole(m), 0..m.layers, layout[rank].clone(), cfg.micro_batch * largest, true)?;
        Ok(Ring { cfg: cfg.clone(), rank, layout, stack })
    }
}

/// Ring attention of the batch's queries against every rank's K/V block; fills ws.attn.
fn ring_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    ws: &mut Workspace<B>,
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    let (rank, p) = (comm.rank(), layout.len());
    let (to, from) = ring_peers(rank, p);
    ws.o.set_rows(batch.rows());
    ws.lse.set_rows(batch.rows());
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    for step in 0..p {
        let owner = ring_block_owner(rank, step, p);
        let Workspace { q, kv, kv_next, o, lse, heads, .. } = ws;
        let mut compute = || attend(be, q, kv, *heads, batch, &layout[owner], causal, o, lse);
        if step + 1 < p {
            // Double buffering: the next block lands in kv_next while this one is in use.
            let incoming = ring_block_owner(rank, step + 1, p);
            kv_next.set_rows(batch.seqs * layout[incoming].len());
            comm.exchange(kv, to, kv_next, from, &mut compute)
                .with_context(|| format!("ring step {step}: sending to rank {to}, receiving rank {incoming}'s block from rank {from}"))?;
            std::mem::swap(&mut ws.kv, &mut ws.kv_next);
        } else {
            compute()?;
        }
    }
    be.attention_store(&ws.o, &mut ws.attn)
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Ring<B> {
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()> {
        debug_assert_eq!(comm.rank(), self.rank);
        let (cfg, layout) = (&self.cfg, &self.layout);
        for mb in 0..cfg.micro_batches() {
            self.stack.generate_input(be, cfg, mb)?;
            self.stack.run_layers(
                be,
                cfg,
                mb,
                &mut |ws, batch| ring_attention(be, comm, ws, batch, layout, cfg.causal),
                &mut |_| Ok(()),
            )?;
            if keep {
                self.stack.keep(be, cfg, mb)?;
            }
        }
        Ok(())
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }
}
