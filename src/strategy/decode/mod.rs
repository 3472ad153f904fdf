//! Decode: after the strategy's prefill of the prompt, one new token per sequence per step, each
//! through every layer with the K/V cache where the strategy placed it (docs/design.md,
//! "Decode"). What a rank does in a step is stated as a table (`DecodePlacement`): whose new
//! tokens it computes the linear layers of, the tensor-parallel group its row-parallel outputs
//! are summed over, the Ulysses group that trades tokens for heads, and the group that shares
//! the cache by tokens with the route its queries take. The traffic, the memory and the step
//! itself (`Decoder`) are derived from it, never per strategy.

pub mod cache;
pub mod combine;

use super::heads::{Exchange, HeadGroup};
use super::traffic::{Op, Transfer};
use crate::backend::{Backend, Heads, Matrix};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::generator::{Init, Region, DECODE_TENSOR};
use crate::model::{layer_forward, Batch, Blocks, LayerWeights, Shard, Workspace};
use crate::topology::{LocalTokens, Segment};
use anyhow::Result;
pub use cache::CacheShape;
use cache::KvCache;
use combine::{attend_local, Combine, GroupRows, QueryRows, Route};
use std::ops::Range;

/// A communicator group as world ranks, and this rank's index in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub ranks: Vec<usize>,
    pub member: usize,
}

impl Group {
    pub fn size(&self) -> usize {
        self.ranks.len()
    }
}

/// What one rank does in every decode step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodePlacement {
    /// The sequences whose new tokens it computes the linear layers (and norms, MLP) of.
    pub seqs: Range<usize>,
    /// Sequences per call of its layers (tp-pp's micro-batch; the whole of `seqs` elsewhere).
    pub rows_per_call: usize,
    /// Whether it reports the decode outputs of `seqs` (each sequence by exactly one rank).
    pub outputs: bool,
    /// Its slice of the weights, as in prefill.
    pub shard: Shard,
    /// The layers it runs.
    pub layers: Range<usize>,
    /// The tensor-parallel group its row-parallel outputs are all-reduced over (2 per layer).
    pub tp: Option<Group>,
    /// The previous and the next pipeline stage's rank (tp-pp): each call's hidden states arrive
    /// from the one and go to the other.
    pub pipeline: (Option<usize>, Option<usize>),
    /// The Ulysses group: new tokens' Q, K, V to heads and the output back, and each member's
    /// query rows (padded to the longest).
    pub heads: Option<(Group, Vec<QueryRows>)>,
    /// The group that shares the cache by tokens, the route of its queries and each member's
    /// query rows (after the Ulysses exchange where there is one).
    pub context: Option<(Group, Route, Vec<QueryRows>)>,
    /// Its K/V cache.
    pub cache: CacheShape,
}

impl DecodePlacement {
    /// A rank that holds the whole model, computes the new tokens of `seqs` and reports their
    /// outputs, with `cache`; no group (each strategy adds its own).
    pub fn whole_model(cfg: &RunConfig, seqs: Range<usize>, cache: CacheShape) -> Self {
        let m = &cfg.model;
        DecodePlacement {
            rows_per_call: seqs.len(),
            seqs,
            outputs: true,
            shard: Shard::whole(m),
            layers: 0..m.layers,
            tp: None,
            pipeline: (None, None),
            heads: None,
            context: None,
            cache,
        }
    }

    /// Whether this rank appends step `step`'s K/V: every step where it holds every token of
    /// its heads, else round-robin over the context group by step.
    pub fn appends(&self, step: usize) -> bool {
        self.context.as_ref().is_none_or(|(g, _, _)| step % g.size() == g.member)
    }

    /// The heads it attends with (after the Ulysses exchange, its slice of them).
    pub fn attention_heads(&self, cfg: &RunConfig) -> Heads {
        match &self.heads {
            Some((g, _)) => group_of_heads(cfg, g, 1).attention_heads(),
            None => self.shard.heads(&cfg.model),
        }
    }
}

/// Steps of `n` decode steps that position `member` of a round-robin of `size` appends.
pub fn appended_steps(n: usize, size: usize, member: usize) -> usize {
    (0..n).filter(|i| i % size == member).count()
}

/// The sequences whose new tokens owner `j` of `parts` computes: a contiguous slice, the slices
/// differing by at most one (an owner may have none where the batch is smaller).
pub fn owned_seqs(batch: usize, parts: usize, j: usize) -> Range<usize> {
    j * batch / parts..(j + 1) * batch / parts
}

/// Owner `j`'s query rows: one per sequence it owns.
pub fn owned_rows(batch: usize, parts: usize, j: usize) -> QueryRows {
    owned_seqs(batch, parts, j).map(Some).collect()
}

/// `rows` padded to `len` entries.
pub fn padded(mut rows: QueryRows, len: usize) -> QueryRows {
    rows.resize(len, None);
    rows
}

/// The Ulysses group's exchange for decode: blocks of `rows` rows (the longest member's), as
/// prefill's with one token per sequence.
fn group_of_heads(cfg: &RunConfig, g: &Group, rows: usize) -> HeadGroup {
    HeadGroup::new(&cfg.model, g.member, vec![LocalTokens::whole(1); g.size()], rows)
}

/// BF16 bytes of `rows` x `cols`.
fn bf16_bytes(rows: usize, cols: usize) -> u64 {
    (rows * cols * 2) as u64
}

/// Every message of a rank's decode (all N steps), as `comm::metered` counts them.
pub fn traffic(cfg: &RunConfig, p: &DecodePlacement) -> Vec<Transfer> {
    let m = &cfg.model;
    let steps = cfg.decode_tokens as u64;
    let layer_calls = p.layers.len() as u64 * steps * (p.seqs.len().div_ceil(p.rows_per_call.max(1))).max(1) as u64;
    let mut out = Vec::new();
    if let Some(g) = p.tp.as_ref().filter(|g| g.size() > 1) {
        let buffer = bf16_bytes(p.rows_per_call.min(p.seqs.len()), m.d_model);
        let n = g.size() as u64;
        let wire = 2 * (n - 1) * buffer / n;
        out.push(transfer(Op::AllReduce, "decode row-parallel output", g.ranks.clone(), buffer, wire, wire, 2 * layer_calls));
    }
    let calls = steps * p.seqs.len().div_ceil(p.rows_per_call.max(1)) as u64;
    let activations = bf16_bytes(p.rows_per_call.min(p.seqs.len()), m.d_model);
    if let Some(next) = p.pipeline.1 {
        out.push(transfer(Op::PipelineSend, "decode activations to the next stage", vec![next], activations, activations, 0, calls));
    }
    if let Some(prev) = p.pipeline.0 {
        out.push(transfer(Op::PipelineRecv, "decode activations from the previous stage", vec![prev], activations, 0, activations, calls));
    }
    let per_layer = p.layers.len() as u64 * steps;
    if let Some((g, blocks)) = &p.heads {
        let hg = group_of_heads(cfg, g, blocks[g.member].len());
        for t in hg.traffic(1, per_layer, g.ranks.clone()) {
            out.push(Transfer { what: decode_name(t.what), ..t });
        }
    }
    if let Some((g, route, blocks)) = &p.context {
        let rows = GroupRows { blocks: blocks.clone(), heads: p.attention_heads(cfg) };
        let (n, br, wc) = (g.size() as u64, rows.block_rows(), rows.wire_cols());
        if n > 1 {
            match route {
                Route::Gather => {
                    let block = bf16_bytes(br, wc);
                    out.push(transfer(
                        Op::AllGather,
                        "decode Q, K, V of every rank",
                        g.ranks.clone(),
                        block,
                        (n - 1) * block,
                        (n - 1) * block,
                        per_layer,
                    ));
                }
                Route::Ring => {
                    let size = g.size();
                    let (to, from) = (g.ranks[(g.member + 1) % size], g.ranks[(g.member + size - 1) % size]);
                    let mut peers = vec![to, from];
                    peers.dedup();
                    for t in 0..size - 1 {
                        let (held, next) = ((g.member + size - t) % size, (g.member + size - t - 1) % size);
                        let (sent, received) = (bf16_bytes(blocks[held].len(), wc), bf16_bytes(blocks[next].len(), wc));
                        let mut step = transfer(Op::RingStep, "decode Q, K, V block", peers.clone(), sent, sent, received, per_layer);
                        step.overlapped = true;
                        out.push(step);
                    }
                }
            }
            let h = rows.heads;
            for (what, cols) in [("decode partial outputs", 2 * h.width()), ("decode partial LSEs", 2 * h.heads)] {
                let buffer = bf16_bytes(g.size() * br, cols);
                let wire = (n - 1) * buffer / n;
                out.push(transfer(Op::AllToAll, what, g.ranks.clone(), buffer, wire, wire, per_layer));
            }
        }
    }
    out
}

fn decode_name(prefill: &'static str) -> &'static str {
    match prefill {
        "Q to heads" => "decode Q to heads",
        "K/V to heads" => "decode K/V to heads",
        _ => "decode output to tokens",
    }
}

fn transfer(op: Op, what: &'static str, peers: Vec<usize>, buffer: u64, sent: u64, received: u64, calls: u64) -> Transfer {
    Transfer { op, what, peers, buffer_bytes: buffer, sent, received, calls, overlapped: false }
}

/// Buffer shapes, [rows, cols] each.
pub type Shapes = Vec<(usize, usize)>;

/// What a rank allocates for decode, [rows, cols] of BF16 and of FP32 buffers (the cache
/// included; with `keep`, the kept outputs of `verify`, allocated at the first step kept):
/// `Decoder` allocates exactly these, and `memory_estimate` adds them up.
pub fn buffer_shapes(cfg: &RunConfig, p: &DecodePlacement, keep: bool) -> (Shapes, Shapes) {
    let m = &cfg.model;
    let heads = p.shard.heads(m);
    let rows = p.rows_per_call.min(p.seqs.len()).max(1);
    let (w, kvw, f) = (heads.width(), heads.kv_width(), p.shard.mlp.len());
    let up = f * m.mlp_act.up_factor();
    let gated = if m.mlp_act == crate::config::MlpAct::Swiglu { rows } else { 0 };
    let (acc_rows, acc_heads) = accumulator_shape(cfg, p);
    let mut acts = vec![
        (rows, m.d_model),                                                              // x
        (p.seqs.len() * cfg.decode_tokens * usize::from(p.outputs && keep), m.d_model), // kept output
        (rows, m.d_model),                                                              // norm
        (rows, w),                                                                      // q
        (rows, 2 * kvw),                                                                // kv
        (0, 2 * kvw),                                                                   // kv_in (unused)
        (rows, w),                                                                      // attn
        (rows, m.d_model),                                                              // proj
        (rows, up),                                                                     // up
        (gated, f),                                                                     // gated
    ];
    // The decode attention's split partials, for a call of every sequence.
    let scratch = crate::backend::decode_scratch_rows(m.batch, p.attention_heads(cfg), p.cache.capacity());
    let mut accs = vec![(acc_rows, acc_heads * m.head_dim()), (acc_rows, acc_heads), (scratch, m.head_dim() + 1)];
    acts.extend((0..p.cache.layers).map(|_| p.cache.layer_shape()));
    if let Some((g, blocks)) = &p.heads {
        acts.extend(group_of_heads(cfg, g, blocks[g.member].len()).buffers(1));
    }
    if let Some((_, route, blocks)) = &p.context {
        let rows = GroupRows { blocks: blocks.clone(), heads: p.attention_heads(cfg) };
        acts.extend(rows.act_shapes(*route));
        accs.extend(rows.acc_shapes());
    }
    (acts, accs)
}

/// Rows and heads of the merged attention accumulators: its own rows, or after the Ulysses
/// exchange every member's padded rows of its heads.
fn accumulator_shape(cfg: &RunConfig, p: &DecodePlacement) -> (usize, usize) {
    let heads = p.attention_heads(cfg);
    match &p.heads {
        Some((g, blocks)) => (g.size() * blocks[g.member].len().max(1), heads.heads),
        None => (p.rows_per_call.min(p.seqs.len()).max(1), heads.heads),
    }
}

/// Bytes of every decode buffer, the cache included.
pub fn buffer_bytes(cfg: &RunConfig, p: &DecodePlacement, keep: bool) -> u64 {
    let (acts, accs) = buffer_shapes(cfg, p, keep);
    acts.iter().map(|&(r, c)| bf16_bytes(r, c)).sum::<u64>() + accs.iter().map(|&(r, c)| (r * c * 4) as u64).sum::<u64>()
}

/// The communicators a step uses, as the placement names its groups (None where it has none).
pub struct Comms<'c, C> {
    pub tp: Option<&'c C>,
    pub heads: Option<&'c C>,
    pub context: Option<&'c C>,
}

/// One rank's decode: its buffers, its cache and its kept outputs.
pub struct Decoder<B: Backend> {
    pub place: DecodePlacement,
    prompt_len: usize,
    batch: usize,
    steps: usize,
    seed: u64,
    ws: Workspace<B>,
    x: B::Act,
    /// The kept outputs, [own sequences x steps, d_model] (allocated at the first step kept).
    out: Option<B::Act>,
    pub cache: KvCache<B>,
    /// The Ulysses exchange, its buffers, and the query rows after it (every member's block).
    heads: Option<(HeadGroup, Exchange<B>, QueryRows)>,
    context: Option<Combine<B>>,
    /// The decode attention's split partials.
    scratch: B::Acc,
}

impl<B: Backend> Decoder<B> {
    pub fn new(cfg: &RunConfig, be: &B, place: DecodePlacement) -> Result<Self> {
        let m = &cfg.model;
        let (acts, accs) = buffer_shapes(cfg, &place, false);
        // In `buffer_shapes`' order; the kept output (the second) is allocated by `keep`.
        let mut a = acts.iter().enumerate().filter(|(k, _)| *k != 1).map(|(_, &(r, c))| be.alloc_act(r, c));
        let mut next = || a.next().expect("decode buffers stated");
        let x = next()?;
        let ws = Workspace {
            heads: place.shard.heads(m),
            mlp_act: m.mlp_act,
            norm: next()?,
            q: next()?,
            kv: next()?,
            kv_in: next()?,
            attn: next()?,
            o: be.alloc_acc(accs[0].0, accs[0].1)?,
            lse: be.alloc_acc(accs[1].0, accs[1].1)?,
            proj: next()?,
            up: next()?,
            gated: next()?,
        };
        drop(a);
        let scratch = be.alloc_acc(accs[2].0, accs[2].1)?;
        // The cache's layers were stated after the workspace; KvCache allocates them itself.
        let cache = KvCache::new(be, place.cache)?;
        let heads = match &place.heads {
            Some((g, blocks)) => {
                let hg = group_of_heads(cfg, g, blocks[g.member].len());
                let ex = Exchange::alloc(be, &hg.buffers(1))?;
                Some((hg, ex, blocks.iter().flatten().copied().collect()))
            }
            None => None,
        };
        let context = match &place.context {
            Some((g, route, blocks)) => {
                Some(Combine::new(be, GroupRows { blocks: blocks.clone(), heads: place.attention_heads(cfg) }, *route, g.member)?)
            }
            None => None,
        };
        Ok(Decoder {
            prompt_len: m.seq_len,
            batch: m.batch,
            steps: cfg.decode_tokens,
            seed: cfg.seed,
            place,
            ws,
            x,
            out: None,
            cache,
            heads,
            context,
            scratch,
        })
    }

    /// A new prefill: the cache's prompt rows are rewritten, nothing appended.
    pub fn restart(&mut self) {
        self.cache.restart();
    }

    /// Keep the prompt's K/V of the stack's `layer` (index within the rank's layers).
    pub fn store_prompt(&mut self, be: &B, layer: usize, src: &B::Act, blocks: &Blocks, first_seq: usize) -> Result<()> {
        self.cache.store_prompt(be, layer, src, blocks, first_seq)
    }

    /// Keep a rank's own K/V rows of `batch` (strategies whose cache is their prefill tokens).
    pub fn store_own(&mut self, be: &B, layer: usize, ws: &Workspace<B>, batch: &Batch) -> Result<()> {
        self.cache.store_prompt(be, layer, &ws.kv, &Blocks::one(batch.seqs, batch.tokens), batch.first_seq)
    }

    /// Begin step `step` (once per step, before any of its rows).
    pub fn begin(&mut self, step: usize) -> Result<()> {
        let appends = self.place.appends(step);
        self.cache.begin_step(appends)
    }

    /// The step's input rows of sequences `seqs` into x (tensor 2, step-major).
    pub fn input(&mut self, be: &B, seqs: Range<usize>, step: usize) -> Result<()> {
        self.x.set_rows(seqs.len());
        if seqs.is_empty() {
            return Ok(());
        }
        let d = self.x.cols();
        let region = Region::rows(DECODE_TENSOR, d, step * self.batch + seqs.start, seqs.len());
        be.fill(&mut self.x, 0, &region, self.seed, Init::Uniform)
    }

    /// The hidden states x, for a pipeline's hand-off.
    pub fn x(&mut self) -> &mut B::Act {
        &mut self.x
    }

    /// Every layer of `layers` on x (sequences `seqs`, at position prompt + step).
    pub fn layers<C: Communicator<B>>(
        &mut self,
        be: &B,
        layers: &[LayerWeights<B>],
        seqs: Range<usize>,
        step: usize,
        comms: &Comms<C>,
    ) -> Result<()> {
        let tokens = LocalTokens { segments: vec![Segment::run(self.prompt_len + step, 1)] };
        let batch = Batch { first_seq: seqs.start, seqs: seqs.len(), tokens: &tokens };
        let own: QueryRows = seqs.clone().map(Some).collect();
        let Decoder { ws, x, cache, heads, context, scratch, .. } = self;
        for (l, w) in layers.iter().enumerate() {
            let mut attention = |ws: &mut Workspace<B>| attend(be, cache, heads, context, comms, l, &own, ws, scratch);
            let mut reduce = |y: &mut B::Act| match comms.tp {
                Some(tp) => tp.all_reduce_sum(y),
                None => Ok(()),
            };
            layer_forward(be, w, ws, x, &batch, &mut attention, &mut reduce, None)?;
        }
        Ok(())
    }

    /// Keep x's rows (sequences from `first` within the rank's own) as step `step`'s outputs.
    pub fn keep(&mut self, be: &B, first: usize, step: usize) -> Result<()> {
        if self.out.is_none() {
            self.out = Some(be.alloc_act(self.place.seqs.len() * self.steps, self.x.cols())?);
        }
        let out = self.out.as_mut().expect("allocated above");
        for k in 0..self.x.rows() {
            be.copy_rows(&self.x, k, out, (first + k) * self.steps + step, 1)?;
        }
        Ok(())
    }

    /// The kept decode outputs, [own sequences x steps, d_model] sequence-major; None where this
    /// rank reports none.
    pub fn output(&self) -> Option<&B::Act> {
        self.out.as_ref().filter(|_| self.place.outputs)
    }
}

/// One layer's attention of a decode step, into ws.attn: the placement's route.
#[allow(clippy::too_many_arguments)]
fn attend<B: Backend, C: Communicator<B>>(
    be: &B,
    cache: &mut KvCache<B>,
    heads: &mut Option<(HeadGroup, Exchange<B>, QueryRows)>,
    context: &mut Option<Combine<B>>,
    comms: &Comms<C>,
    layer: usize,
    own: &QueryRows,
    ws: &mut Workspace<B>,
    scratch: &mut B::Acc,
) -> Result<()> {
    match heads {
        Some((hg, ex, rows)) => {
            let comm = comms.heads.expect("a Ulysses group has its communicator");
            hg.to_heads(be, comm, ws, ex, 1)?;
            let h = hg.attention_heads();
            match (context.as_mut(), comms.context) {
                (Some(c), Some(ring)) => c.attend(be, ring, cache, layer, &ex.q_all, &ex.kv_all, &mut ws.o, &mut ws.lse, scratch)?,
                _ => attend_local(be, cache, layer, h, &ex.q_all, &ex.kv_all, rows, &mut ws.o, &mut ws.lse, scratch)?,
            }
            be.attention_store(&ws.o, &mut ex.attn_all)?;
            hg.to_tokens(be, comm, ws, ex, 1)
        }
        None => {
            match (context.as_mut(), comms.context) {
                (Some(c), Some(group)) => c.attend(be, group, cache, layer, &ws.q, &ws.kv, &mut ws.o, &mut ws.lse, scratch)?,
                _ => attend_local(be, cache, layer, ws.heads, &ws.q, &ws.kv, own, &mut ws.o, &mut ws.lse, scratch)?,
            }
            be.attention_store(&ws.o, &mut ws.attn)
        }
    }
}

/// The single rank's decode: every sequence, every head, the whole cache.
pub fn whole(cfg: &RunConfig) -> DecodePlacement {
    let m = &cfg.model;
    let cache = CacheShape { layers: m.layers, batch: m.batch, prompt: m.seq_len, slots: cfg.decode_tokens, kv_cols: 2 * m.kv_dim() };
    DecodePlacement::whole_model(cfg, 0..m.batch, cache)
}

/// A strategy whose P ranks share the cache by tokens as the prefill laid them out (ring,
/// allgather, double-ring): each owns the new tokens of an even slice of the sequences, its
/// queries reach the others by `route`, and step i's K/V is appended on rank i mod P.
pub fn sequence_parallel(cfg: &RunConfig, rank: usize, route: Route, prompt_tokens: usize) -> DecodePlacement {
    let m = &cfg.model;
    let p = cfg.split.sp();
    let slots = appended_steps(cfg.decode_tokens, p, rank);
    let cache = CacheShape { layers: m.layers, batch: m.batch, prompt: prompt_tokens, slots, kv_cols: 2 * m.kv_dim() };
    let group = Group { ranks: (0..p).collect(), member: rank };
    DecodePlacement {
        context: Some((group, route, (0..p).map(|j| owned_rows(m.batch, p, j)).collect())),
        ..DecodePlacement::whole_model(cfg, owned_seqs(m.batch, p, rank), cache)
    }
}

/// A decode step of a strategy without a pipeline: its own sequences' inputs, every layer, and
/// (with `keep`) their outputs kept.
pub fn step_own<B: Backend, C: Communicator<B>>(
    dec: &mut Decoder<B>,
    be: &B,
    layers: &[LayerWeights<B>],
    step: usize,
    keep: bool,
    comms: &Comms<C>,
) -> Result<()> {
    let seqs = dec.place.seqs.clone();
    dec.begin(step)?;
    dec.input(be, seqs.clone(), step)?;
    dec.layers(be, layers, seqs, step, comms)?;
    if keep && dec.place.outputs {
        dec.keep(be, 0, step)?;
    }
    Ok(())
}

/// Keep the rank's own prompt K/V of `batch` at the stack's layer `layer`, where it decodes.
pub fn keep_own<B: Backend>(dec: &mut Option<Decoder<B>>, be: &B, layer: usize, ws: &Workspace<B>, batch: &Batch) -> Result<()> {
    match dec {
        Some(d) => d.store_own(be, layer, ws, batch),
        None => Ok(()),
    }
}

/// The decoder a config asks for (None without decode steps), placed as the strategy's table
/// `place` says.
pub fn decoder_for<B: Backend>(
    cfg: &RunConfig,
    be: &B,
    place: fn(&RunConfig, usize) -> DecodePlacement,
    rank: usize,
) -> Result<Option<Decoder<B>>> {
    if cfg.decode_tokens == 0 {
        return Ok(None);
    }
    Decoder::new(cfg, be, place(cfg, rank)).map(Some)
}

/// The decoder of a run, or the error of a decode step asked of a run without decode steps.
pub fn need<B: Backend>(dec: &mut Option<Decoder<B>>) -> Result<&mut Decoder<B>> {
    dec.as_mut().ok_or_else(|| anyhow::anyhow!("a decode step of a run without --decode-tokens"))
}

/// No communicators (the single rank).
pub fn no_comms<'c, C>() -> Comms<'c, C> {
    Comms { tp: None, heads: None, context: None }
}
