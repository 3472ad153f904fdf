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
use super::ring::{grad_ring_bytes, gradient_steps, ring_pass, ring_pass_backward, ring_steps, GradRing};
use super::spec::SizeFlags;
use super::spec::{CommProjection, Op, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use super::ulysses::check_heads;
use super::ulysses::{head_trainer_bytes, kept_layers, HeadTrainer};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, Split, StrategyKind};
use crate::model::backward::GradWorkspace;
use crate::model::{Batch, Blocks, Saved, Shard, Workspace};
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
    train: TrainSpec {
        grad_peers: |cfg, _| (0..cfg.split.ulysses() * cfg.split.ring()).collect(),
        kv_replicas: |_, rank| vec![rank],
        backward_traffic,
        dkv_rows: |cfg, rank| cfg.micro_batch * placement(cfg, rank).tokens.len(),
        extra_bytes: |cfg, rank| {
            let g = group(cfg, rank);
            let ((_, all), (_, kvw)) = (g.rows(cfg.micro_batch), g.widths());
            head_trainer_bytes(&g, cfg.micro_batch, kept_layers(cfg)) + grad_ring_bytes(all as u64, 2 * kvw as u64)
        },
        pipelined: false,
    },
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
    transfers(cfg, rank, false)
}

/// The backward's: the group's all-to-alls reversed (dO to heads, dQ and dK/dV back), and the
/// ring's backward (its K/V steps again, and the FP32 dK/dV accumulators).
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    transfers(cfg, rank, true)
}

fn transfers(cfg: &RunConfig, rank: usize, backward: bool) -> Vec<Transfer> {
    let (u, j) = coord(cfg, rank);
    let g = group(cfg, rank);
    let calls = (cfg.model.layers * cfg.micro_batches()) as u64;
    let (_, all) = g.rows(cfg.micro_batch);
    let (_, kvw) = g.widths();
    let peers = (0..cfg.split.ulysses()).map(|i| grid_rank(i, j, cfg.split.ulysses())).collect();
    let mut out = if backward { g.backward_traffic(cfg.micro_batch, calls, peers) } else { g.traffic(cfg.micro_batch, calls, peers) };
    let block = (all * 2 * kvw * 2) as u64;
    let position = |pos| grid_rank(u, pos, cfg.split.ulysses());
    out.extend(ring_steps(j, cfg.split.ring(), |_| block, position, calls));
    if backward {
        out.extend(gradient_steps(j, cfg.split.ring(), |_| 2 * block, position, calls));
    }
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
    trainer: Option<(Trainer<B>, HeadTrainer<B>, GradRing<B>)>,
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
        let g = group(cfg, rank);
        let trainer = match cfg.train {
            true => {
                let ((_, all), (_, kvw)) = (g.rows(cfg.micro_batch), g.widths());
                let t = Trainer::new(be, cfg, &stack, &Shard::whole(&cfg.model), &SPEC, rank)?;
                Some((t, HeadTrainer::new(be, &g, cfg.micro_batch, kept_layers(cfg))?, GradRing::new(be, all, 2 * kvw)?))
            }
            false => None,
        };
        Ok(Usp { cfg: cfg.clone(), ulysses, ring, group: g, members: members(cfg), stack, ex, kv_in, decoder, trainer })
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
    mut kept: Option<(&mut HeadTrainer<B>, usize)>,
) -> Result<()> {
    g.to_heads(be, ulysses, ws, ex, batch.seqs)?;
    if let Some((h, l)) = kept.as_mut() {
        h.keep_inputs(be, ex, *l)?;
    }
    let (block, _) = g.rows(batch.seqs);
    let q = g.blocks(batch.seqs);
    if let Some((dec, layer)) = cache {
        dec.store_prompt(be, layer, &ex.kv_all, &q, batch.first_seq)?;
    }
    let kv_blocks: Vec<Blocks> = members.iter().map(|m| Blocks::padded(batch.seqs, m, block)).collect();
    ring_pass(be, ring, &ex.q_all, &q, &mut ex.kv_all, kv_in, &kv_blocks, g.attention_heads(), causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ex.attn_all)?;
    if let Some((h, l)) = kept {
        h.keep_output(be, ex, l)?;
    }
    g.to_tokens(be, ulysses, ws, ex, batch.seqs)
}

/// What a USP backward works with beyond the layer's buffers: the group, the ring's layout, the
/// kept head-layout activations and FP32 gradients, the travelling dK|dV.
struct UspGrads<'a, B: Backend> {
    g: &'a HeadGroup,
    members: &'a [Vec<LocalTokens>],
    heads: &'a mut HeadTrainer<B>,
    grad: &'a mut GradRing<B>,
}

/// The backward of `usp_attention` for layer `l`: dO to heads inside the group, the ring's
/// backward of the group's queries of this rank's heads (K/V again, dK/dV travelling home), dQ
/// and dK|dV back to tokens (gws.dq, gws.dkv).
#[allow(clippy::too_many_arguments)]
fn usp_backward<B: Backend, C: Communicator<B>>(
    be: &B,
    (ulysses, ring): (&C, &C),
    t: UspGrads<B>,
    (ws, gws, saved): (&mut Workspace<B>, &mut GradWorkspace<B>, &Saved<B>),
    (ex, kv_in): (&mut Exchange<B>, &mut B::Act),
    batch: &Batch,
    l: usize,
    causal: bool,
) -> Result<()> {
    let UspGrads { g, members, heads: h, grad } = t;
    let [q, kv, o] = &h.kept[l % h.kept.len()];
    g.grad_to_heads(be, ulysses, &gws.dattn, ex, batch.seqs)?;
    let heads = g.attention_heads();
    be.attention_backward_delta(o, &ex.q_all, heads.heads, &mut h.delta)?;
    let (block, _) = g.rows(batch.seqs);
    let q_blocks = g.blocks(batch.seqs);
    let kv_blocks: Vec<Blocks> = members.iter().map(|m| Blocks::padded(batch.seqs, m, block)).collect();
    h.dq.set_rows(q_blocks.rows);
    be.zero_acc(&mut h.dq)?;
    let Exchange { q_all, kv_all, .. } = ex;
    kv_all.set_rows(kv.rows());
    be.copy_rows(kv, 0, kv_all, 0, kv.rows())?;
    let grads = (&*q_all, &saved.lse, &h.delta);
    ring_pass_backward(be, ring, (q, &q_blocks), (kv_all, kv_in), &kv_blocks, heads, causal, grads, (&mut h.dq, &mut h.dkv), grad)?;
    be.attention_store(&h.dq, &mut ex.q_all)?;
    be.attention_store(&grad.travel, &mut ex.kv_all)?;
    g.grads_to_tokens(be, ulysses, ex, (&mut gws.dq, &mut gws.dkv, &mut ws.kv), &mut gws.dkv_acc, batch.rows(), batch.seqs)
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Usp<B, C> {
    fn forward(&mut self, be: &B, _world: &C, keep: bool) -> Result<()> {
        let Usp { cfg, ulysses, ring, group, members, stack, ex, kv_in, decoder, .. } = self;
        let causal = cfg.causal;
        decoder.iter_mut().for_each(Decoder::restart);
        stack.forward_all(be, cfg, keep, &mut |ws, batch, l| {
            usp_attention(be, ulysses, ring, group, members, ws, ex, kv_in, batch, causal, decoder.as_mut().map(|d| (d, l)), None)
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

    /// Per micro-batch the forward and the backward (the group's all-to-alls reversed around
    /// the ring's backward); every weight's gradients summed over the whole job (`world`).
    fn train_step(&mut self, be: &B, world: &C, keep: bool) -> Result<StepPhases> {
        let Usp { cfg, ulysses, ring, group, members, stack, ex, kv_in, trainer, .. } = self;
        let causal = cfg.causal;
        let (trainer, heads, grad) = trainer.as_mut().ok_or_else(|| anyhow::anyhow!("usp set up without --train"))?;
        // The forward and the backward take turns with the exchange buffers.
        let (ex, kv_in, heads) = (std::cell::RefCell::new(ex), std::cell::RefCell::new(kv_in), std::cell::RefCell::new(heads));
        let (ulysses, ring): (&C, &C) = (ulysses, ring);
        trainer.step(
            stack,
            be,
            cfg,
            keep,
            &mut |ws, batch, l| {
                let kept = Some((&mut **heads.borrow_mut(), l));
                usp_attention(
                    be,
                    ulysses,
                    ring,
                    group,
                    members,
                    ws,
                    &mut ex.borrow_mut(),
                    &mut kv_in.borrow_mut(),
                    batch,
                    causal,
                    None,
                    kept,
                )
            },
            &mut |ws, gws, saved, batch, l| {
                let grads = UspGrads { g: group, members, heads: &mut heads.borrow_mut(), grad: &mut *grad };
                usp_backward(
                    be,
                    (ulysses, ring),
                    grads,
                    (ws, gws, saved),
                    (&mut ex.borrow_mut(), &mut kv_in.borrow_mut()),
                    batch,
                    l,
                    causal,
                )
            },
            &mut |_| Ok(()),
            (world, Some(world)),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _, _)| t.gradients())
    }
}
