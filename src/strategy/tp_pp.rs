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

use super::decode::{self, CacheShape, DecodePlacement, Decoder, Group};
use super::spec::SizeFlags;
use super::spec::{CommProjection, Op, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{clock, StepPhases, TrainSpec, Trainer};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, Split, StrategyKind};
use crate::model::backward::local_attention_backward;
use crate::model::{local_attention, Shard};
use crate::topology::{even_slice, tp_pp_coord, tp_pp_rank, LocalTokens, TpPpCoord};
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::TpPp,
    size_names: &["tp", "pp"],
    sizes,
    resolve_sizes,
    uses_layout: false,
    world,
    check,
    placement,
    traffic,
    buffers,
    splits,
    project,
    decode,
    train: TrainSpec {
        grad_peers: |_, rank| vec![rank],
        kv_replicas,
        backward_traffic,
        dkv_rows: |cfg, _| cfg.micro_batch * cfg.model.seq_len,
        extra_bytes: |_, _| 0,
        pipelined: true,
    },
};

fn sizes(cfg: &RunConfig) -> Vec<usize> {
    vec![cfg.split.tp(), cfg.split.pp()]
}

/// --pp, by default 1; --tp, by default the world / pp.
fn resolve_sizes(cfg: &mut RunConfig, flags: &SizeFlags, world: usize) {
    let pp = flags.pp.unwrap_or(1);
    cfg.split = Split::TpPp { tp: flags.tp.unwrap_or(world.checked_div(pp).unwrap_or(1).max(1)), pp };
}

fn world(cfg: &RunConfig) -> usize {
    cfg.split.tp() * cfg.split.pp()
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let bad = |s: String| Err(ConfigError(s));
    if cfg.split.pp() == 0 {
        return bad("--pp 0: must be at least 1".into());
    }
    check_tp(cfg)?;
    if cfg.model.layers % cfg.split.pp() != 0 {
        return bad(format!("--pp {}: --layers {} must be divisible by the number of pipeline stages", cfg.split.pp(), cfg.model.layers));
    }
    if cfg.split.tp() * cfg.split.pp() != world {
        return bad(format!(
            "--tp {} x --pp {} = {} ranks, but the job has {world} ranks (world size must equal tp x pp)",
            cfg.split.tp(),
            cfg.split.pp(),
            cfg.split.tp() * cfg.split.pp()
        ));
    }
    Ok(())
}

/// What a tensor-parallel split of --tp needs of the model (tp-pp's and tp-cp's): the heads and
/// MLP columns divide, the K/V heads divide or are replicated.
pub(super) fn check_tp(cfg: &RunConfig) -> Result<(), ConfigError> {
    let m = &cfg.model;
    let bad = |s: String| Err(ConfigError(s));
    if cfg.split.tp() == 0 {
        return bad("--tp 0: must be at least 1".into());
    }
    if m.heads % cfg.split.tp() != 0 {
        return bad(format!("--tp {}: --heads {} must be divisible by the tensor-parallel size", cfg.split.tp(), m.heads));
    }
    if m.kv_heads % cfg.split.tp() != 0 && cfg.split.tp() % m.kv_heads != 0 {
        return bad(format!(
            "--tp {} with --kv-heads {}: the tensor-parallel size must divide the K/V heads (each rank holds its share) or be a multiple of them (each K/V head replicated on tp / kv_heads ranks, as Megatron does)",
            cfg.split.tp(), m.kv_heads
        ));
    }
    if m.mlp % cfg.split.tp() != 0 {
        return bad(format!("--tp {}: --mlp {} must be divisible by the tensor-parallel size", cfg.split.tp(), m.mlp));
    }
    Ok(())
}

/// Every token; its TP slice of the heads and MLP columns; its stage's layers. The last stage's
/// first TP rank reports the output (every TP rank of it holds the same all-reduced rows).
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    super::shared::local_buffers(cfg, &placement(cfg, rank))
}

fn placement(cfg: &RunConfig, rank: usize) -> Placement {
    let m = &cfg.model;
    let c = tp_pp_coord(rank, cfg.split.tp());
    let shard = Shard::tensor_parallel(m, cfg.split.tp(), c.tp_rank);
    Placement {
        tokens: LocalTokens::whole(m.seq_len),
        attention_heads: shard.heads.clone(),
        shard,
        layers: even_slice(m.layers, cfg.split.pp(), c.stage),
        attention_tokens: LocalTokens::whole(m.seq_len),
        outputs: c.stage + 1 == cfg.split.pp() && c.tp_rank == 0,
    }
}

/// The TP group: color = stage, key = TP rank.
fn splits(cfg: &RunConfig, rank: usize) -> Vec<(usize, usize)> {
    let c = tp_pp_coord(rank, cfg.split.tp());
    let mut out = vec![(c.stage, c.tp_rank)];
    out.extend(super::train::replica_split(cfg, rank, kv_replicas(cfg, rank)));
    out
}

/// The ranks of its stage's TP group that hold its K/V heads (copies where tp exceeds them).
fn kv_replicas(cfg: &RunConfig, rank: usize) -> Vec<usize> {
    let (tp, c) = (cfg.split.tp(), tp_pp_coord(rank, cfg.split.tp()));
    let kv = |t| Shard::tensor_parallel(&cfg.model, tp, t).kv_heads;
    (0..tp).filter(|&t| kv(t) == kv(c.tp_rank)).map(|t| tp_pp_rank(TpPpCoord { stage: c.stage, tp_rank: t }, tp)).collect()
}

/// Per micro-batch and local layer, two all-reduces of [micro-batch x seq, d_model] BF16 counted
/// by NCCL's bus convention (2 (tp - 1) / tp of the buffer each way, as `comm::metered` counts
/// them); per micro-batch, the hand-off of the same activations to the next stage, and from the
/// previous one.
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    transfers(cfg, rank, ["row-parallel output", "activations to the next stage", "activations from the previous stage"], false)
}

/// The backward's mirror of `traffic`: per micro-batch and local layer, the all-reduces of the
/// column-parallel GEMMs' input gradients (as large, as many); per micro-batch, the gradient
/// of the stage's input to the previous stage, and of its output from the next.
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    transfers(cfg, rank, ["column-parallel input gradient", "gradients to the previous stage", "gradients from the next stage"], true)
}

/// The all-reduces and the pipeline's hand-offs, labelled `what` (all-reduce, send, receive);
/// `backward`: the hand-offs run to the previous stage, from the next.
fn transfers(cfg: &RunConfig, rank: usize, what: [&'static str; 3], backward: bool) -> Vec<Transfer> {
    let m = &cfg.model;
    let c = tp_pp_coord(rank, cfg.split.tp());
    let activations = (cfg.micro_batch * m.seq_len * m.d_model * 2) as u64;
    let (tp, mbs) = (cfg.split.tp() as u64, cfg.micro_batches() as u64);
    let mut out = Vec::new();
    if cfg.split.tp() > 1 {
        let wire = 2 * (tp - 1) * activations / tp;
        let group = (0..cfg.split.tp()).map(|t| tp_pp_rank(TpPpCoord { stage: c.stage, tp_rank: t }, cfg.split.tp())).collect();
        let calls = 2 * (m.layers / cfg.split.pp()) as u64 * mbs;
        out.push(Transfer {
            op: Op::AllReduce,
            what: what[0],
            peers: group,
            buffer_bytes: activations,
            sent: wire,
            received: wire,
            calls,
            overlapped: false,
        });
    }
    let hand_off = |op, what, stage, sent, received| Transfer {
        op,
        what,
        peers: vec![tp_pp_rank(TpPpCoord { stage, tp_rank: c.tp_rank }, cfg.split.tp())],
        buffer_bytes: activations,
        sent,
        received,
        calls: mbs,
        overlapped: false,
    };
    let (to, from) = match backward {
        false => ((c.stage + 1 < cfg.split.pp()).then(|| c.stage + 1), c.stage.checked_sub(1)),
        true => (c.stage.checked_sub(1), (c.stage + 1 < cfg.split.pp()).then(|| c.stage + 1)),
    };
    if let Some(to) = to {
        out.push(hand_off(Op::PipelineSend, what[1], to, activations, 0));
    }
    if let Some(from) = from {
        out.push(hand_off(Op::PipelineRecv, what[2], from, 0, activations));
    }
    out
}

/// The all-reduces are exposed; the pipeline runs fill-drain, (micro-batches + pp - 1) stage
/// slots, plus the activation hand-offs of the fill.
fn project(cfg: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let layers_local = (cfg.model.layers / cfg.split.pp()) as f64;
    let micro_batches = cfg.micro_batches() as f64;
    let find = |ops: &[Op]| x.traffic.iter().find(|t| ops.contains(&t.op));
    let (crosses, bw, allreduce_s) = match find(&[Op::AllReduce]) {
        Some(t) => {
            let (c, bw) = x.link(&t.peers);
            (c, bw, x.seconds(t))
        }
        None => (false, x.nvlink_bytes_per_s, 0.0),
    };
    let send_s = find(&[Op::PipelineSend, Op::PipelineRecv]).map_or(0.0, |t| x.seconds(t));
    let stage_slot = x.compute_s / micro_batches + 2.0 * layers_local * allreduce_s;
    let fill = (cfg.split.pp() - 1) as f64;
    CommProjection {
        crosses_nodes: crosses,
        link_bytes_per_s: bw,
        exposed_s: 2.0 * layers_local * allreduce_s * micro_batches + fill * send_s,
        hidden_fraction: 1.0,
        bubble_s: fill * stage_slot,
        details: vec![("one all-reduce", allreduce_s), ("one pipeline hand-off", send_s)],
    }
}

/// Decode: every sequence's new token through the stage's layers with its TP slice of the heads
/// (the cache of its K/V heads, every token), in micro-batches of sequences down the pipeline.
fn decode(cfg: &RunConfig, rank: usize) -> DecodePlacement {
    let m = &cfg.model;
    let c = tp_pp_coord(rank, cfg.split.tp());
    let (tp, pp) = (cfg.split.tp(), cfg.split.pp());
    let stage_rank = |stage: usize| tp_pp_rank(TpPpCoord { stage, tp_rank: c.tp_rank }, tp);
    let p = placement(cfg, rank);
    DecodePlacement {
        seqs: 0..m.batch,
        rows_per_call: cfg.micro_batch,
        outputs: p.outputs,
        tp: Some(Group { ranks: (0..tp).map(|t| tp_pp_rank(TpPpCoord { stage: c.stage, tp_rank: t }, tp)).collect(), member: c.tp_rank }),
        pipeline: ((c.stage > 0).then(|| stage_rank(c.stage - 1)), (c.stage + 1 < pp).then(|| stage_rank(c.stage + 1))),
        heads: None,
        context: None,
        cache: CacheShape {
            layers: p.layers.len(),
            batch: m.batch,
            prompt: m.seq_len,
            slots: cfg.decode_tokens,
            kv_cols: 2 * p.shard.heads(m).kv_width(),
        },
        layers: p.layers,
        shard: p.shard,
    }
}

pub struct TpPp<B: Backend, C> {
    cfg: RunConfig,
    coord: TpPpCoord,
    /// The ranks of this stage (the TP group); its all-reduces never involve other stages.
    tp_group: C,
    stack: Stack<B>,
    decoder: Option<Decoder<B>>,
    trainer: Option<Trainer<B>>,
    /// With --train and copied K/V heads: the ranks of its stage holding the same ones.
    kv_group: Option<C>,
}

impl<B: Backend, C: Communicator<B>> TpPp<B, C> {
    pub fn new(cfg: &RunConfig, be: &B, world: &C) -> Result<Self> {
        let rank = world.rank();
        let coord = tp_pp_coord(rank, cfg.split.tp());
        let splits = splits(cfg, rank);
        let (color, key) = splits[0];
        let tp_group = world.split(color, key).context("creating the tensor-parallel group")?;
        let kv_group =
            splits.get(1).map(|&(color, key)| world.split(color, key).context("creating the group of K/V head copies")).transpose()?;
        let (stack, decoder) = (Stack::of(&SPEC, cfg, be, rank)?, decode::decoder_for(cfg, be, SPEC.decode, rank)?);
        let trainer = match cfg.train {
            true => Some(Trainer::new(be, cfg, &stack, &placement(cfg, rank).shard, &SPEC, rank)?),
            false => None,
        };
        Ok(TpPp { cfg: cfg.clone(), coord, tp_group, stack, decoder, trainer, kv_group })
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for TpPp<B, C> {
    fn forward(&mut self, be: &B, world: &C, keep: bool) -> Result<()> {
        let (cfg, TpPpCoord { stage, tp_rank }) = (&self.cfg, self.coord);
        let causal = cfg.causal;
        let prev = (stage > 0).then(|| tp_pp_rank(TpPpCoord { stage: stage - 1, tp_rank }, cfg.split.tp()));
        let next = (stage + 1 < cfg.split.pp()).then(|| tp_pp_rank(TpPpCoord { stage: stage + 1, tp_rank }, cfg.split.tp()));
        let (tp_group, dec) = (&self.tp_group, &mut self.decoder);
        dec.iter_mut().for_each(Decoder::restart);
        for mb in 0..cfg.micro_batches() {
            match prev {
                None => self.stack.generate_input(be, cfg, mb)?,
                Some(p) => {
                    let rows = self.stack.batch(cfg, mb).rows();
                    self.stack.x.set_rows(rows);
                    world.recv(&mut self.stack.x, p).with_context(|| format!("pipeline receive of micro-batch {mb} from rank {p}"))?;
                }
            }
            let mut attention = |ws: &mut crate::model::Workspace<B>, batch: &crate::model::Batch, l| {
                decode::keep_own(dec, be, l, ws, batch)?;
                local_attention(be, ws, batch, causal)
            };
            self.stack.run_layers(be, cfg, mb, &mut attention, &mut |y| tp_group.all_reduce_sum(y), None)?;
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

    /// Each micro-batch of sequences down the pipeline, as the forward pass sends them.
    fn decode_step(&mut self, be: &B, world: &C, step: usize, keep: bool) -> Result<()> {
        let cfg = &self.cfg;
        let dec = decode::need(&mut self.decoder)?;
        let comms = decode::Comms { tp: Some(&self.tp_group), heads: None, context: None };
        let (prev, next) = dec.place.pipeline;
        dec.begin(step)?;
        for mb in 0..cfg.micro_batches() {
            let seqs = mb * cfg.micro_batch..(mb + 1) * cfg.micro_batch;
            match prev {
                None => dec.input(be, seqs.clone(), step)?,
                Some(p) => {
                    dec.x().set_rows(seqs.len());
                    world
                        .recv(dec.x(), p)
                        .with_context(|| format!("decode step {step}: pipeline receive of micro-batch {mb} from rank {p}"))?;
                }
            }
            dec.layers(be, &self.stack.layers, seqs.clone(), step, &comms)?;
            match next {
                Some(n) => {
                    world.send(dec.x(), n).with_context(|| format!("decode step {step}: pipeline send of micro-batch {mb} to rank {n}"))?
                }
                None if keep && dec.place.outputs => dec.keep(be, seqs.start, step)?,
                None => {}
            }
        }
        Ok(())
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    /// GPipe's schedule: every micro-batch's forward down the pipeline (activations kept), then
    /// every micro-batch's backward up it; the TP group all-reduces the input gradients of its
    /// column-parallel GEMMs. Each stage owns its layers' shards alone: no gradient reduction.
    fn train_step(&mut self, be: &B, world: &C, keep: bool) -> Result<StepPhases> {
        let (cfg, TpPpCoord { stage, tp_rank }) = (&self.cfg, self.coord);
        let causal = cfg.causal;
        let peer = |s: usize| tp_pp_rank(TpPpCoord { stage: s, tp_rank }, cfg.split.tp());
        let (prev, next) = (stage.checked_sub(1).map(peer), (stage + 1 < cfg.split.pp()).then(|| peer(stage + 1)));
        let (tp_group, stack) = (&self.tp_group, &mut self.stack);
        let trainer = super::train::need(&mut self.trainer)?;
        trainer.zero(be)?;
        let mut phases = StepPhases::default();
        world.take_phase_times()?;
        let t0 = std::time::Instant::now();
        for mb in 0..cfg.micro_batches() {
            match prev {
                None => stack.generate_input(be, cfg, mb)?,
                Some(p) => {
                    stack.x.set_rows(stack.batch(cfg, mb).rows());
                    world.recv(&mut stack.x, p).with_context(|| format!("pipeline receive of micro-batch {mb} from rank {p}"))?;
                }
            }
            let mut attention =
                |ws: &mut crate::model::Workspace<B>, batch: &crate::model::Batch, _| local_attention(be, ws, batch, causal);
            trainer.forward_mb(stack, be, cfg, (mb, mb), &mut attention, &mut |y| tp_group.all_reduce_sum(y))?;
            if let Some(n) = next {
                world.send(&stack.x, n).with_context(|| format!("pipeline send of micro-batch {mb} to rank {n}"))?;
            }
        }
        phases.forward_s = clock(be, t0)?;
        phases.take_comm(world, 0)?;
        let t0 = std::time::Instant::now();
        for mb in 0..cfg.micro_batches() {
            match next {
                None => trainer.upstream(stack, be, cfg, mb)?,
                Some(n) => {
                    trainer.dx().set_rows(stack.batch(cfg, mb).rows());
                    world
                        .recv(trainer.dx(), n)
                        .with_context(|| format!("pipeline receive of micro-batch {mb}'s gradient from rank {n}"))?;
                }
            }
            // The first stage's first TP rank reports dL/dX (every TP rank holds the same).
            let keep_here = keep && prev.is_none() && tp_rank == 0;
            let mut backward = |ws: &mut crate::model::Workspace<B>, gws: &mut _, saved: &_, batch: &crate::model::Batch, _| {
                local_attention_backward(be, gws, saved, ws.heads, batch, causal)
            };
            let mut attention =
                |ws: &mut crate::model::Workspace<B>, batch: &crate::model::Batch, _| local_attention(be, ws, batch, causal);
            trainer.backward_mb(
                stack,
                be,
                cfg,
                (mb, mb),
                keep_here,
                (&mut attention, &mut backward),
                &mut |y| tp_group.all_reduce_sum(y),
                &mut |_| Ok(()),
            )?;
            if let Some(p) = prev {
                world.send(trainer.dx(), p).with_context(|| format!("pipeline send of micro-batch {mb}'s gradient to rank {p}"))?;
            }
        }
        phases.backward_s = clock(be, t0)?;
        phases.take_comm(world, 1)?;
        let t0 = std::time::Instant::now();
        if let Some(g) = &self.kv_group {
            trainer.reduce_kv(g)?;
        }
        phases.grad_reduce_s = clock(be, t0)?;
        phases.take_comm(world, 2)?;
        Ok(phases)
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(Trainer::gradients)
    }
}
