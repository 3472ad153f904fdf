//! The transformer, written once against `Backend`: deterministic weights (any shard of them), the
//! input hidden states, and one layer's forward pass. A layer does not know which strategy runs it:
//! it gets the heads and MLP columns it owns, the tokens it holds, an attention routine for those
//! tokens, and a reduction for its row-parallel outputs.

pub mod generator;
pub mod oracle;

use crate::backend::{Backend, Heads, Matrix, Span};
use crate::config::ModelConfig;
use crate::topology::LocalTokens;
use anyhow::Result;
use generator::{layer_tensor_id, Init, LayerTensor, Region, INPUT_TENSOR};
use std::ops::Range;

/// The part of each layer a rank owns: Megatron's column split of W_qkv (by heads) and W_up, row
/// split of W_o and W_down. The whole model is `heads = 0..H, mlp = 0..F`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub heads: Range<usize>,
    pub mlp: Range<usize>,
}

impl Shard {
    pub fn whole(m: &ModelConfig) -> Self {
        Shard { heads: 0..m.heads, mlp: 0..m.mlp }
    }
}

/// One layer's weights for a shard. Q and K|V are kept apart so that the ring can send K|V as one
/// contiguous block without packing.
pub struct LayerWeights<B: Backend> {
    norm1: B::Act,
    w_q: B::Act,
    w_kv: B::Act,
    w_o: B::Act,
    norm2: B::Act,
    w_up: B::Act,
    w_down: B::Act,
}

impl<B: Backend> LayerWeights<B> {
    /// Generate layer `layer`'s shard: every value is the one at the same global index of the whole tensor.
    pub fn generate(be: &B, m: &ModelConfig, shard: &Shard, layer: usize, seed: u64) -> Result<Self> {
        let (d, f, hd) = (m.d_model, m.mlp, m.head_dim());
        let cols = (shard.heads.start * hd, shard.heads.len() * hd);
        let id = |t| layer_tensor_id(layer, t);
        let w_in = Init::Weight { fan_in: d };
        let make = |region: Region, init: Init| -> Result<B::Act> {
            let mut a = be.alloc_act(region.rows, region.cols())?;
            be.fill(&mut a, 0, &region, seed, init)?;
            Ok(a)
        };
        let qkv =
            |blocks: Vec<(usize, usize)>| Region { tensor: id(LayerTensor::Qkv), global_cols: 3 * d, row0: 0, rows: d, col_blocks: blocks };
        Ok(LayerWeights {
            norm1: make(Region::rows(id(LayerTensor::Norm1), d, 0, 1), Init::Gain)?,
            w_q: make(qkv(vec![cols]), w_in)?,
            w_kv: make(qkv(vec![(d + cols.0, cols.1), (2 * d + cols.0, cols.1)]), w_in)?,
            w_o: make(Region::rows(id(LayerTensor::Out), d, cols.0, cols.1), w_in)?,
            norm2: make(Region::rows(id(LayerTensor::Norm2), d, 0, 1), Init::Gain)?,
            w_up: make(
                Region {
                    tensor: id(LayerTensor::Up),
                    global_cols: f,
                    row0: 0,
                    rows: d,
                    col_blocks: vec![(shard.mlp.start, shard.mlp.len())],
                },
                w_in,
            )?,
            w_down: make(Region::rows(id(LayerTensor::Down), d, shard.mlp.start, shard.mlp.len()), Init::Weight { fan_in: f })?,
        })
    }
}

/// Activation buffers for one micro-batch on one rank, allocated once and reused by every layer.
/// `kv_next` is the ring's second K/V buffer: the block for the next step lands there while the
/// current one is being used.
pub struct Workspace<B: Backend> {
    pub heads: Heads,
    pub norm: B::Act,
    pub q: B::Act,
    pub kv: B::Act,
    pub kv_next: B::Act,
    pub attn: B::Act,
    pub o: B::Acc,
    pub lse: B::Acc,
    pub proj: B::Act,
    pub up: B::Act,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for `rows` local token rows; K/V buffers for up to `kv_rows` (the largest block a ring delivers).
    pub fn new(be: &B, m: &ModelConfig, shard: &Shard, rows: usize, kv_rows: usize, ring: bool) -> Result<Self> {
        let heads = Heads { heads: shard.heads.len(), head_dim: m.head_dim() };
        let w = heads.width();
        Ok(Workspace {
            heads,
            norm: be.alloc_act(rows, m.d_model)?,
            q: be.alloc_act(rows, w)?,
            kv: be.alloc_act(kv_rows.max(rows), 2 * w)?,
            kv_next: be.alloc_act(if ring { kv_rows } else { 0 }, 2 * w)?,
            attn: be.alloc_act(rows, w)?,
            o: be.alloc_acc(rows, w)?,
            lse: be.alloc_acc(rows, heads.heads)?,
            proj: be.alloc_act(rows, m.d_model)?,
            up: be.alloc_act(rows, shard.mlp.len())?,
        })
    }
}

/// Rows of a micro-batch: `seqs` sequences, each holding `tokens` (global positions), sequence-major.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    pub first_seq: usize,
    pub seqs: usize,
    pub tokens: &'a LocalTokens,
}

impl Batch<'_> {
    pub fn rows(&self) -> usize {
        self.seqs * self.tokens.len()
    }

    /// Every (sequence index within the batch, span of rows and positions) of this batch.
    pub fn spans(&self) -> impl Iterator<Item = (usize, Span)> + '_ {
        let n = self.tokens.len();
        (0..self.seqs)
            .flat_map(move |s| self.tokens.with_rows().map(move |(r, seg)| (s, Span { row0: s * n + r, len: seg.len, pos0: seg.start })))
    }
}

/// Generate the input hidden states of `batch`'s tokens into x.
pub fn generate_input<B: Backend>(be: &B, m: &ModelConfig, seed: u64, batch: &Batch, x: &mut B::Act) -> Result<()> {
    x.set_rows(batch.rows());
    for (s, span) in batch.spans() {
        let row0 = (batch.first_seq + s) * m.seq_len + span.pos0;
        be.fill(x, span.row0, &Region::rows(INPUT_TENSOR, m.d_model, row0, span.len), seed, Init::Uniform)?;
    }
    Ok(())
}

/// Attention of every query block against every key block of the same sequences, skipping pairs
/// that the causal mask hides entirely. `kv_tokens` is the layout of the rows in `kv`, which may
/// belong to another rank (a ring block).
#[allow(clippy::too_many_arguments)]
pub fn attend<B: Backend>(
    be: &B,
    ws_q: &B::Act,
    kv: &B::Act,
    heads: Heads,
    q: &Batch,
    kv_tokens: &LocalTokens,
    causal: bool,
    o: &mut B::Acc,
    lse: &mut B::Acc,
) -> Result<()> {
    let kn = kv_tokens.len();
    for (s, qs) in q.spans() {
        for (r, seg) in kv_tokens.with_rows() {
            if causal && seg.start > qs.pos0 + qs.len - 1 {
                continue; // every key is after every query
            }
            let ks = Span { row0: s * kn + r, len: seg.len, pos0: seg.start };
            be.attention(ws_q, kv, heads, qs, ks, causal, o, lse)?;
        }
    }
    Ok(())
}

/// One layer on the rows of `batch` held in x ([rows, d_model], updated in place):
/// x += Attn(RMSNorm(x)) W_o;  x += GELU(RMSNorm(x) W_up) W_down.
/// `attention` fills ws.attn from ws.q and ws.kv (RoPE applied); `reduce` sums a row-parallel
/// partial product over the tensor-parallel group (identity without TP).
pub fn layer_forward<B: Backend>(
    be: &B,
    w: &LayerWeights<B>,
    ws: &mut Workspace<B>,
    x: &mut B::Act,
    batch: &Batch,
    attention: &mut dyn FnMut(&mut Workspace<B>) -> Result<()>,
    reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
) -> Result<()> {
    be.rms_norm(x, &w.norm1, &mut ws.norm)?;
    be.matmul(&ws.norm, &w.w_q, &mut ws.q)?;
    be.matmul(&ws.norm, &w.w_kv, &mut ws.kv)?;
    for (_, span) in batch.spans() {
        be.rope(&mut ws.q, ws.heads, span)?;
        be.rope(&mut ws.kv, ws.heads, span)?; // K is the first heads x head_dim columns of [K | V]
    }
    attention(ws)?;
    be.matmul(&ws.attn, &w.w_o, &mut ws.proj)?;
    reduce(&mut ws.proj)?;
    be.add(x, &ws.proj)?;

    be.rms_norm(x, &w.norm2, &mut ws.norm)?;
    be.matmul(&ws.norm, &w.w_up, &mut ws.up)?;
    be.gelu(&mut ws.up)?;
    be.matmul(&ws.up, &w.w_down, &mut ws.proj)?;
    reduce(&mut ws.proj)?;
    be.add(x, &ws.proj)
}

/// Attention of a batch against its own tokens (reference and tp-pp): every key is local.
pub fn local_attention<B: Backend>(be: &B, ws: &mut Workspace<B>, batch: &Batch, causal: bool) -> Result<()> {
    ws.o.set_rows(batch.rows());
    ws.lse.set_rows(batch.rows());
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    attend(be, &ws.q, &ws.kv, ws.heads, batch, batch.tokens, causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ws.attn)
}
