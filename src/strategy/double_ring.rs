//! LoongTrain's double ring (arXiv 2406.18485): sequence parallelism over P = W x N ranks whose
//! ring spans nodes. The sequence is laid out over the P ranks as the ring lays it; the ranks form
//! N windows of W consecutive ranks (inside a node) with an inner ring each, and the ranks of the
//! same index in every window form an outer ring across the windows.
//!
//! Per layer, after the local QKV projection and RoPE, N outer steps. At outer step j the ranks of
//! window k hold the K/V blocks of window (k - j) mod N, one each, and pass them around their inner
//! ring in W steps (attention against each block in hand, merged by LSE into FP32 (o, lse), the
//! next block moving meanwhile, as the ring's steps do); meanwhile each rank sends the block it
//! started the outer step with to the rank of its index in window k + 1, which needs it at outer
//! step j + 1, and receives its own next one from window k - 1. A rank sends P - 1 blocks per layer
//! as in ring, N (W - 1) on its inner ring and N - 1 across windows, each of those hidden under W
//! steps of attention, where a plain ring that spans nodes waits on a cross-node hop at each of its
//! P - 1 steps. The outer ring's transfers run on a communication stream of their own (NCCL), so
//! they overlap the inner ring's. W = P is ring (one window); W = 1 is ring too (the outer ring).

use super::decode::{self, combine::Route, Decoder};
use super::ring::{grad_ring_bytes, gradient_steps, ring_pass_backward, ring_steps, GradRing};
use super::spec::{CommProjection, Op, ProjectionInput, SizeFlags, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::{Backend, Heads, Matrix};
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, Split, StrategyKind};
use crate::model::backward::{begin_attention_backward, GradWorkspace};
use crate::model::{attend_blocks, Batch, Blocks, Saved, Workspace};
use crate::topology::{grid_coord, grid_rank, ring_peers, ring_tokens, LocalTokens};
use anyhow::{Context, Result};

pub const SPEC: Spec = Spec {
    kind: StrategyKind::DoubleRing,
    size_names: &["windows", "window"],
    sizes: |cfg| vec![cfg.split.sp() / cfg.split.window().max(1), cfg.split.window()],
    resolve_sizes,
    uses_layout: true,
    world: super::shared::sp_world,
    check,
    placement: super::shared::sequence_parallel_placement,
    traffic,
    buffers,
    splits,
    project,
    // Decode passes the queries around the whole ring (pass-Q): a step's blocks are a token per
    // sequence, where the double ring's schedule has nothing to hide.
    decode: |cfg, rank| {
        let prompt = super::shared::sequence_parallel_placement(cfg, rank).tokens.len();
        super::decode::sequence_parallel(cfg, rank, Route::Ring, prompt)
    },
    train: TrainSpec {
        grad_peers: |cfg, _| (0..cfg.split.sp()).collect(),
        kv_replicas: |_, rank| vec![rank],
        backward_traffic,
        dkv_rows: |cfg, _| cfg.micro_batch * super::shared::longest_tokens(cfg),
        extra_bytes: |cfg, _| {
            2 * grad_ring_bytes((cfg.micro_batch * super::shared::longest_tokens(cfg)) as u64, 2 * cfg.model.kv_dim() as u64)
        },
        pipelined: false,
    },
};

/// What the inner ring's blocks are called in the traffic table (and the outer ring's).
pub const INNER: &str = "K/V block (inner ring, in a window)";
pub const OUTER: &str = "K/V block (outer ring, across windows)";

/// --ring (the world by default; under `all`, the ring's, which is the world) and --window (by
/// default the largest divisor of --ring up to 8 that leaves two windows or more).
fn resolve_sizes(cfg: &mut RunConfig, flags: &SizeFlags, world: usize) {
    let p = flags.ring.unwrap_or(world);
    let (w, _) = super::shared::two_d_sizes(flags.window, None, p, |_| true);
    cfg.split = Split::DoubleRing { p, w };
}

fn check(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let (w, p) = (cfg.split.window(), cfg.split.sp());
    crate::config::require_positive(&[("--window", w)])?;
    if p % w != 0 {
        return Err(ConfigError(format!("--window {w}: must divide --ring {p} (the ring is windows of {w} ranks)")));
    }
    super::shared::check_sequence_parallel(cfg, world)
}

/// (index in its window, window) of `rank`.
fn coord(cfg: &RunConfig, rank: usize) -> (usize, usize) {
    grid_coord(rank, cfg.split.window())
}

/// Its window (color = window, key = index), then the outer ring of its index (color = index,
/// key = window).
fn splits(cfg: &RunConfig, rank: usize) -> Vec<(usize, usize)> {
    let (i, k) = coord(cfg, rank);
    vec![(k, i), (i, k)]
}

/// Four K/V buffers of the longest block: the block an outer step starts with (kept to send on),
/// the next outer step's arriving, and the inner ring's two (the one in hand, the next arriving).
fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    let rows = cfg.micro_batch * super::shared::longest_tokens(cfg);
    let local = super::shared::local_buffers(cfg, &super::shared::sequence_parallel_placement(cfg, rank));
    let cols = local.attention_kv.1;
    crate::model::Buffers { kv_rows: rows, kv_in_rows: rows, extra: vec![(rows, cols), (rows, cols)], attention_kv: (rows, cols), ..local }
}

/// Whose block (a world rank) the rank at (`i`, window `k`) holds at inner step `t` of outer step
/// `j`: window (k - j)'s, the index (i - t) of it.
fn owner(i: usize, k: usize, j: usize, t: usize, w: usize, n: usize) -> usize {
    grid_rank((i + w - t % w) % w, (k + n - j % n) % n, w)
}

/// Per layer and micro-batch: N outer steps of W - 1 exchanges on the inner ring, and N - 1
/// exchanges on the outer ring, each a block as the ring's (micro-batch x its owner's tokens x
/// 2 kv_dim BF16 values).
fn traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let (m, w, p) = (&cfg.model, cfg.split.window(), cfg.split.sp());
    let n = p / w;
    let (i, k) = coord(cfg, rank);
    let calls = (m.layers * cfg.micro_batches()) as u64;
    let block = |owner: usize| (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, p, owner).len() * 2 * m.kv_dim() * 2) as u64;
    let mut out = Vec::new();
    for j in 0..n {
        // The inner ring's steps, as a ring of W over the window's blocks of this outer step.
        let steps = ring_steps(i, w, |pos| block(owner(pos, k, j, 0, w, n)), |pos| grid_rank(pos, k, w), calls);
        out.extend(steps.into_iter().map(|t| Transfer { what: INNER, ..t }));
    }
    let (to, from) = ring_peers(k, n);
    let mut peers = vec![grid_rank(i, to, w), grid_rank(i, from, w)];
    peers.dedup();
    for j in 0..n.saturating_sub(1) {
        out.push(Transfer {
            op: Op::RingStep,
            what: OUTER,
            peers: peers.clone(),
            buffer_bytes: block(owner(i, k, j, 0, w, n)),
            sent: block(owner(i, k, j, 0, w, n)),
            received: block(owner(i, k, j + 1, 0, w, n)),
            calls,
            overlapped: true,
        });
    }
    out
}

/// The backward's, per layer and micro-batch: the forward's K/V steps again, and the FP32
/// dK/dV accumulators: per outer step, those of the window's blocks around the inner ring (as
/// the ring's backward moves them), then the window's sum of the block it started with to the
/// next window (N messages across windows, the last bringing each rank its own block's).
fn backward_traffic(cfg: &RunConfig, rank: usize) -> Vec<Transfer> {
    let (m, w, p) = (&cfg.model, cfg.split.window(), cfg.split.sp());
    let n = p / w;
    let (i, k) = coord(cfg, rank);
    let calls = (m.layers * cfg.micro_batches()) as u64;
    let grad = |owner: usize| 2 * (cfg.micro_batch * ring_tokens(cfg.layout, m.seq_len, p, owner).len() * 2 * m.kv_dim() * 2) as u64;
    let mut out = traffic(cfg, rank);
    for j in 0..n {
        let window = (k + n - j) % n;
        out.extend(gradient_steps(i, w, |pos| grad(grid_rank(pos, window, w)), |pos| grid_rank(pos, k, w), calls));
    }
    let (to, from) = ring_peers(k, n);
    let mut peers = vec![grid_rank(i, to, w), grid_rank(i, from, w)];
    peers.dedup();
    for j in 0..if n > 1 { n } else { 0 } {
        out.push(Transfer {
            op: Op::RingStep,
            what: "dK/dV accumulator (FP32, outer ring)",
            peers: peers.clone(),
            buffer_bytes: grad(owner(i, k, j, 0, w, n)),
            sent: grad(owner(i, k, j, 0, w, n)),
            received: grad(owner(i, k, j + 1, 0, w, n)),
            calls,
            overlapped: false,
        });
    }
    out
}

/// Each inner step's transfer hides under that step's attention (at the window's link); each
/// outer transfer under the whole inner ring of its outer step (W steps of attention, and what
/// of the inner transfers they do not hide), at the outer ring's link.
fn project(cfg: &RunConfig, x: &ProjectionInput) -> CommProjection {
    let (w, p) = (cfg.split.window(), cfg.split.sp());
    let n = p / w;
    let (i, k) = coord(cfg, x.rank);
    let window: Vec<usize> = (0..w).map(|a| grid_rank(a, k, w)).collect();
    let outer: Vec<usize> = (0..n).map(|b| grid_rank(i, b, w)).collect();
    let (inner_crosses, inner_bw) = x.link(&window);
    let (outer_crosses, outer_bw) = x.link(&outer);
    let step_compute = x.attention_per_layer_mb_s / p as f64;
    let transfer = |t: &Transfer, crosses: bool, bw: f64| x.latency(t, crosses) + t.sent.max(t.received) as f64 / bw;
    let (mut exposed, mut moved, mut inner_step, mut outer_step) = (0.0, 0.0, 0.0f64, 0.0f64);
    for t in x.traffic.iter().filter(|t| t.what == INNER) {
        let s = transfer(t, inner_crosses, inner_bw);
        inner_step = inner_step.max(s);
        exposed += (s - step_compute).max(0.0) * t.calls as f64;
        moved += s * t.calls as f64;
    }
    // One outer step's inner ring: W steps of attention, each at least its transfer's time.
    let inner_ring = (w.saturating_sub(1)) as f64 * step_compute.max(inner_step) + step_compute;
    for t in x.traffic.iter().filter(|t| t.what == OUTER) {
        let s = transfer(t, outer_crosses, outer_bw);
        outer_step = outer_step.max(s);
        exposed += (s - inner_ring).max(0.0) * t.calls as f64;
        moved += s * t.calls as f64;
    }
    CommProjection {
        crosses_nodes: inner_crosses || outer_crosses,
        link_bytes_per_s: if n > 1 { outer_bw.min(inner_bw) } else { inner_bw },
        exposed_s: exposed,
        hidden_fraction: if moved > 0.0 { 1.0 - exposed / moved } else { 1.0 },
        bubble_s: 0.0,
        details: vec![
            ("inner ring step transfer", inner_step),
            ("outer ring step transfer", outer_step),
            ("ring step attention", step_compute),
            ("inner ring of an outer step", inner_ring),
        ],
    }
}

pub struct DoubleRing<B: Backend, C> {
    cfg: RunConfig,
    /// Its window's inner ring.
    inner: C,
    /// The ranks of its index in every window: the outer ring, on a stream of its own.
    outer: C,
    /// Every rank's tokens: the layout of the K/V block that arrives from it.
    layout: Vec<LocalTokens>,
    stack: Stack<B>,
    /// The next outer step's block, arriving; the inner ring's second buffer.
    next: B::Act,
    spare: B::Act,
    decoder: Option<Decoder<B>>,
    /// With --train: the trainer, and the travelling dK|dV of the inner and the outer ring.
    trainer: Option<(Trainer<B>, [GradRing<B>; 2])>,
}

impl<B: Backend, C: Communicator<B>> DoubleRing<B, C> {
    pub fn new(cfg: &RunConfig, be: &B, world: &C) -> Result<Self> {
        let rank = world.rank();
        let [(w_color, w_key), (o_color, o_key)] = splits(cfg, rank)[..] else { unreachable!("double-ring makes two splits") };
        let inner = world.split(w_color, w_key).context("creating the window's inner ring")?;
        let outer = world.split_own_lane(o_color, o_key).context("creating the outer ring across the windows")?;
        let extra = buffers(cfg, rank).extra;
        let (next, spare) = (be.alloc_act(extra[0].0, extra[0].1)?, be.alloc_act(extra[1].0, extra[1].1)?);
        let stack = Stack::of(&SPEC, cfg, be, rank)?;
        let trainer = match cfg.train {
            true => {
                let (rows, cols) = (cfg.micro_batch * super::shared::longest_tokens(cfg), 2 * cfg.model.kv_dim());
                let t = Trainer::new(be, cfg, &stack, &crate::model::Shard::whole(&cfg.model), &SPEC, rank)?;
                Some((t, [GradRing::new(be, rows, cols)?, GradRing::new(be, rows, cols)?]))
            }
            false => None,
        };
        Ok(DoubleRing {
            cfg: cfg.clone(),
            inner,
            outer,
            layout: super::shared::sequence_layout(cfg),
            stack,
            next,
            spare,
            decoder: decode::decoder_for(cfg, be, SPEC.decode, rank)?,
            trainer,
        })
    }
}

/// The K/V buffers of the double ring: `start` holds the block the outer step starts with (on
/// entry, this rank's own), `next` receives the next outer step's, `a` and `b` take turns as the
/// inner ring's block in hand and arriving.
struct KvBuffers<'a, B: Backend> {
    start: &'a mut B::Act,
    next: &'a mut B::Act,
    a: &'a mut B::Act,
    b: &'a mut B::Act,
}

/// Attention of the queries in `q` (laid out as `q_blocks`) against every rank's K/V block, laid
/// out as `kv_blocks[rank]`, over the window's `inner` ring and the `outer` ring across windows.
/// o and lse are reset here and hold the merged result at the end.
#[allow(clippy::too_many_arguments)]
fn double_ring_pass<B: Backend, C: Communicator<B>>(
    be: &B,
    inner: &C,
    outer: &C,
    q: &B::Act,
    q_blocks: &Blocks,
    bufs: KvBuffers<B>,
    kv_blocks: &[Blocks],
    heads: Heads,
    causal: bool,
    o: &mut B::Acc,
    lse: &mut B::Acc,
) -> Result<()> {
    let (i, w, k, n) = (inner.rank(), inner.size(), outer.rank(), outer.size());
    debug_assert_eq!(kv_blocks.len(), w * n);
    let (to_i, from_i) = ring_peers(i, w);
    let (to_o, from_o) = ring_peers(k, n);
    o.set_rows(q_blocks.rows);
    lse.set_rows(q_blocks.rows);
    be.attention_reset(o, lse)?;
    let KvBuffers { mut start, mut next, a, b } = bufs;
    for j in 0..n {
        let mut inner_ring = || -> Result<()> {
            for t in 0..w {
                let held_by = owner(i, k, j, t, w, n);
                let (held, arriving): (&B::Act, &mut B::Act) = match t {
                    0 => (&*start, &mut *a),
                    t if t % 2 == 1 => (&*a, &mut *b),
                    _ => (&*b, &mut *a),
                };
                let mut compute = || attend_blocks(be, q, q_blocks, held, &kv_blocks[held_by], heads, causal, o, lse);
                if t + 1 < w {
                    let incoming = owner(i, k, j, t + 1, w, n);
                    arriving.set_rows(kv_blocks[incoming].rows);
                    inner.exchange(held, to_i, arriving, from_i, &mut compute).with_context(|| {
                        format!("inner ring step {t} of outer step {j}: sending to window index {to_i}, receiving rank {incoming}'s block from index {from_i}")
                    })?;
                } else {
                    compute()?;
                }
            }
            Ok(())
        };
        if j + 1 < n {
            let incoming = owner(i, k, j + 1, 0, w, n);
            next.set_rows(kv_blocks[incoming].rows);
            outer.exchange(start, to_o, next, from_o, &mut inner_ring).with_context(|| {
                format!("outer ring step {j}: sending to window {to_o}, receiving rank {incoming}'s block from window {from_o}")
            })?;
            std::mem::swap(&mut start, &mut next);
        } else {
            inner_ring()?;
        }
    }
    Ok(())
}

/// The backward of `double_ring_pass`: per outer step, the ring's backward over the window
/// (`ring_pass_backward`, the K/V blocks of window k - j and their FP32 dK|dV accumulators) under
/// the outer ring's transfer of the next start block, as in the forward; then the window's sum
/// for the block it started with goes on to the next window, where the sum of the windows before
/// is added, until the last brings each rank its own block's. Fills gws.dq and gws.dkv.
#[allow(clippy::too_many_arguments)]
fn double_ring_backward<B: Backend, C: Communicator<B>>(
    be: &B,
    (inner, outer): (&C, &C),
    (ws, gws, saved): (&mut Workspace<B>, &mut GradWorkspace<B>, &Saved<B>),
    (next, spare): (&mut B::Act, &mut B::Act),
    [in_grad, out_grad]: &mut [GradRing<B>; 2],
    batch: &Batch,
    layout: &[LocalTokens],
    causal: bool,
) -> Result<()> {
    let (i, w, k, n) = (inner.rank(), inner.size(), outer.rank(), outer.size());
    let (to_o, from_o) = ring_peers(k, n);
    let heads = ws.heads;
    begin_attention_backward(be, gws, saved, heads)?;
    let q = Blocks::one(batch.seqs, batch.tokens);
    let blocks: Vec<Blocks> = layout.iter().map(|t| Blocks::one(batch.seqs, t)).collect();
    let Workspace { kv, kv_in, .. } = ws;
    let (mut start, mut next) = (kv, next);
    start.set_rows(saved.kv.rows());
    be.copy_rows(&saved.kv, 0, start, 0, saved.kv.rows())?;
    let GradWorkspace { dattn, delta, dq_acc, dkv_acc, .. } = gws;
    let grads = (&*dattn, &saved.lse, &*delta);
    for j in 0..n {
        let window = (k + n - j) % n;
        let inner_blocks: Vec<Blocks> = (0..w).map(|pos| blocks[grid_rank(pos, window, w)].clone()).collect();
        let mut inner_ring = || -> Result<()> {
            // The inner ring moves its blocks through kv_in and the spare; `start` goes on intact.
            kv_in.set_rows(start.rows());
            be.copy_rows(start, 0, kv_in, 0, start.rows())?;
            let bufs = (&mut *kv_in, &mut *spare);
            ring_pass_backward(be, inner, (&saved.q, &q), bufs, &inner_blocks, heads, causal, grads, (&mut *dq_acc, &mut *dkv_acc), in_grad)
        };
        if j + 1 < n {
            let incoming = owner(i, k, j + 1, 0, w, n);
            next.set_rows(blocks[incoming].rows);
            outer.exchange(start, to_o, next, from_o, &mut inner_ring).with_context(|| {
                format!("outer ring backward step {j}: sending to window {to_o}, receiving rank {incoming}'s block from window {from_o}")
            })?;
            std::mem::swap(&mut start, &mut next);
        } else {
            inner_ring()?;
        }
        // The window's sum for the block this rank started the outer step with, plus the windows' before.
        if j > 0 {
            be.unpack_acc(&out_grad.arriving, &mut out_grad.travel)?;
            be.add_acc(&mut in_grad.travel, &out_grad.travel)?;
        }
        if n > 1 {
            be.pack_acc(&in_grad.travel, &mut out_grad.out)?;
            out_grad.arriving.set_rows(blocks[owner(i, k, j + 1, 0, w, n)].rows);
            outer
                .exchange(&out_grad.out, to_o, &mut out_grad.arriving, from_o, &mut || Ok(()))
                .with_context(|| format!("outer ring backward step {j}: dK/dV to window {to_o}, from window {from_o}"))?;
        }
    }
    let own = if n > 1 {
        be.unpack_acc(&out_grad.arriving, &mut out_grad.travel)?;
        &out_grad.travel
    } else {
        &in_grad.travel
    };
    be.attention_store(dq_acc, &mut gws.dq)?;
    be.attention_store(own, &mut gws.dkv)
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for DoubleRing<B, C> {
    fn forward(&mut self, be: &B, _world: &C, keep: bool) -> Result<()> {
        let DoubleRing { cfg, inner, outer, layout, stack, next, spare, decoder, .. } = self;
        let causal = cfg.causal;
        decoder.iter_mut().for_each(Decoder::restart);
        stack.forward_all(be, cfg, keep, &mut |ws, batch: &Batch, l| {
            decode::keep_own(decoder, be, l, ws, batch)?;
            let q = Blocks::one(batch.seqs, batch.tokens);
            let blocks: Vec<Blocks> = layout.iter().map(|t| Blocks::one(batch.seqs, t)).collect();
            let Workspace { q: wq, kv, kv_in, o, lse, heads, .. } = ws;
            let bufs = KvBuffers { start: kv, next: &mut *next, a: kv_in, b: &mut *spare };
            double_ring_pass(be, inner, outer, wq, &q, bufs, &blocks, *heads, causal, o, lse)?;
            be.attention_store(&ws.o, &mut ws.attn)
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

    fn train_step(&mut self, be: &B, world: &C, keep: bool) -> Result<StepPhases> {
        let DoubleRing { cfg, inner, outer, layout, stack, next, spare, trainer, .. } = self;
        let causal = cfg.causal;
        let (trainer, rings) = trainer.as_mut().ok_or_else(|| anyhow::anyhow!("double-ring set up without --train"))?;
        let (next, spare) = (std::cell::RefCell::new(next), std::cell::RefCell::new(spare));
        trainer.step(
            stack,
            be,
            cfg,
            keep,
            &mut |ws, batch: &Batch, _| {
                let q = Blocks::one(batch.seqs, batch.tokens);
                let blocks: Vec<Blocks> = layout.iter().map(|t| Blocks::one(batch.seqs, t)).collect();
                let Workspace { q: wq, kv, kv_in, o, lse, heads, .. } = ws;
                let (mut next, mut spare) = (next.borrow_mut(), spare.borrow_mut());
                let bufs = KvBuffers { start: kv, next: &mut **next, a: kv_in, b: &mut **spare };
                double_ring_pass(be, inner, outer, wq, &q, bufs, &blocks, *heads, causal, o, lse)?;
                be.attention_store(&ws.o, &mut ws.attn)
            },
            &mut |ws, gws, saved, batch, _| {
                let (mut next, mut spare) = (next.borrow_mut(), spare.borrow_mut());
                double_ring_backward(be, (inner, outer), (ws, gws, saved), (&mut **next, &mut **spare), rings, batch, layout, causal)
            },
            &mut |_| Ok(()),
            (world, Some(world)),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|(t, _)| t.gradients())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    /// Every rank sends P - 1 blocks per layer and micro-batch, as in ring: N (W - 1) to its
    /// window's next rank, and only N - 1 to the next window, the one hop that crosses nodes.
    #[test]
    fn only_n_minus_one_blocks_per_layer_cross_windows() {
        for (p, w) in [(8, 4), (6, 2), (6, 3), (16, 8)] {
            let cfg =
                RunConfig { split: Split::DoubleRing { p, w }, ..RunConfig::of_preset(Preset::Tiny, StrategyKind::DoubleRing, 1, 1, p) };
            crate::strategy::resolve::validate(&cfg, p).unwrap();
            let layers = (cfg.model.layers * cfg.micro_batches()) as u64;
            for rank in 0..p {
                let t = traffic(&cfg, rank);
                let window = rank / w;
                let crossing: u64 = t.iter().filter(|x| x.peers.iter().any(|&q| q / w != window)).map(|x| x.calls).sum();
                let inside: u64 = t.iter().filter(|x| x.peers.iter().all(|&q| q / w == window)).map(|x| x.calls).sum();
                assert_eq!(crossing, (p / w - 1) as u64 * layers, "P {p}, W {w}, rank {rank}");
                assert_eq!(inside, (p / w * (w - 1)) as u64 * layers, "P {p}, W {w}, rank {rank}");
                assert!(
                    t.iter().filter(|x| x.what == OUTER).all(|x| x.peers.iter().all(|&q| q % w == rank % w)),
                    "the outer ring keeps the index"
                );
            }
        }
    }

    /// Over an outer step and its inner ring, each rank attends every rank's block exactly once.
    #[test]
    fn every_block_is_attended_once() {
        for (w, n) in [(1, 4), (4, 1), (2, 3), (3, 2), (8, 2)] {
            for rank in 0..w * n {
                let (i, k) = (rank % w, rank / w);
                let mut seen: Vec<usize> = (0..n).flat_map(|j| (0..w).map(move |t| owner(i, k, j, t, w, n))).collect();
                assert_eq!(seen[0], rank, "a rank starts with its own block");
                seen.sort();
                assert_eq!(seen, (0..w * n).collect::<Vec<_>>(), "W {w}, N {n}, rank {rank}");
            }
        }
    }
}
