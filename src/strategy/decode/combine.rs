//! Partial attention across a group that shares the K/V cache by tokens: every member's new
//! queries reach every member (around the ring, Meta's pass-Q, or by one all-gather, vLLM's
//! decode context parallel), each member attends them to its share of the cache, and the FP32
//! partial results (o, lse) go back to each query's owner in one all-to-all, to be merged there
//! by the log-sum-exp rule.

use super::cache::{runs, KvCache, Run};
use crate::backend::{Backend, BlockCopy, Heads, Matrix};
use crate::comm::Communicator;
use anyhow::{Context, Result};

/// How a group's queries reach every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Around the ring, one block a step, each step's transfer under the attention of the block
    /// in hand (pass-Q).
    Ring,
    /// One all-gather of every member's block.
    Gather,
}

/// The query rows a member contributes: row k is the new token of sequence `rows[k]`, or padding.
pub type QueryRows = Vec<Option<usize>>;

/// The members' blocks and the widths of one member's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRows {
    pub blocks: Vec<QueryRows>,
    pub heads: Heads,
}

impl GroupRows {
    /// Rows of the longest block: what a padded collective moves per member.
    pub fn block_rows(&self) -> usize {
        self.blocks.iter().map(Vec::len).max().unwrap_or(0).max(1)
    }

    /// Columns of a block on the wire: Q, then K|V.
    pub fn wire_cols(&self) -> usize {
        self.heads.width() + 2 * self.heads.kv_width()
    }

    /// BF16 buffers [rows, cols] in `Combine`'s order: wire x 2, gathered, q_all, wire_o x 2,
    /// wire_lse x 2.
    pub fn act_shapes(&self, route: Route) -> Vec<(usize, usize)> {
        let (n, br, wc) = (self.blocks.len(), self.block_rows(), self.wire_cols());
        let all = n * br;
        let gathered = if route == Route::Gather { all } else { 0 };
        let (w, h) = (self.heads.width(), self.heads.heads);
        vec![(br, wc), (br, wc), (gathered, wc), (all, w), (all, 2 * w), (all, 2 * w), (all, 2 * h), (all, 2 * h)]
    }

    /// FP32 buffers [rows, cols]: the partial o and lse of every member's block.
    pub fn acc_shapes(&self) -> Vec<(usize, usize)> {
        let all = self.blocks.len() * self.block_rows();
        vec![(all, self.heads.width()), (all, self.heads.heads)]
    }
}

pub struct Combine<B: Backend> {
    rows: GroupRows,
    route: Route,
    member: usize,
    wire: [B::Act; 2],
    gathered: B::Act,
    q_all: B::Act,
    part_o: B::Acc,
    part_lse: B::Acc,
    wire_o: [B::Act; 2],
    wire_lse: [B::Act; 2],
}

impl<B: Backend> Combine<B> {
    pub fn new(be: &B, rows: GroupRows, route: Route, member: usize) -> Result<Self> {
        let acts = rows.act_shapes(route).into_iter().map(|(r, c)| be.alloc_act(r, c)).collect::<Result<Vec<_>>>()?;
        let accs = rows.acc_shapes().into_iter().map(|(r, c)| be.alloc_acc(r, c)).collect::<Result<Vec<_>>>()?;
        let mut acts = acts.into_iter();
        let mut accs = accs.into_iter();
        let mut act = || acts.next().expect("eight buffers stated");
        let (wire, gathered, q_all) = ([act(), act()], act(), act());
        let (wire_o, wire_lse) = ([act(), act()], [act(), act()]);
        let (part_o, part_lse) = (accs.next().expect("o"), accs.next().expect("lse"));
        Ok(Combine { rows, route, member, wire, gathered, q_all, part_o, part_lse, wire_o, wire_lse })
    }

    /// Attention of this member's queries (rows of `q`, K|V of the new tokens in `kv`, one row
    /// per entry of its block) against the whole group's cache, merged into (o, lse) with as many
    /// rows. `comm` is the group, this member at its rank `member`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend<C: Communicator<B>>(
        &mut self,
        be: &B,
        comm: &C,
        cache: &mut KvCache<B>,
        layer: usize,
        q: &B::Act,
        kv: &B::Act,
        o: &mut B::Acc,
        lse: &mut B::Acc,
        scratch: &mut B::Acc,
    ) -> Result<()> {
        let (n, br, member) = (self.rows.blocks.len(), self.rows.block_rows(), self.member);
        let (w, kvc) = (self.rows.heads.width(), 2 * self.rows.heads.kv_width());
        let len = self.rows.blocks[member].len();
        let copy = |dst_col0, cols| BlockCopy { src_row0: 0, src_col0: 0, dst_row0: 0, dst_col0, rows: len, cols };
        self.wire[0].set_rows(len);
        be.copy_block(q, &mut self.wire[0], copy(0, w))?;
        be.copy_block(kv, &mut self.wire[0], copy(w, kvc))?;
        for b in [&mut self.part_o, &mut self.part_lse] {
            b.set_rows(n * br);
        }
        be.attention_reset(&mut self.part_o, &mut self.part_lse)?;
        self.q_all.set_rows(n * br);
        let mut parts = Parts { rows: &self.rows, q_all: &mut self.q_all, o: &mut self.part_o, lse: &mut self.part_lse, scratch, br };
        match self.route {
            Route::Gather => {
                self.wire[0].set_rows(br);
                self.gathered.set_rows(n * br);
                comm.all_gather(&self.wire[0], &mut self.gathered).context("decode all-gather of the new tokens' Q, K, V")?;
                for j in 0..n {
                    parts.attend(be, cache, layer, j, &self.gathered, j * br)?;
                }
            }
            Route::Ring => {
                let (to, from) = ((member + 1) % n, (member + n - 1) % n);
                let [cur, next] = &mut self.wire;
                for t in 0..n {
                    let origin = (member + n - t) % n;
                    if t + 1 < n {
                        next.set_rows(self.rows.blocks[(origin + n - 1) % n].len());
                        let mut work = || parts.attend(be, cache, layer, origin, cur, 0);
                        comm.exchange(cur, to, next, from, &mut work).context("decode ring step of the new tokens' Q, K, V")?;
                        std::mem::swap(cur, next);
                    } else {
                        parts.attend(be, cache, layer, origin, cur, 0)?;
                    }
                }
            }
        }
        // Each member's partial results go to it, and ours come back.
        be.pack_acc(&self.part_o, &mut self.wire_o[0])?;
        be.pack_acc(&self.part_lse, &mut self.wire_lse[0])?;
        let ([o_out, o_in], [l_out, l_in]) = (&mut self.wire_o, &mut self.wire_lse);
        o_in.set_rows(n * br);
        l_in.set_rows(n * br);
        comm.all_to_all(o_out, o_in).context("decode all-to-all of the partial outputs")?;
        comm.all_to_all(l_out, l_in).context("decode all-to-all of the partial LSEs")?;
        be.unpack_acc(o_in, &mut self.part_o)?;
        be.unpack_acc(l_in, &mut self.part_lse)?;
        o.set_rows(len);
        lse.set_rows(len);
        be.attention_reset(o, lse)?;
        for i in 0..n {
            be.attention_merge(o, lse, &self.part_o, &self.part_lse, i * br)?;
        }
        Ok(())
    }
}

/// Where the partial attention of each member's block lands: its queries in q_all and its
/// partial (o, lse) at rows j x br for member j.
struct Parts<'a, B: Backend> {
    rows: &'a GroupRows,
    q_all: &'a mut B::Act,
    o: &'a mut B::Acc,
    lse: &'a mut B::Acc,
    scratch: &'a mut B::Acc,
    br: usize,
}

impl<B: Backend> Parts<'_, B> {
    /// Member j's block, at row `row0` of `src` ([Q | K | V] rows): its new K/V appended where
    /// this rank appends this step, its queries attended to this rank's cache.
    fn attend(&mut self, be: &B, cache: &mut KvCache<B>, layer: usize, j: usize, src: &B::Act, row0: usize) -> Result<()> {
        let block = &self.rows.blocks[j];
        let w = self.rows.heads.width();
        if cache.appending() {
            for (k, seq) in block.iter().enumerate() {
                if let Some(seq) = *seq {
                    cache.append(be, layer, src, row0 + k, w, seq)?;
                }
            }
        }
        let at = j * self.br;
        let copy = BlockCopy { src_row0: row0, src_col0: 0, dst_row0: at, dst_col0: 0, rows: block.len(), cols: w };
        be.copy_block(src, self.q_all, copy)?;
        for run in runs(block) {
            cache.attend(be, layer, self.q_all, Run { row: at + run.row, ..run }, self.rows.heads, self.o, self.lse, self.scratch)?;
        }
        Ok(())
    }
}

/// Attention of queries whose whole cache is on this rank (the single rank, tensor parallelism's
/// heads, Ulysses' heads): row k of `q` (and of `kv`, whose K|V it appends where this rank
/// appends) is sequence rows[k]'s new token; (o, lse) take as many rows.
#[allow(clippy::too_many_arguments)]
pub fn attend_local<B: Backend>(
    be: &B,
    cache: &mut KvCache<B>,
    layer: usize,
    heads: Heads,
    q: &B::Act,
    kv: &B::Act,
    rows: &QueryRows,
    o: &mut B::Acc,
    lse: &mut B::Acc,
    scratch: &mut B::Acc,
) -> Result<()> {
    o.set_rows(rows.len());
    lse.set_rows(rows.len());
    be.attention_reset(o, lse)?;
    if cache.appending() {
        for (k, seq) in rows.iter().enumerate() {
            if let Some(seq) = *seq {
                cache.append(be, layer, kv, k, 0, seq)?;
            }
        }
    }
    for run in runs(rows) {
        cache.attend(be, layer, q, run, heads, o, lse, scratch)?;
    }
    Ok(())
}
