//! USP, the 2-D hybrid of Ulysses and ring attention: P = U x R. Ulysses groups of U consecutive
//! ranks (inside a node) and a ring of R over the groups. Each sequence is laid out over the R
//! ring positions under `--layout`, then each position's tokens over its U members in order
//! (`topology::usp_tokens`). Per layer, after the local QKV projection and RoPE:
//! 1. inside the group, all-to-alls turn Q and K|V from [its tokens, all heads] into [the group's
//!    tokens, heads / U] (K/V heads split, or replicated where U exceeds them), as Ulysses does;
//! 2. the ranks with the same member index form a ring over the R groups: ring attention of the
//!    group's queries against every group's K/V of that head slice, the next block moving while
//!    the one in hand is attended, merged in FP32 (o, lse);
//! 3. an all-to-all turns the output back into [its tokens, all heads] for the output projection
//!    and MLP, which are local.
//!
//! U = P is ulysses; R = P is ring. Rank r = u + U j (member u of the group at ring position j).
//! Every member's block is padded to the longest member's anywhere in the job, so all-to-all and
//! ring blocks are equal everywhere; the padding rows are never attended.

use super::decode::{self, appended_steps, combine::Route, owned_rows, padded, CacheShape, DecodePlacement, Decoder, Group};
use super::heads::{Exchange, HeadGroup};
use super::ring::{ring_pass, ring_steps};
use super::spec::SizeFlags;
use super::spec::{CommProjection, Op, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::ulysses::check_heads;
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, Split, StrategyKind};
use crate::model::{Batch, Blocks, Shard, Workspace};
use crate::topology::{grid_coord, grid_rank, ring_tokens, usp_tokens, LocalTokens};
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Usp,
    size_names: &["ulysses", "ring"],
    sizes: |cfg| vec![cfg.split.ulysses(), cfg.split.ring()],
    resolve_sizes,
    uses_layout: true,
    world: |cfg| cfg.split.ulysses() * cfg.split.ring(),
    check,
    placement,
    traffic,
    buffers,
    splits,
    project,
    decode,
    train: None,
};

/// --ulysses and --ring (under `--strategy all`, --ring is the ring's and only --ulysses counts);
/// a missing one from the other, neither: the group inside a node, as `two_d_sizes` says.
fn resolve_sizes(cfg: &mut RunConfig, flags: &SizeFlags, world: usize) {
    let ring = if flags.all { None } else { flags.ring };
    let probe = cfg.clone();
    let (u, r) = super::shared::two_d_sizes(flags.ulysses, ring, world, |u| check_heads(&probe, u, "--ulysses").is_ok());
    cfg.split = Split::Usp { u, r };
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    super::shared::check_two_d(cfg, ("--ulysses", cfg.split.ulysses()), ("--ring", cfg.split.ring()), world)?;
    check_heads(cfg, cfg.split.ulysses(), "--ulysses")?;
    super::shared::check_chunks(cfg, " ring", cfg.split.ring())?;
    let (u, s) = (cfg.split.ulysses(), cfg.model.seq_len);
    if let Some((j, n)) = (0..cfg.split.ring()).map(|j| (j, ring_tokens(cfg.layout, s, cfg.split.ring(), j).len())).find(|&(_, n)| n < u) {
        return Err(ConfigError(format!(
            "--seq-len {s}: usp ring position {j} holds {n} token{}, fewer than the {u} members of its Ulysses group (--ulysses {u})",
            if n == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// (member index in its Ulysses group, ring position) of `rank`.
fn coord(cfg: &RunConfig, rank: usize) -> (usize, usize) {
    grid_coord(rank, cfg.split.ulysses())
}

/// Every ring position's members' tokens: `members[j][u]` is rank u + U j's.
fn members(cfg: &RunConfig) -> Vec<Vec<LocalTokens>> {
    let (u, r, s) = (cfg.split.ulysses(), cfg.split.ring(), cfg.model.seq_len);
    (0..r).map(|j| (0..u).map(|m| usp_tokens(cfg.layout, s, u, r, m, j)).collect()).collect()
}

/// The Ulysses group of `rank`, its blocks padded to the longest member anywhere.
fn group(cfg: &RunConfig, rank: usize) -> HeadGroup {
    let all = members(cfg);
    let longest = all.iter().flatten().map(LocalTokens::len).max().unwrap_or(0);
    let (u, j) = coord(cfg, rank);
    HeadGroup::new(&cfg.model, u, all[j].clone(), longest)
}

/// Its run of its ring position's tokens for the linear layers; in attention, every token of its
/// ring position for its heads / U query heads.
fn placement(cfg: &RunConfig, rank: usize) -> Placement {
    let m = &cfg.model;
    let (u, j) = coord(cfg, rank);
    Placement {
        tokens: usp_tokens(cfg.layout, m.seq_len, cfg.split.ulysses(), cfg.split.ring(), u, j),
        shard: Shard::whole(m),
        layers: 0..m.layers,
        attention_tokens: ring_tokens(cfg.layout, m.seq_len, cfg.split.ring(), j),
        attention_heads: Shard::head_slice(m, cfg.split.ulysses(), u).0,
        outputs: true,
    }
}

/// The Ulysses group (color = ring position, key = member), then the ring of the same member
/// index (color = member, key = ring position).
fn splits(cfg: &RunConfig, rank: usize) -> Vec<(usize, usize)> {
    let (u, j) = coord(cfg, rank);
    vec![(j, u), (u, j)]
}

/// The workspace for its own rows; accumulators for its group's tokens and its heads; the
/// exchange buffers of a Ulysses group, and the buffer the ring's next K/V block lands in.
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let local = super::shared::local_buffers(cfg, &placement(cfg, rank));
    let g = group(cfg, rank);
    let (_, all) = g.rows(cfg.micro_batch);
    let (_, kvw) = g.widths();
    let mut extra = g.buffers(cfg.micro_batch);
    extra.push((all, 2 * kvw));
    crate::model::Buffers { acc_rows: all, acc_heads: g.attention_heads().heads, extra, attention_kv: (all, 2 * kvw), ..local }
}

/// Per layer and micro-batch: the group's three all-to-alls, and R - 1 ring steps of the
/// group's K/V of its head slice (U padded blocks, every step the same size).
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let (u, j) = coord(cfg, rank);
    let g = group(cfg, rank);
    let calls = (cfg.model.layers * cfg.micro_batches()) as u64;
    let (_, all) = g.rows(cfg.micro_batch);
    let (_, kvw) = g.widths();
    let mut out = g.traffic(cfg.micro_batch, calls, (0..cfg.split.ulysses()).map(|i| grid_rank(i, j, cfg.split.ulysses())).collect());
    let block = (all * 2 * kvw * 2) as u64;
    out.extend(ring_steps(j, cfg.split.ring(), |_| block, |pos| grid_rank(u, pos, cfg.split.ulysses()), calls));
    out
}

/// The all-to-alls are exposed (at the group's link); the ring's steps hide under each step's
/// attention, at the ring's link.
fn project(cfg: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let (u, j) = coord(cfg, x.rank);
    let group: Vec<usize> = (0..cfg.split.ulysses()).map(|i| grid_rank(i, j, cfg.split.ulysses())).collect();
    let ring: Vec<usize> = (0..cfg.split.ring()).map(|pos| grid_rank(u, pos, cfg.split.ulysses())).collect();
    super::ring::project_two_d(
        x,
        (Op::AllToAll, "all-to-alls per layer", &group),
        &ring,
        x.attention_per_layer_mb_s / cfg.split.ring() as f64,
    )
}

/// Decode: the new tokens of an even slice of the sequences per rank; Ulysses inside the group
/// (the cache by heads / U of the group's tokens), the group's queries around the ring of
/// groups (pass-Q), step i's K/V appended at ring position i mod R.
fn decode(cfg: &RunConfig, rank: usize) -> DecodePlacement {
    let m = &cfg.model;
    let (uu, r, p) = (cfg.split.ulysses(), cfg.split.ring(), cfg.split.ulysses() * cfg.split.ring());
    let (member, j) = coord(cfg, rank);
    let rows = m.batch.div_ceil(p).max(1);
    let member_rows = |pos: usize, i: usize| padded(owned_rows(m.batch, p, grid_rank(i, pos, uu)), rows);
    let group_rows = |pos: usize| (0..uu).flat_map(|i| member_rows(pos, i)).collect::<Vec<_>>();
    let cache = CacheShape {
        layers: m.layers,
        batch: m.batch,
        prompt: members(cfg)[j].iter().map(LocalTokens::len).sum(),
        slots: appended_steps(cfg.decode_tokens, r, j),
        kv_cols: 2 * Shard::head_slice(m, uu, member).1.len() * m.head_dim(),
    };
    let group = Group { ranks: (0..uu).map(|i| grid_rank(i, j, uu)).collect(), member };
    let ring = Group { ranks: (0..r).map(|pos| grid_rank(member, pos, uu)).collect(), member: j };
    DecodePlacement {
        heads: Some((group, (0..uu).map(|i| member_rows(j, i)).collect())),
        context: Some((ring, Route::Ring, (0..r).map(group_rows).collect())),
        ..DecodePlacement::whole_model(cfg, decode::owned_seqs(m.batch, p, rank), cache)
    }
}

pub struct Usp<B: Backend, C> {
    cfg: RunConfig,
    /// This rank's Ulysses group: its all-to-alls.
    ulysses: C,
    /// The ranks of the same member index in every group: its ring.
    ring: C,
    group: HeadGroup,
    /// Every ring position's members' tokens: the layout of the K/V blocks that arrive.
    members: Vec<Vec<LocalTokens>>,
    stack: Stack<B>,
    ex: Exchange<B>,
    /// Where the ring's next K/V block lands.
    kv_in: B::Act,
    decoder: Option<Decoder<B>>,
}

impl<B: Backend, C: Communicator<B>> Usp<B, C> {
    pub fn new(cfg: &RunConfig, be: &B, world: &C) -> Result<Self> {
        let rank = world.rank();
        let [(g_color, g_key), (r_color, r_key)] = splits(cfg, rank)[..] else { unreachable!("usp makes two splits") };
        let ulysses = world.split(g_color, g_key).context("creating the Ulysses group")?;
        let ring = world.split(r_color, r_key).context("creating the ring over the Ulysses groups")?;
        let stack = Stack::of(&SPEC, cfg, be, rank)?;
        let extra = buffers(cfg, rank).extra;
        let ex = Exchange::alloc(be, &extra[..5])?;
        let (rows, cols) = extra[5];
        let kv_in = be.alloc_act(rows, cols)?;
        let decoder = decode::decoder_for(cfg, be, SPEC.decode, rank)?;
        Ok(Usp { cfg: cfg.clone(), ulysses, ring, group: group(cfg, rank), members: members(cfg), stack, ex, kv_in, decoder })
    }
}

/// Attention of this rank's heads over its ring position's tokens against the whole sequence: to
/// heads inside the group, around the ring, back to tokens.
#[allow(clippy::too_many_arguments)]
fn usp_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    ulysses: &C,
    ring: &C,
    g: &HeadGroup,
    members: &[Vec<LocalTokens>],
    ws: &mut Workspace<B>,
    ex: &mut Exchange<B>,
    kv_in: &mut B::Act,
    batch: &Batch,
    causal: bool,
    cache: Option<(&mut Decoder<B>, usize)>,
) -> Result<()> {
    g.to_heads(be, ulysses, ws, ex, batch.seqs)?;
    let (block, _) = g.rows(batch.seqs);
    let q = g.blocks(batch.seqs);
    if let Some((dec, layer)) = cache {
        dec.store_prompt(be, layer, &ex.kv_all, &q, batch.first_seq)?;
    }
    let kv_blocks: Vec<Blocks> = members.iter().map(|m| Blocks::padded(batch.seqs, m, block)).collect();
    ring_pass(be, ring, &ex.q_all, &q, &mut ex.kv_all, kv_in, &kv_blocks, g.attention_heads(), causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ex.attn_all)?;
    g.to_tokens(be, ulysses, ws, ex, batch.seqs)
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Usp<B, C> {
    fn forward(&mut self, be: &B, _world: &C, keep: bool) -> Result<()> {
        let Usp { cfg, ulysses, ring, group, members, stack, ex, kv_in, decoder } = self;
        let causal = cfg.causal;
        decoder.iter_mut().for_each(Decoder::restart);
        stack.forward_all(be, cfg, keep, &mut |ws, batch, l| {
            usp_attention(be, ulysses, ring, group, members, ws, ex, kv_in, batch, causal, decoder.as_mut().map(|d| (d, l)))
        })
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }

    fn decode_step(&mut self, be: &B, _world: &C, step: usize, keep: bool) -> Result<()> {
        let comms = decode::Comms { tp: None, heads: Some(&self.ulysses), context: Some(&self.ring) };
        decode::step_own(decode::need(&mut self.decoder)?, be, &self.stack.layers, step, keep, &comms)
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    fn kind(&self) -> StrategyKind {
        SPEC.kind
    }
}
