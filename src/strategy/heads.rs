//! A Ulysses group's exchange: the all-to-alls that turn Q, K and V from [a member's tokens,
//! all heads] into [every member's tokens, its heads], and the attention output back (ulysses,
//! usp, and their decode steps).

use super::traffic::{Op, Transfer};
use crate::backend::{Backend, BlockCopy, Heads, Matrix};
use crate::comm::Communicator;
use crate::config::ModelConfig;
use crate::model::{Blocks, Shard, Workspace};
use crate::topology::LocalTokens;
use anyhow::{Context, Result};
use std::ops::Range;

/// A Ulysses group: the ranks that trade tokens for heads among themselves (the whole world here;
/// usp's groups of consecutive ranks). Everything its all-to-alls need to know.
pub struct HeadGroup {
    /// This rank's index in the group.
    pub member: usize,
    /// Every member's tokens: the layout of its block in the exchanged buffers.
    pub layout: Vec<LocalTokens>,
    /// Tokens per sequence of one block: the longest any member holds (in any group of the job,
    /// so that every group's blocks are equal), the others padded to it.
    pub longest: usize,
    /// Query and K/V heads of each member.
    pub heads: Vec<(Range<usize>, Range<usize>)>,
    pub head_dim: usize,
}

impl HeadGroup {
    pub fn new(m: &ModelConfig, member: usize, layout: Vec<LocalTokens>, longest: usize) -> Self {
        let heads = (0..layout.len()).map(|j| Shard::head_slice(m, layout.len(), j)).collect();
        HeadGroup { member, layout, longest, heads, head_dim: m.head_dim() }
    }

    pub fn size(&self) -> usize {
        self.layout.len()
    }

    /// The heads this rank attends with, after the exchange.
    pub fn attention_heads(&self) -> Heads {
        let (q, kv) = &self.heads[self.member];
        Heads { heads: q.len(), kv_heads: kv.len(), head_dim: self.head_dim }
    }

    /// Widths of this rank's slice: query (= output) columns, K (= V) columns.
    pub fn widths(&self) -> (usize, usize) {
        let h = self.attention_heads();
        (h.width(), h.kv_width())
    }

    /// Rows of one padded block, and of a whole exchanged buffer, for `seqs` sequences.
    pub fn rows(&self, seqs: usize) -> (usize, usize) {
        (seqs * self.longest, self.size() * seqs * self.longest)
    }

    /// The exchanged buffers' layout: member i's tokens in block i.
    pub fn blocks(&self, seqs: usize) -> Blocks {
        Blocks::padded(seqs, &self.layout, self.rows(seqs).0)
    }

    /// [rows, cols] of the exchange buffers of `micro_batch` sequences, in `Exchange`'s order:
    /// q_pack (which also takes the output back), q_all, kv_pack, kv_all, attn_all.
    pub fn buffers(&self, micro_batch: usize) -> Vec<(usize, usize)> {
        let (_, all) = self.rows(micro_batch);
        let (w, kvw) = self.widths();
        vec![(all, w), (all, w), (all, 2 * kvw), (all, 2 * kvw), (all, w)]
    }

    /// The three all-to-alls of a layer and micro-batch (Q and K|V out, the output back), each
    /// sending and receiving (n - 1) / n of its buffer; `peers` are the group's world ranks.
    pub fn traffic(&self, micro_batch: usize, calls: u64, peers: Vec<usize>) -> Vec<Transfer> {
        let (w, kvw) = self.widths();
        self.transfers(micro_batch, calls, peers, [("Q to heads", w), ("K/V to heads", 2 * kvw), ("output to tokens", w)])
    }

    /// The three all-to-alls of a layer's backward (issue 30): the output's gradient to heads,
    /// then dQ and dK|dV back to tokens, as large as the forward's.
    pub fn backward_traffic(&self, micro_batch: usize, calls: u64, peers: Vec<usize>) -> Vec<Transfer> {
        let (w, kvw) = self.widths();
        self.transfers(micro_batch, calls, peers, [("dO to heads", w), ("dQ to tokens", w), ("dK/dV to tokens", 2 * kvw)])
    }

    fn transfers(&self, micro_batch: usize, calls: u64, peers: Vec<usize>, what: [(&'static str, usize); 3]) -> Vec<Transfer> {
        let n = self.size() as u64;
        let (_, all) = self.rows(micro_batch);
        let transfer = |what, cols: usize| {
            let buffer = (all * cols * 2) as u64;
            let wire = (n - 1) * buffer / n;
            Transfer {
                op: Op::AllToAll,
                what,
                peers: peers.clone(),
                buffer_bytes: buffer,
                sent: wire,
                received: wire,
                calls,
                overlapped: false,
            }
        };
        what.into_iter().map(|(w, cols)| transfer(w, cols)).collect()
    }

    /// Q and K|V from [this rank's tokens, all heads] in ws into [every member's tokens, this
    /// rank's heads] in ex.q_all and ex.kv_all: pack block j with member j's head slice, then the
    /// all-to-alls over `comm` (the group).
    pub fn to_heads<B: Backend, C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        ws: &Workspace<B>,
        ex: &mut Exchange<B>,
        seqs: usize,
    ) -> Result<()> {
        let hd = self.head_dim;
        let rows = ws.q.rows();
        let (block, all) = self.rows(seqs);
        let kv_all_width = ws.heads.kv_width();
        let copy = |src_col0, dst_row0, cols| BlockCopy { src_row0: 0, src_col0, dst_row0, dst_col0: 0, rows, cols };
        for b in [&mut ex.q_pack, &mut ex.q_all, &mut ex.kv_pack, &mut ex.kv_all] {
            b.set_rows(all);
        }
        for (j, (q, kv)) in self.heads.iter().enumerate() {
            let (w, kvw) = (q.len() * hd, kv.len() * hd);
            be.copy_block(&ws.q, &mut ex.q_pack, copy(q.start * hd, j * block, w))?;
            let k0 = kv.start * hd;
            be.copy_block(&ws.kv, &mut ex.kv_pack, copy(k0, j * block, kvw))?;
            be.copy_block(&ws.kv, &mut ex.kv_pack, BlockCopy { dst_col0: kvw, ..copy(kv_all_width + k0, j * block, kvw) })?;
        }
        comm.all_to_all(&ex.q_pack, &mut ex.q_all).context("ulysses all-to-all of Q")?;
        comm.all_to_all(&ex.kv_pack, &mut ex.kv_all).context("ulysses all-to-all of K/V")
    }

    /// The attention output of this rank's heads (ex.attn_all, every member's tokens) back into
    /// ws.attn ([this rank's tokens, all heads]): the all-to-all over `comm`, then unpack.
    pub fn to_tokens<B: Backend, C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        ws: &mut Workspace<B>,
        ex: &mut Exchange<B>,
        seqs: usize,
    ) -> Result<()> {
        let hd = self.head_dim;
        let rows = ws.q.rows();
        let (block, _) = self.rows(seqs);
        // Block i of attn_all (member i's tokens, this rank's heads) goes to member i; q_pack receives.
        comm.all_to_all(&ex.attn_all, &mut ex.q_pack).context("ulysses all-to-all of the attention output")?;
        ws.attn.set_rows(rows);
        for (j, (q, _)) in self.heads.iter().enumerate() {
            let copy = BlockCopy { src_row0: j * block, src_col0: 0, dst_row0: 0, dst_col0: q.start * hd, rows, cols: q.len() * hd };
            be.copy_block(&ex.q_pack, &mut ws.attn, copy)?;
        }
        Ok(())
    }
}

impl HeadGroup {
    /// The backward of `to_tokens`: dO ([this rank's tokens, all heads], `d_attn`) into
    /// [every member's tokens, this rank's heads] in ex.q_all.
    pub fn grad_to_heads<B: Backend, C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        d_attn: &B::Act,
        ex: &mut Exchange<B>,
        seqs: usize,
    ) -> Result<()> {
        let (hd, rows) = (self.head_dim, d_attn.rows());
        let (block, all) = self.rows(seqs);
        ex.q_pack.set_rows(all);
        ex.q_all.set_rows(all);
        for (j, (q, _)) in self.heads.iter().enumerate() {
            let copy = BlockCopy { src_row0: 0, src_col0: q.start * hd, dst_row0: j * block, dst_col0: 0, rows, cols: q.len() * hd };
            be.copy_block(d_attn, &mut ex.q_pack, copy)?;
        }
        comm.all_to_all(&ex.q_pack, &mut ex.q_all).context("ulysses backward all-to-all of dO")
    }

    /// The backward of `to_heads`: dQ (ex.q_all) and dK|dV (ex.kv_all) of this rank's heads
    /// over every member's tokens, back to [this rank's tokens, all heads] in `dq` and `dkv`.
    /// Members that share a replicated K/V head each hold a part of its gradient: the parts are
    /// summed (`zero` is an FP32 buffer at least as wide as dkv's rows, used to clear).
    #[allow(clippy::too_many_arguments)]
    pub fn grads_to_tokens<B: Backend, C: Communicator<B>>(
        &self,
        be: &B,
        comm: &C,
        ex: &mut Exchange<B>,
        (dq, dkv, spare): (&mut B::Act, &mut B::Act, &mut B::Act),
        zero: &mut B::Acc,
        rows: usize,
        seqs: usize,
    ) -> Result<()> {
        let hd = self.head_dim;
        let (block, _) = self.rows(seqs);
        comm.all_to_all(&ex.q_all, &mut ex.q_pack).context("ulysses backward all-to-all of dQ")?;
        comm.all_to_all(&ex.kv_all, &mut ex.kv_pack).context("ulysses backward all-to-all of dK/dV")?;
        dq.set_rows(rows);
        let kv_width = dkv.cols() / 2;
        let mut clear = |be: &B, x: &mut B::Act| -> Result<()> {
            zero.set_rows(rows);
            be.zero_acc(zero)?;
            be.attention_store(zero, x)
        };
        clear(be, dkv)?;
        let mut seen: Vec<Range<usize>> = Vec::new();
        for (j, (q, kv)) in self.heads.iter().enumerate() {
            let copy = |src_col0, dst_col0, cols| BlockCopy { src_row0: j * block, src_col0, dst_row0: 0, dst_col0, rows, cols };
            be.copy_block(&ex.q_pack, dq, copy(0, q.start * hd, q.len() * hd))?;
            let (k0, kvw) = (kv.start * hd, kv.len() * hd);
            let replica = seen.contains(kv);
            let target: &mut B::Act = if replica { &mut *spare } else { &mut *dkv };
            if replica {
                target.set_rows(rows);
                clear(be, target)?;
            }
            be.copy_block(&ex.kv_pack, target, copy(0, k0, kvw))?;
            be.copy_block(&ex.kv_pack, target, copy(kvw, kv_width + k0, kvw))?;
            if replica {
                be.add(dkv, spare)?;
            }
            seen.push(kv.clone());
        }
        Ok(())
    }
}

/// The strategy's own buffers, allocated in `HeadGroup::buffers`' order.
pub struct Exchange<B: Backend> {
    pub q_pack: B::Act,
    pub q_all: B::Act,
    pub kv_pack: B::Act,
    pub kv_all: B::Act,
    pub attn_all: B::Act,
}

impl<B: Backend> Exchange<B> {
    /// The five buffers of `shapes` (the first five, in order).
    pub fn alloc(be: &B, shapes: &[(usize, usize)]) -> Result<Self> {
        let mut next = shapes.iter().map(|&(r, c)| be.alloc_act(r, c));
        let mut take = || next.next().expect("five exchange buffers stated");
        Ok(Exchange { q_pack: take()?, q_all: take()?, kv_pack: take()?, kv_all: take()?, attn_all: take()? })
    }
}
