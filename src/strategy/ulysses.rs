//! DeepSpeed-Ulysses: tokens are sharded everywhere but inside attention. Every rank holds the full
//! weights and a contiguous chunk of every sequence; per layer, after its QKV projection and RoPE
//! at the true positions, an all-to-all turns Q, K and V from [its tokens, all heads] into [every
//! token, heads / P] (K/V heads split the same way, or replicated where P exceeds them); attention
//! is local over the whole sequence; an all-to-all turns the output back into [its tokens, all
//! heads] for the output projection and MLP. P must divide the heads.
//!
//! The all-to-all moves equal blocks: each rank's rows are padded to the longest chunk, and
//! block j of a packed buffer holds this rank's rows of rank j's head slice.

use super::{CommProjection, ConfigError, Op, Placement, ProjectionInput, Spec, Stack, Strategy, Transfer};
use crate::backend::{Backend, BlockCopy, Heads, Matrix};
use crate::comm::Communicator;
use crate::config::{Layout, RunConfig, StrategyKind};
use crate::model::{attend, Batch, Shard, Workspace};
use crate::topology::{chunk_count, even_slice, ring_tokens, LocalTokens};
use anyhow::{Context, Result};
use std::ops::Range;

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Ulysses,
    size_names: &["sp"],
    sizes: super::sp_sizes,
    uses_layout: false,
    world: super::sp_world,
    check,
    placement,
    traffic,
    buffers,
    splits: super::no_splits,
    project,
};

fn tokens(cfg: &RunConfig, rank: usize) -> LocalTokens {
    ring_tokens(Layout::Contiguous, cfg.model.seq_len, cfg.ring, rank)
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let m = &cfg.model;
    let p = cfg.ring;
    if p == 0 {
        return Err(ConfigError("--ring 0: must be at least 1".into()));
    }
    if p != world {
        return Err(ConfigError(format!("--ring {p}: the job has {world} ranks (world size must equal the ulysses size, set by --ring)")));
    }
    if m.heads % p != 0 {
        return Err(ConfigError(format!("--heads {}: ulysses over {p} ranks needs the heads divisible by the ranks", m.heads)));
    }
    if m.kv_heads % p != 0 && p % m.kv_heads != 0 {
        return Err(ConfigError(format!(
            "--kv-heads {}: ulysses over {p} ranks needs them divisible by the ranks, or the ranks a multiple of them (each K/V head replicated)",
            m.kv_heads
        )));
    }
    if m.seq_len < chunk_count(Layout::Contiguous, p) {
        return Err(ConfigError(format!("--seq-len {}: ulysses over {p} ranks needs at least {p} tokens (one per rank)", m.seq_len)));
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
        attention_heads: even_slice(m.heads, cfg.ring, rank),
        outputs: true,
    }
}

/// The K/V heads rank `rank` attends with: kv_heads / P of them, or the one its query heads share.
fn kv_heads(cfg: &RunConfig, rank: usize) -> Range<usize> {
    let (kv, p) = (cfg.model.kv_heads, cfg.ring);
    if kv % p == 0 {
        even_slice(kv, p, rank)
    } else {
        let g = rank / (p / kv);
        g..g + 1
    }
}

/// Rows of one rank's padded block per micro-batch, and of a whole packed buffer.
fn block_rows(cfg: &RunConfig) -> (usize, usize) {
    let block = cfg.micro_batch * super::longest_tokens(cfg);
    (block, cfg.ring * block)
}

/// Widths of the attention's head slice: query (= output) columns, K (= V) columns.
fn slice_widths(cfg: &RunConfig, rank: usize) -> (usize, usize) {
    let hd = cfg.model.head_dim();
    (cfg.model.heads / cfg.ring * hd, kv_heads(cfg, rank).len() * hd)
}

/// The workspace for its own rows, accumulators for every token of its heads, and the packed and
/// exchanged Q, K|V and output: q_pack (which also takes the output back), q_all, kv_pack, kv_all,
/// attn_all.
fn buffers(cfg: &RunConfig, rank: usize) -> super::Buffers {
    let local = super::local_buffers(cfg, rank);
    let (_, all) = block_rows(cfg);
    let (w, kvw) = slice_widths(cfg, rank);
    super::Buffers {
        acc_rows: all,
        acc_heads: cfg.model.heads / cfg.ring,
        extra: vec![(all, w), (all, w), (all, 2 * kvw), (all, 2 * kvw), (all, w)],
        attention_kv: (all, 2 * kvw),
        ..local
    }
}

/// Per layer and micro-batch three all-to-alls of padded blocks: Q and K|V out, the output back.
/// Each sends and receives (P - 1) / P of its buffer.
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let p = cfg.ring as u64;
    let (_, all) = block_rows(cfg);
    let (w, kvw) = slice_widths(cfg, rank);
    let calls = (cfg.model.layers * cfg.micro_batches()) as u64;
    let transfer = |what, cols: usize| {
        let buffer = (all * cols * 2) as u64;
        let wire = (p - 1) * buffer / p;
        Transfer {
            op: Op::AllToAll,
            what,
            peers: (0..cfg.ring).collect(),
            buffer_bytes: buffer,
            sent: wire,
            received: wire,
            calls,
            overlapped: false,
        }
    };
    vec![transfer("Q to heads", w), transfer("K/V to heads", 2 * kvw), transfer("output to tokens", w)]
}

/// The all-to-alls are exposed (attention needs all of Q, K and V first).
fn project(_: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let (crosses, bw) = x.link(&x.traffic[0].peers);
    let per_layer: f64 = x.traffic.iter().map(|t| x.seconds(t)).sum();
    CommProjection {
        crosses_nodes: crosses,
        link_bytes_per_s: bw,
        exposed_s: x.exposed_s(),
        hidden_fraction: 1.0,
        bubble_s: 0.0,
        details: vec![("all-to-alls per layer", per_layer)],
    }
}

/// The strategy's own buffers, allocated in `buffers`' order.
struct Exchange<B: Backend> {
    q_pack: B::Act,
    q_all: B::Act,
    kv_pack: B::Act,
    kv_all: B::Act,
    attn_all: B::Act,
}

pub struct Ulysses<B: Backend> {
    cfg: RunConfig,
    rank: usize,
    /// Every rank's tokens: the layout of its block in the exchanged buffers.
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
    ex: Exchange<B>,
}

impl<B: Backend> Ulysses<B> {
    pub fn new(cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        let stack = Stack::of(cfg, be, rank)?;
        let mut extra = buffers(cfg, rank).extra.into_iter().map(|(r, c)| be.alloc_act(r, c));
        let mut next = || extra.next().expect("five buffers stated");
        let ex = Exchange { q_pack: next()?, q_all: next()?, kv_pack: next()?, kv_all: next()?, attn_all: next()? };
        let layout = (0..cfg.ring).map(|r| tokens(cfg, r)).collect();
        Ok(Ulysses { cfg: cfg.clone(), rank, layout, stack, ex })
    }
}

/// Attention of this rank's heads over every token: pack, all-to-all, attend, all-to-all back, unpack.
#[allow(clippy::too_many_arguments)]
fn ulysses_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    cfg: &RunConfig,
    rank: usize,
    ws: &mut Workspace<B>,
    ex: &mut Exchange<B>,
    batch: &Batch,
    layout: &[LocalTokens],
) -> Result<()> {
    let (p, hd) = (cfg.ring, cfg.model.head_dim());
    let rows = batch.rows();
    let block = batch.seqs * layout.iter().map(LocalTokens::len).max().unwrap_or(0);
    let all = p * block;
    let (w, kvw) = slice_widths(cfg, rank);
    let kv_all_width = ws.heads.kv_width();
    let copy = |src_row0, src_col0, dst_row0, dst_col0, cols| BlockCopy { src_row0, src_col0, dst_row0, dst_col0, rows, cols };

    // Pack: block j holds this rank's rows of rank j's query heads, and of its K and V heads.
    for b in [&mut ex.q_pack, &mut ex.q_all, &mut ex.kv_pack, &mut ex.kv_all] {
        b.set_rows(all);
    }
    for j in 0..p {
        be.copy_block(&ws.q, &mut ex.q_pack, copy(0, j * w, j * block, 0, w))?;
        let k0 = kv_heads(cfg, j).start * hd;
        be.copy_block(&ws.kv, &mut ex.kv_pack, copy(0, k0, j * block, 0, kvw))?;
        be.copy_block(&ws.kv, &mut ex.kv_pack, copy(0, kv_all_width + k0, j * block, kvw, kvw))?;
    }
    comm.all_to_all(&ex.q_pack, &mut ex.q_all).context("ulysses all-to-all of Q")?;
    comm.all_to_all(&ex.kv_pack, &mut ex.kv_all).context("ulysses all-to-all of K/V")?;

    // Block i of q_all and kv_all is rank i's tokens: every pair of blocks, at true positions.
    let heads = Heads { heads: cfg.model.heads / p, kv_heads: kvw / hd, head_dim: hd };
    ws.o.set_rows(all);
    ws.lse.set_rows(all);
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    if batch.seqs == 1 && layout.iter().all(|t| t.len() == block) {
        // One sequence in equal chunks: the blocks are the sequence in order, one attention call
        // over all of it (one launch that fills the GPU, not P^2 small ones).
        let whole = LocalTokens::whole(cfg.model.seq_len);
        let q = Batch { first_seq: batch.first_seq, seqs: 1, tokens: &whole };
        attend(be, &ex.q_all, 0, &ex.kv_all, 0, heads, &q, &whole, cfg.causal, &mut ws.o, &mut ws.lse)?;
    } else {
        for (i, q_tokens) in layout.iter().enumerate() {
            let q = Batch { first_seq: batch.first_seq, seqs: batch.seqs, tokens: q_tokens };
            for (k, kv_tokens) in layout.iter().enumerate() {
                attend(be, &ex.q_all, i * block, &ex.kv_all, k * block, heads, &q, kv_tokens, cfg.causal, &mut ws.o, &mut ws.lse)?;
            }
        }
    }
    be.attention_store(&ws.o, &mut ex.attn_all)?;

    // Back: block i of attn_all (rank i's tokens, this rank's heads) to rank i; q_pack receives.
    comm.all_to_all(&ex.attn_all, &mut ex.q_pack).context("ulysses all-to-all of the attention output")?;
    ws.attn.set_rows(rows);
    for j in 0..p {
        be.copy_block(&ex.q_pack, &mut ws.attn, copy(j * block, 0, 0, j * w, w))?;
    }
    Ok(())
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Ulysses<B> {
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()> {
        let (cfg, rank, layout, ex) = (&self.cfg, self.rank, &self.layout, &mut self.ex);
        self.stack.forward_all(be, cfg, keep, &mut |ws, batch| ulysses_attention(be, comm, cfg, rank, ws, ex, batch, layout))
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }
}
