//! Sequence parallelism with ring attention. Every rank holds the full weights and its tokens of
//! every sequence (zigzag or contiguous). Per layer, after the local QKV projection and RoPE, the
//! K/V blocks travel around the ring in P steps: at step s a rank attends its queries to the block
//! it holds (the one rank r - s computed) while sending that block on to r + 1 and receiving the
//! next one from r - 1 into the second buffer; partial results merge into FP32 (O, LSE)
//! accumulators. Output projection and MLP are local. No collective besides the ring.

use super::decode::{self, combine::Route, Decoder};
use super::spec::{CommProjection, Op, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::Heads;
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::{RunConfig, StrategyKind};
use crate::model::backward::{attend_blocks_backward, begin_attention_backward, GradWorkspace};
use crate::model::{attend_blocks, Batch, Blocks, Saved, Workspace};
use crate::topology::{ring_block_owner, ring_peers, ring_tokens, LocalTokens};
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Ring,
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
        super::decode::sequence_parallel(cfg, rank, Route::Ring, prompt)
    },
    train: TrainSpec {
        grad_peers: |cfg, _| (0..cfg.split.sp()).collect(),
        kv_replicas: |_, rank| vec![rank],
        backward_traffic,
        dkv_rows: |cfg, _| cfg.micro_batch * super::shared::longest_tokens(cfg),
        extra_bytes: |cfg, _| grad_ring_bytes((cfg.micro_batch * super::shared::longest_tokens(cfg)) as u64, 2 * cfg.model.kv_dim() as u64),
        pipelined: false,
    },
};

/// Two K/V buffers of the longest block: the one in use, and the next one arriving.
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let rows = cfg.micro_batch * super::shared::longest_tokens(cfg);
    let local = super::shared::local_buffers(cfg, &super::shared::sequence_parallel_placement(cfg, rank));
    crate::model::Buffers { kv_rows: rows, kv_in_rows: rows, attention_kv: (rows, local.attention_kv.1), ..local }
}

/// Per layer and micro-batch, P - 1 exchanges with the neighbours: at step s a rank sends the
/// K/V block it holds (rank r - s's: micro-batch x its tokens x 2 kv_dim BF16 values) and
/// receives the one it holds next, while attention runs on the block in hand.
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let (m, p) = (&cfg.model, cfg.split.sp());
    let block = |owner: usize| (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, p, owner).len() * 2 * m.kv_dim() * 2) as u64;
    ring_steps(rank, p, block, |pos| pos, (m.layers * cfg.micro_batches()) as u64)
}

/// The P - 1 steps of a ring as ring position `pos` of `p` makes them, `calls` times an
/// iteration each: at step s it sends the block it holds and receives the one it holds next;
/// `block_bytes(owner)` is ring position owner's block, `world_rank(position)` the world rank
/// at a position (the ring may be a group of a 2-D strategy).
pub(super) fn ring_steps(
    pos: usize,
    p: usize,
    block_bytes: impl Fn(usize) -> u64,
    world_rank: impl Fn(usize) -> usize,
    calls: u64,
) -> Vec<Transfer> {
    let (to, from) = ring_peers(pos, p);
    let mut peers = vec![world_rank(to), world_rank(from)];
    peers.dedup();
    (0..p.saturating_sub(1))
        .map(|step| Transfer {
            op: Op::RingStep,
            what: "K/V block",
            peers: peers.clone(),
            buffer_bytes: block_bytes(ring_block_owner(pos, step, p)),
            sent: block_bytes(ring_block_owner(pos, step, p)),
            received: block_bytes(ring_block_owner(pos, step + 1, p)),
            calls,
            overlapped: true,
        })
        .collect()
}

/// The backward's ring, per layer and micro-batch: the K/V steps again (as the forward's), and
/// P messages of FP32 dK|dV (twice a K/V block's bytes): after each step's attention, the
/// accumulator of the block in hand goes on to the rank that holds that block next, while the
/// one of the block it holds next arrives; the last brings each rank its own block's, complete.
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let (m, p) = (&cfg.model, cfg.split.sp());
    let calls = (m.layers * cfg.micro_batches()) as u64;
    let block = |owner: usize| (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, p, owner).len() * 2 * m.kv_dim() * 2) as u64;
    let mut out = ring_steps(rank, p, block, |pos| pos, calls);
    out.extend(gradient_steps(rank, p, |owner| 2 * block(owner), |pos| pos, calls));
    out
}

/// The dK|dV messages of a ring backward at ring position `pos` of `p` (see `backward_traffic`):
/// `grad_bytes(owner)` is ring position owner's accumulator on the wire.
pub(super) fn gradient_steps(
    pos: usize,
    p: usize,
    grad_bytes: impl Fn(usize) -> u64,
    world_rank: impl Fn(usize) -> usize,
    calls: u64,
) -> Vec<Transfer> {
    let (to, from) = ring_peers(pos, p);
    let mut peers = vec![world_rank(to), world_rank(from)];
    peers.dedup();
    (0..if p > 1 { p } else { 0 })
        .map(|step| Transfer {
            op: Op::RingStep,
            what: "dK/dV accumulator (FP32)",
            peers: peers.clone(),
            buffer_bytes: grad_bytes(ring_block_owner(pos, step, p)),
            sent: grad_bytes(ring_block_owner(pos, step, p)),
            received: grad_bytes(ring_block_owner(pos, (step + 1) % p, p)),
            calls,
            // After the step's attention: nothing left to run under it.
            overlapped: false,
        })
        .collect()
}

fn project(cfg: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let r = project_ring(x, &(0..cfg.split.sp()).collect::<Vec<_>>(), x.attention_per_layer_mb_s / cfg.split.sp() as f64);
    CommProjection {
        crosses_nodes: r.crosses,
        link_bytes_per_s: r.link_bytes_per_s,
        exposed_s: r.exposed_s,
        hidden_fraction: r.hidden_fraction,
        bubble_s: 0.0,
        details: r.details(),
    }
}

/// A ring's steps (the `RingStep` transfers of `x.traffic`) on the links of `members` (the world
/// ranks of the ring), each under `step_compute` seconds of attention.
pub(super) struct RingProjection {
    pub crosses: bool,
    pub link_bytes_per_s: f64,
    /// What exceeds each step's attention, summed over the iteration.
    pub exposed_s: f64,
    pub hidden_fraction: f64,
    /// The longest step's transfer, and a step's attention.
    pub step_s: f64,
    pub step_compute_s: f64,
}

impl RingProjection {
    pub fn details(&self) -> Vec<(&'static str, f64)> {
        vec![("ring step transfer", self.step_s), ("ring step attention", self.step_compute_s)]
    }
}

/// Each step's transfer runs under that step's attention; only what exceeds it is exposed. The
/// ring moves at its slowest hop, so it is on InfiniBand as soon as it spans two nodes.
pub(super) fn project_ring(x: &ProjectionInput, members: &[usize], step_compute: f64) -> RingProjection {
    let (crosses, bw) = x.link(members);
    let (mut exposed, mut longest) = (0.0, 0.0f64);
    for t in x.traffic.iter().filter(|t| t.op == Op::RingStep) {
        let s = x.latency(t, crosses) + t.sent.max(t.received) as f64 / bw;
        longest = longest.max(s);
        exposed += (s - step_compute).max(0.0) * t.calls as f64;
    }
    RingProjection {
        crosses,
        link_bytes_per_s: bw,
        exposed_s: exposed,
        hidden_fraction: if longest > 0.0 { (step_compute / longest).min(1.0) } else { 1.0 },
        step_s: longest,
        step_compute_s: step_compute,
    }
}

pub struct Ring<B: Backend> {
    cfg: RunConfig,
    rank: usize,
    /// Every ring position's tokens: the layout of the K/V block that arrives from it.
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
    decoder: Option<Decoder<B>>,
    trainer: Option<(Trainer<B>, GradRing<B>)>,
}

/// The travelling dK|dV of a ring backward: the FP32 accumulator of the block in hand, and its
/// bits on the wire going out and coming in (`pack_acc`), each for the longest block.
pub(super) struct GradRing<B: Backend> {
    /// On return from `ring_pass_backward`, this position's own block's complete dK|dV.
    pub travel: B::Acc,
    pub out: B::Act,
    pub arriving: B::Act,
}

impl<B: Backend> GradRing<B> {
    pub fn new(be: &B, rows: usize, kv_cols: usize) -> Result<Self> {
        Ok(GradRing {
            travel: be.alloc_acc(rows, kv_cols)?,
            out: be.alloc_act(rows, 2 * kv_cols)?,
            arriving: be.alloc_act(rows, 2 * kv_cols)?,
        })
    }
}

/// Bytes of a `GradRing` for `rows` rows of K|V `kv_cols` wide.
pub(super) fn grad_ring_bytes(rows: u64, kv_cols: u64) -> u64 {
    4 * rows * kv_cols + 2 * 2 * (2 * rows * kv_cols)
}

impl<B: Backend> Ring<B> {
    pub fn new(cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        let stack = Stack::of(&SPEC, cfg, be, rank)?;
        let trainer = if cfg.train {
            let rows = cfg.micro_batch * super::shared::longest_tokens(cfg);
            let shard = crate::model::Shard::whole(&cfg.model);
            Some((Trainer::new(be, cfg, &stack, &shard, &SPEC, rank)?, GradRing::new(be, rows, 2 * cfg.model.kv_dim())?))
        } else {
            None
        };
        Ok(Ring {
            cfg: cfg.clone(),
            rank,
            layout: super::shared::sequence_layout(cfg),
            stack,
            decoder: decode::decoder_for(cfg, be, SPEC.decode, rank)?,
            trainer,
        })
    }
}

/// Ring attention of the batch's queries against every ring position's K/V block over `comm`
/// (the world, or tp-cp's context ring); fills ws.attn.
pub(super) fn ring_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    ws: &mut Workspace<B>,
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    let q = Blocks::one(batch.seqs, batch.tokens);
    let blocks: Vec<Blocks> = layout.iter().map(|t| Blocks::one(batch.seqs, t)).collect();
    let Workspace { q: wq, kv, kv_in, o, lse, heads, .. } = ws;
    ring_pass(be, comm, wq, &q, kv, kv_in, &blocks, *heads, causal, o, lse)?;
    be.attention_store(&ws.o, &mut ws.attn)
}

/// The ring itself, over the ranks of `ring` (the world, or the ring group of a 2-D strategy):
/// attention of the queries in `q` (laid out as `q_blocks`) against every ring position's K/V,
/// which arrives one block per step; position i's K/V is laid out as `kv_blocks[i]`. On entry
/// `kv` holds this position's own block; the next block lands in `kv_in` while the one in hand is
/// attended (double buffering), and the two swap. o and lse are reset here and hold the merged
/// result at the end.
#[allow(clippy::too_many_arguments)]
pub(super) fn ring_pass<B: Backend, C: Communicator<B>>(
    be: &B,
    ring: &C,
    q: &B::Act,
    q_blocks: &Blocks,
    kv: &mut B::Act,
    kv_in: &mut B::Act,
    kv_blocks: &[Blocks],
    heads: Heads,
    causal: bool,
    o: &mut B::Acc,
    lse: &mut B::Acc,
) -> Result<()> {
    let (pos, p) = (ring.rank(), kv_blocks.len());
    debug_assert_eq!(ring.size(), p);
    let (to, from) = ring_peers(pos, p);
    o.set_rows(q_blocks.rows);
    lse.set_rows(q_blocks.rows);
    be.attention_reset(o, lse)?;
    for step in 0..p {
        let owner = ring_block_owner(pos, step, p);
        let mut compute = || attend_blocks(be, q, q_blocks, kv, &kv_blocks[owner], heads, causal, o, lse);
        if step + 1 < p {
            let incoming = ring_block_owner(pos, step + 1, p);
            kv_in.set_rows(kv_blocks[incoming].rows);
            ring.exchange(kv, to, kv_in, from, &mut compute).with_context(|| {
                format!("ring step {step}: sending to ring position {to}, receiving position {incoming}'s block from position {from}")
            })?;
            std::mem::swap(kv, kv_in);
        } else {
            compute()?;
        }
    }
    Ok(())
}

/// The ring strategy's attention backward: `ring_pass_backward` of its queries against every
/// position's block, from its own K/V (saved); gws.dq and gws.dkv hold this rank's gradients
/// (BF16) on return. `ws.kv` and `ws.kv_in` carry the K/V blocks, as in the forward.
#[allow(clippy::too_many_arguments)]
pub(super) fn ring_backward<B: Backend, C: Communicator<B>>(
    be: &B,
    ring: &C,
    ws: &mut Workspace<B>,
    gws: &mut GradWorkspace<B>,
    grad: &mut GradRing<B>,
    saved: &Saved<B>,
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    let heads = ws.heads;
    begin_attention_backward(be, gws, saved, heads)?;
    ws.kv.set_rows(saved.kv.rows());
    be.copy_rows(&saved.kv, 0, &mut ws.kv, 0, saved.kv.rows())?;
    let q = Blocks::one(batch.seqs, batch.tokens);
    let blocks: Vec<Blocks> = layout.iter().map(|t| Blocks::one(batch.seqs, t)).collect();
    let GradWorkspace { dattn, delta, dq_acc, dkv_acc, .. } = gws;
    let grads = (&*dattn, &saved.lse, &*delta);
    ring_pass_backward(be, ring, (&saved.q, &q), (&mut ws.kv, &mut ws.kv_in), &blocks, heads, causal, grads, (dq_acc, dkv_acc), grad)?;
    be.attention_store(dq_acc, &mut gws.dq)?;
    be.attention_store(&grad.travel, &mut gws.dkv)
}

/// The backward of `ring_pass` over the ranks of `ring` (docs/design.md, "Training"): the K/V
/// blocks travel around the ring again (each step's transfer under its attention, as in the
/// forward), each followed by its FP32 dK|dV accumulator once the step's attention has added
/// this position's queries' share (that transfer is exposed: one exchange at a time keeps every
/// transport's messages in order); dQ accumulates locally in `dq`, `dkv` takes each step's
/// share. On entry `kv` holds this position's own block; on return `grad.travel` holds its
/// complete dK|dV (FP32). `grads` are dO, the forward's final lse and delta of the queries.
#[allow(clippy::too_many_arguments)]
pub(super) fn ring_pass_backward<B: Backend, C: Communicator<B>>(
    be: &B,
    ring: &C,
    (q, q_blocks): (&B::Act, &Blocks),
    (kv, kv_in): (&mut B::Act, &mut B::Act),
    kv_blocks: &[Blocks],
    heads: Heads,
    causal: bool,
    grads: (&B::Act, &B::Acc, &B::Acc),
    (dq, dkv): (&mut B::Acc, &mut B::Acc),
    grad: &mut GradRing<B>,
) -> Result<()> {
    let (pos, p) = (ring.rank(), kv_blocks.len());
    let (to, from) = ring_peers(pos, p);
    for step in 0..p {
        let owner = ring_block_owner(pos, step, p);
        dkv.set_rows(kv_blocks[owner].rows);
        be.zero_acc(dkv)?;
        let mut compute = || attend_blocks_backward(be, (q, q_blocks), (&*kv, &kv_blocks[owner]), heads, causal, grads, dq, dkv);
        if step + 1 < p {
            let incoming = ring_block_owner(pos, step + 1, p);
            kv_in.set_rows(kv_blocks[incoming].rows);
            ring.exchange(kv, to, kv_in, from, &mut compute)
                .with_context(|| format!("ring backward step {step}: K/V to ring position {to}, from {from}"))?;
            std::mem::swap(kv, kv_in);
        } else {
            compute()?;
        }
        // The accumulator of this block: what the positions before added (arrived after their
        // step), and this position's share.
        if step == 0 {
            be.copy_acc(dkv, &mut grad.travel)?;
        } else {
            be.unpack_acc(&grad.arriving, &mut grad.travel)?;
            be.add_acc(&mut grad.travel, dkv)?;
        }
        if p > 1 {
            be.pack_acc(&grad.travel, &mut grad.out)?;
            grad.arriving.set_rows(kv_blocks[ring_block_owner(pos, step + 1, p)].rows);
            ring.exchange(&grad.out, to, &mut grad.arriving, from, &mut || Ok(()))
                .with_context(|| format!("ring backward step {step}: dK/dV to ring position {to}, from {from}"))?;
        }
    }
    if p > 1 {
        // The last exchange brought this position's own block's accumulator, complete.
        be.unpack_acc(&grad.arriving, &mut grad.travel)?;
    }
    Ok(())
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Ring<B> {
    fn forward(&mut self, be: &B, comm: &C, keep: bool) -> Result<()> {
        debug_assert_eq!(comm.rank(), self.rank);
        let (cfg, layout, dec) = (&self.cfg, &self.layout, &mut self.decoder);
        dec.iter_mut().for_each(Decoder::restart);
        self.stack.forward_all(be, cfg, keep, &mut |ws, batch, l| {
            decode::keep_own(dec, be, l, ws, batch)?;
            ring_attention(be, comm, ws, batch, layout, cfg.causal)
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
        let (trainer, grad) = self.trainer.as_mut().ok_or_else(|| anyhow::anyhow!("ring set up without --train"))?;
        trainer.step(
            &mut self.stack,
            be,
            cfg,
            keep,
            &mut |ws, batch, _| ring_attention(be, comm, ws, batch, layout, cfg.causal),
            &mut |ws, gws, saved, batch, _| ring_backward(be, comm, ws, gws, grad, saved, batch, layout, cfg.causal),
            &mut |_| Ok(()),
            (comm, Some(comm)),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _)| t.gradients())
    }
}

/// A 2-D strategy's communication: its inner group's collectives (`op`, exposed: attention needs
/// their result) at the link of the group `inner`, labelled `label` with one layer's worth of
/// them, and its ring's steps over `ring` (world ranks), each under `step_compute` seconds of
/// attention, as the ring's are.
pub(super) fn project_two_d(
    x: &ProjectionInput,
    (op, label, inner): (Op, &'static str, &[usize]),
    ring: &[usize],
    step_compute: f64,
) -> CommProjection {
    let r = project_ring(x, ring, step_compute);
    let (inner_crosses, inner_bw, per_layer, total) = super::shared::exposed_collectives(x, op, inner);
    let mut details = vec![(label, per_layer)];
    details.extend(r.details());
    CommProjection {
        crosses_nodes: r.crosses || inner_crosses,
        link_bytes_per_s: if ring.len() > 1 { r.link_bytes_per_s.min(inner_bw) } else { inner_bw },
        exposed_s: total + r.exposed_s,
        hidden_fraction: r.hidden_fraction,
        bubble_s: 0.0,
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CpuBackend, HostMat};
    use crate::comm::local::LocalComm;
    use crate::comm::HostCollectives;
    use crate::config::{Layout, ModelConfig};
    use crate::generator::uniform;
    use crate::model::Shard;
    use half::bf16;

    const HEADS: usize = 2;
    const HD: usize = 8;
    const SEQS: usize = 2;

    /// Sharp synthetic activations: entries up to +-3, so scores spread over several units and a
    /// wrong mask, position or merge weight changes the output visibly.
    fn value(tensor: u64, seq: usize, pos: usize, col: usize, width: usize, seq_len: usize) -> f32 {
        bf16::from_f32(3.0 * uniform(11, tensor, ((seq * seq_len + pos) * width + col) as u64)).to_f32()
    }

    /// FP64 softmax attention of sequence `seq`, head `h`, query `p` over all keys.
    fn exact(seq: usize, h: usize, p: usize, seq_len: usize, causal: bool) -> Vec<f64> {
        let w = HEADS * HD;
        let keys = if causal { p + 1 } else { seq_len };
        let s: Vec<f64> = (0..keys)
            .map(|k| {
                (0..HD)
                    .map(|c| value(1, seq, p, h * HD + c, w, seq_len) as f64 * value(2, seq, k, h * HD + c, 2 * w, seq_len) as f64)
                    .sum::<f64>()
                    / (HD as f64).sqrt()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        (0..HD)
            .map(|c| s.iter().enumerate().map(|(k, x)| (x - m).exp() / z * value(2, seq, k, w + h * HD + c, 2 * w, seq_len) as f64).sum())
            .collect()
    }

    fn run_rank(comm: LocalComm, layout: Layout, ring: usize, seq_len: usize, causal: bool) -> (LocalTokens, HostMat<f32>) {
        let be = CpuBackend::new();
        let m = ModelConfig::dense(1, HEADS * HD, HEADS, 2, seq_len, SEQS);
        let all: Vec<LocalTokens> = (0..ring).map(|r| ring_tokens(layout, seq_len, ring, r)).collect();
        let mine = all[comm.rank()].clone();
        let largest = all.iter().map(LocalTokens::len).max().unwrap();
        let rows = SEQS * largest;
        let bufs = crate::strategy::Buffers {
            kv_rows: rows,
            kv_in_rows: rows,
            acc_rows: SEQS * mine.len(),
            acc_heads: HEADS,
            ..Default::default()
        };
        let mut ws = Workspace::new(&be, &m, &Shard::whole(&m), SEQS * mine.len(), &bufs).unwrap();
        let batch = Batch { first_seq: 0, seqs: SEQS, tokens: &mine };
        let (w, rows) = (HEADS * HD, batch.rows());
        ws.q.set_rows(rows);
        ws.kv.set_rows(rows);
        for (s, span, stride) in batch.spans() {
            for i in 0..span.len {
                let (row, pos) = (span.row0 + i, span.pos0 + i * stride);
                for c in 0..w {
                    ws.q.as_mut_slice()[row * w + c] = bf16::from_f32(value(1, s, pos, c, w, seq_len));
                }
                for c in 0..2 * w {
                    ws.kv.as_mut_slice()[row * 2 * w + c] = bf16::from_f32(value(2, s, pos, c, 2 * w, seq_len));
                }
            }
        }
        ring_attention(&be, &comm, &mut ws, &batch, &all, causal).unwrap();
        (mine, ws.o)
    }

    #[test]
    fn ring_attention_matches_fp64_softmax_with_sharp_scores() {
        let cases = [
            (Layout::Zigzag, 4, 37, true),
            (Layout::Zigzag, 3, 50, false),
            (Layout::Zigzag, 1, 9, true),
            (Layout::Contiguous, 4, 37, true),
            (Layout::Contiguous, 3, 29, false),
            (Layout::Zigzag, 5, 10, true), // one token per chunk
            (Layout::Striped, 4, 37, true),
            (Layout::Striped, 3, 29, false),
            (Layout::Striped, 5, 5, true), // one token per rank
        ];
        for (layout, ring, seq_len, causal) in cases {
            let threads: Vec<_> = LocalComm::world(ring)
                .into_iter()
                .map(|c| std::thread::spawn(move || run_rank(c, layout, ring, seq_len, causal)))
                .collect();
            let mut max_err = 0.0f64;
            let mut seen = 0;
            for t in threads {
                let (tokens, o) = t.join().expect("rank thread");
                let n = tokens.len();
                for s in 0..SEQS {
                    for (r, seg) in tokens.with_rows() {
                        for i in 0..seg.len {
                            let row = (s * n + r + i) * HEADS * HD;
                            for h in 0..HEADS {
                                let want = exact(s, h, seg.start + i * seg.stride, seq_len, causal);
                                for (c, w) in want.iter().enumerate() {
                                    max_err = max_err.max((o.as_slice()[row + h * HD + c] as f64 - w).abs());
                                }
                            }
                            seen += 1;
                        }
                    }
                }
            }
            println!("{layout:?} ring {ring} seq {seq_len} causal {causal}: max abs error {max_err:.2e}");
            assert_eq!(seen, SEQS * seq_len, "every token's output checked once");
            // FP32 arithmetic on exact BF16 inputs of magnitude <= 3: a few FP32 ulps of the outputs.
            assert!(max_err < 1e-5, "{layout:?} ring {ring} seq {seq_len} causal {causal}: max abs error {max_err}");
        }
    }
}
