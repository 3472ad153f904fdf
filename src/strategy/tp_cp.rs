//! Tensor parallel x context parallel, as Llama 3 405B is served across 8-GPU nodes: P = T x C.
//! TP groups of T consecutive ranks (inside a node) split the heads and MLP columns as tp-pp
//! does (column-parallel QKV and MLP-up, row-parallel attention-out and MLP-down, two all-reduces
//! of [S/C, d] per layer inside the group); the sequence is laid out over the C context ranks
//! under `--layout`, and each rank rings the K/V of its own head slice with the C ranks of the
//! same TP rank, exactly as the ring strategy does with whole K/V. Rank r = t + T c.
//!
//! It is the one sequence-parallel strategy whose weights per rank shrink with the group (a TP
//! shard of every layer), which is what lets 70B and 405B models run at all.

use super::decode::{self, appended_steps, combine::Route, owned_rows, CacheShape, DecodePlacement, Decoder, Group};
use super::ring::{grad_ring_bytes, gradient_steps, ring_attention, ring_backward, ring_steps, GradRing};
use super::spec::SizeFlags;
use super::spec::{CommProjection, Op, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, Split, StrategyKind};
use crate::model::{Batch, Shard, Workspace};
use crate::topology::{grid_coord, grid_rank, ring_tokens, LocalTokens};
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::TpCp,
    size_names: &["tp", "cp"],
    sizes: |cfg| vec![cfg.split.tp(), cfg.split.cp()],
    resolve_sizes,
    uses_layout: true,
    world: |cfg| cfg.split.tp() * cfg.split.cp(),
    check,
    placement,
    traffic,
    buffers,
    splits,
    project,
    decode,
    train: TrainSpec {
        grad_peers: |cfg, rank| {
            let (t, _) = coord(cfg, rank);
            (0..cfg.split.cp()).map(|pos| grid_rank(t, pos, cfg.split.tp())).collect()
        },
        kv_replicas,
        backward_traffic,
        dkv_rows: |cfg, _| cfg.micro_batch * super::shared::longest_tokens_of(&layout(cfg)),
        extra_bytes: |cfg, rank| {
            let kvw = placement(cfg, rank).shard.heads(&cfg.model).kv_width();
            grad_ring_bytes((cfg.micro_batch * super::shared::longest_tokens_of(&layout(cfg))) as u64, 2 * kvw as u64)
        },
        pipelined: false,
    },
};

/// --tp and --cp (under `--strategy all`, --tp is tp-pp's and only --cp counts); a missing one
/// from the other, neither: TP inside a node, as `two_d_sizes` says.
fn resolve_sizes(cfg: &mut RunConfig, flags: &SizeFlags, world: usize) {
    let tp = if flags.all { None } else { flags.tp };
    let probe = cfg.clone();
    let (t, c) = super::shared::two_d_sizes(tp, flags.cp, world, |t| {
        super::tp_pp::check_tp(&RunConfig { split: Split::TpCp { t, c: 1 }, ..probe.clone() }).is_ok()
    });
    cfg.split = Split::TpCp { t, c };
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    super::shared::check_two_d(cfg, ("--tp", cfg.split.tp()), ("--cp", cfg.split.cp()), world)?;
    super::tp_pp::check_tp(cfg)?;
    super::shared::check_chunks(cfg, " context ring", cfg.split.cp())
}

/// (TP rank, context position) of `rank`.
fn coord(cfg: &RunConfig, rank: usize) -> (usize, usize) {
    grid_coord(rank, cfg.split.tp())
}

/// Every context position's tokens.
fn layout(cfg: &RunConfig) -> Vec<LocalTokens> {
    super::shared::ring_layout(cfg, cfg.split.cp())
}

/// Its context position's tokens; its TP slice of every layer; the first TP rank of each group
/// reports the output (every TP rank holds the same all-reduced rows).
fn placement(cfg: &RunConfig, rank: usize) -> Placement {
    let m = &cfg.model;
    let (t, c) = coord(cfg, rank);
    let tokens = ring_tokens(cfg.layout, m.seq_len, cfg.split.cp(), c);
    let shard = Shard::tensor_parallel(m, cfg.split.tp(), t);
    Placement {
        attention_tokens: tokens.clone(),
        tokens,
        attention_heads: shard.heads.clone(),
        shard,
        layers: 0..m.layers,
        outputs: t == 0,
    }
}

/// The TP group (color = context position, key = TP rank), then the context ring (color = TP
/// rank, key = context position).
fn splits(cfg: &RunConfig, rank: usize) -> Vec<(usize, usize)> {
    let (t, c) = coord(cfg, rank);
    let mut out = vec![(c, t), (t, c)];
    out.extend(super::train::replica_split(cfg, rank, kv_replicas(cfg, rank)));
    out
}

/// The ranks of its TP group that hold its K/V heads (copies where tp exceeds them).
fn kv_replicas(cfg: &RunConfig, rank: usize) -> Vec<usize> {
    let ((t, c), tp) = (coord(cfg, rank), cfg.split.tp());
    let kv = |t| Shard::tensor_parallel(&cfg.model, tp, t).kv_heads;
    (0..tp).filter(|&i| kv(i) == kv(t)).map(|i| grid_rank(i, c, tp)).collect()
}

/// Two K/V buffers of the longest context block, of its K/V heads: the one in use, and the next.
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let rows = cfg.micro_batch * layout(cfg).iter().map(LocalTokens::len).max().unwrap_or(0);
    let local = super::shared::local_buffers(cfg, &placement(cfg, rank));
    crate::model::Buffers { kv_rows: rows, kv_in_rows: rows, attention_kv: (rows, local.attention_kv.1), ..local }
}

/// Per layer and micro-batch: two all-reduces of [micro-batch x its tokens, d_model] in the TP
/// group (2 (T - 1) / T of the buffer each way), and the C - 1 ring steps of its K/V heads'
/// block: micro-batch x the owner's tokens x 2 x its K/V heads x head_dim BF16 values.
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    transfers(cfg, rank, "row-parallel output", false)
}

/// The backward's: the TP group's all-reduces of the column-parallel GEMMs' input gradients (as
/// the forward's), and the context ring's backward (its K/V steps again, and the FP32 dK/dV
/// accumulators of its K/V heads, as the ring's backward moves them).
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    transfers(cfg, rank, "column-parallel input gradient", true)
}

fn transfers(cfg: &RunConfig, rank: usize, all_reduce: &'static str, backward: bool) -> Vec<Transfer> {
    let m = &cfg.model;
    let (t, c) = coord(cfg, rank);
    let calls = (m.layers * cfg.micro_batches()) as u64;
    let mut out = Vec::new();
    if cfg.split.tp() > 1 {
        let buffer = (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, cfg.split.cp(), c).len() * m.d_model * 2) as u64;
        let tp = cfg.split.tp() as u64;
        let wire = 2 * (tp - 1) * buffer / tp;
        out.push(Transfer {
            op: Op::AllReduce,
            what: all_reduce,
            peers: (0..cfg.split.tp()).map(|i| grid_rank(i, c, cfg.split.tp())).collect(),
            buffer_bytes: buffer,
            sent: wire,
            received: wire,
            calls: 2 * calls,
            overlapped: false,
        });
    }
    let kvw = Shard::tensor_parallel(m, cfg.split.tp(), t).heads(m).kv_width();
    let block = |owner: usize| (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, cfg.split.cp(), owner).len() * 2 * kvw * 2) as u64;
    out.extend(ring_steps(c, cfg.split.cp(), block, |pos| grid_rank(t, pos, cfg.split.tp()), calls));
    if backward {
        out.extend(gradient_steps(c, cfg.split.cp(), |owner| 2 * block(owner), |pos| grid_rank(t, pos, cfg.split.tp()), calls));
    }
    out
}

/// The all-reduces are exposed (at the TP group's link); the ring's steps hide under each step's
/// attention as the ring's do, at the context ring's link.
fn project(cfg: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let (t, c) = coord(cfg, x.rank);
    let group: Vec<usize> = (0..cfg.split.tp()).map(|i| grid_rank(i, c, cfg.split.tp())).collect();
    let ring: Vec<usize> = (0..cfg.split.cp()).map(|pos| grid_rank(t, pos, cfg.split.tp())).collect();
    super::ring::project_two_d(x, (Op::AllReduce, "one all-reduce", &group), &ring, x.attention_per_layer_mb_s / cfg.split.cp() as f64)
}

/// Decode (Helix-like): heads over the TP group as in prefill, the new tokens of an even slice of
/// the sequences per context rank, the cache by tokens over the context group, which all-gathers
/// the queries and returns each partial result to its owner; step i's K/V is appended at
/// context rank i mod C.
fn decode(cfg: &RunConfig, rank: usize) -> DecodePlacement {
    let m = &cfg.model;
    let (t, c) = coord(cfg, rank);
    let (tt, cc) = (cfg.split.tp(), cfg.split.cp());
    let shard = Shard::tensor_parallel(m, tt, t);
    let seqs = decode::owned_seqs(m.batch, cc, c);
    DecodePlacement {
        rows_per_call: seqs.len(),
        seqs,
        outputs: t == 0,
        layers: 0..m.layers,
        tp: Some(Group { ranks: (0..tt).map(|i| grid_rank(i, c, tt)).collect(), member: t }),
        pipeline: (None, None),
        heads: None,
        context: Some((
            Group { ranks: (0..cc).map(|pos| grid_rank(t, pos, tt)).collect(), member: c },
            Route::Gather,
            (0..cc).map(|pos| owned_rows(m.batch, cc, pos)).collect(),
        )),
        cache: CacheShape {
            layers: m.layers,
            batch: m.batch,
            prompt: ring_tokens(cfg.layout, m.seq_len, cc, c).len(),
            slots: appended_steps(cfg.decode_tokens, cc, c),
            kv_cols: 2 * shard.heads(m).kv_width(),
        },
        shard,
    }
}

pub struct TpCp<B: Backend, C> {
    cfg: RunConfig,
    /// The T ranks of this context position: its all-reduces.
    tp_group: C,
    /// The C ranks of this TP rank: its ring.
    cp_ring: C,
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
    decoder: Option<Decoder<B>>,
    trainer: Option<(Trainer<B>, GradRing<B>)>,
    /// With --train and copied K/V heads: the ranks of its TP group holding the same ones.
    kv_group: Option<C>,
}

impl<B: Backend, C: Communicator<B>> TpCp<B, C> {
    pub fn new(cfg: &RunConfig, be: &B, world: &C) -> Result<Self> {
        let rank = world.rank();
        let splits = splits(cfg, rank);
        let [(tp_color, tp_key), (cp_color, cp_key)] = splits[..2] else {
            unreachable!("tp-cp makes two splits, and one more to train with copied K/V heads")
        };
        let tp_group = world.split(tp_color, tp_key).context("creating the tensor-parallel group")?;
        let cp_ring = world.split(cp_color, cp_key).context("creating the context-parallel ring")?;
        let kv_group =
            splits.get(2).map(|&(color, key)| world.split(color, key).context("creating the group of K/V head copies")).transpose()?;
        let (stack, decoder) = (Stack::of(&SPEC, cfg, be, rank)?, decode::decoder_for(cfg, be, SPEC.decode, rank)?);
        let trainer = match cfg.train {
            true => {
                let shard = placement(cfg, rank).shard;
                let rows = cfg.micro_batch * super::shared::longest_tokens_of(&layout(cfg));
                let ring = GradRing::new(be, rows, 2 * shard.heads(&cfg.model).kv_width())?;
                Some((Trainer::new(be, cfg, &stack, &shard, &SPEC, rank)?, ring))
            }
            false => None,
        };
        Ok(TpCp { cfg: cfg.clone(), tp_group, cp_ring, layout: layout(cfg), stack, decoder, trainer, kv_group })
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for TpCp<B, C> {
    fn forward(&mut self, be: &B, _world: &C, keep: bool) -> Result<()> {
        let (cfg, layout, tp_group, cp_ring, dec) = (&self.cfg, &self.layout, &self.tp_group, &self.cp_ring, &mut self.decoder);
        dec.iter_mut().for_each(Decoder::restart);
        for mb in 0..cfg.micro_batches() {
            self.stack.generate_input(be, cfg, mb)?;
            let mut attention = |ws: &mut Workspace<B>, batch: &Batch, l| {
                decode::keep_own(dec, be, l, ws, batch)?;
                ring_attention(be, cp_ring, ws, batch, layout, cfg.causal)
            };
            self.stack.run_layers(be, cfg, mb, &mut attention, &mut |y| tp_group.all_reduce_sum(y), None)?;
            if keep {
                self.stack.keep(be, cfg, mb)?;
            }
        }
        Ok(())
    }

    fn output(&self) -> Option<&B::Act> {
        // Every TP rank holds the same all-reduced output; the first one reports it.
        (self.tp_group.rank() == 0).then_some(self.stack.out.as_ref()).flatten()
    }

    fn decode_step(&mut self, be: &B, _world: &C, step: usize, keep: bool) -> Result<()> {
        let comms = decode::Comms { tp: Some(&self.tp_group), heads: None, context: Some(&self.cp_ring) };
        decode::step_own(decode::need(&mut self.decoder)?, be, &self.stack.layers, step, keep, &comms)
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    /// Per micro-batch the forward and the backward (the context ring's backward with the TP
    /// shard's K/V heads, the TP group's all-reduces), then each TP shard's gradients summed
    /// over its context ring.
    fn train_step(&mut self, be: &B, world: &C, keep: bool) -> Result<StepPhases> {
        let (cfg, layout, tp_group, cp_ring) = (&self.cfg, &self.layout, &self.tp_group, &self.cp_ring);
        let (trainer, grad) = self.trainer.as_mut().ok_or_else(|| anyhow::anyhow!("tp-cp set up without --train"))?;
        let mut phases = trainer.step(
            &mut self.stack,
            be,
            cfg,
            // The first TP rank reports dL/dX (every TP rank holds the same).
            keep && tp_group.rank() == 0,
            &mut |ws, batch, _| ring_attention(be, cp_ring, ws, batch, layout, cfg.causal),
            &mut |ws, gws, saved, batch, _| ring_backward(be, cp_ring, ws, gws, grad, saved, batch, layout, cfg.causal),
            &mut |y| tp_group.all_reduce_sum(y),
            (world, Some(cp_ring)),
        )?;
        if let Some(g) = &self.kv_group {
            let t0 = std::time::Instant::now();
            trainer.reduce_kv(g)?;
            phases.grad_reduce_s += super::train::clock(be, t0)?;
            phases.take_comm(world, 2)?;
        }
        Ok(phases)
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _)| t.gradients())
    }
}
