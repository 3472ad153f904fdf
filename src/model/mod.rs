//! The transformer, written once against `Backend`: deterministic weights (any shard of them), the
//! input hidden states, and one layer's forward pass. A layer does not know which strategy runs it:
//! it gets the heads and MLP columns it owns, the tokens it holds, an attention routine for those
//! tokens, and a reduction for its row-parallel outputs.

pub mod backward;
pub mod oracle;

use crate::backend::{Backend, Heads, Matrix, Span};
use crate::config::{MlpAct, ModelConfig};
use crate::generator::{layer_tensor_id, Init, LayerTensor, Region, INPUT_TENSOR};
use crate::topology::LocalTokens;
use anyhow::Result;
use std::ops::Range;

/// The buffers a rank allocates beyond its weights: the layer workspace's sizes and the
/// strategy's own buffers. The strategy allocates exactly these, and `memory_estimate` adds them
/// up, so the two cannot drift apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    /// Rows of the K/V buffer the layer writes (at least the micro-batch's rows; more where it is
    /// also what a ring step sends and a longer block arrives, or is padded for an all-gather).
    pub kv_rows: usize,
    /// Rows of the buffer where other ranks' K/V lands (the ring's next block, the all-gathered
    /// sequence); 0 where nothing arrives.
    pub kv_in_rows: usize,
    /// Rows and query heads of the FP32 attention accumulators (o and lse).
    pub acc_rows: usize,
    pub acc_heads: usize,
    /// The strategy's own BF16 buffers, [rows, cols] each, in the order it allocates them.
    pub extra: Vec<(usize, usize)>,
    /// The largest K/V operand one attention call reads, [rows, cols] (the CPU's FP32 copy of it).
    pub attention_kv: (usize, usize),
}

/// The part of each layer a rank owns: Megatron's column split of W_qkv (query heads, and the
/// K/V heads they attend with) and W_up, row split of W_o and W_down. The whole model is
/// `heads = 0..H, kv_heads = 0..KV, mlp = 0..F`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub heads: Range<usize>,
    pub kv_heads: Range<usize>,
    pub mlp: Range<usize>,
}

impl Shard {
    pub fn whole(m: &ModelConfig) -> Self {
        Shard { heads: 0..m.heads, kv_heads: 0..m.kv_heads, mlp: 0..m.mlp }
    }

    /// Tensor-parallel rank `r` of `tp`: its heads/tp query heads and mlp/tp MLP columns, and the
    /// K/V heads those attend with: kv_heads/tp of them where tp divides kv_heads, else the one
    /// K/V head it shares with tp/kv_heads - 1 other ranks (Megatron's replication).
    pub fn tensor_parallel(m: &ModelConfig, tp: usize, r: usize) -> Self {
        let (heads, kv_heads) = Self::head_slice(m, tp, r);
        Shard { heads, kv_heads, mlp: crate::topology::even_slice(m.mlp, tp, r) }
    }

    /// Part `r` of the heads split `parts` ways (tensor parallelism's, and Ulysses'): its query
    /// heads, and the K/V heads they attend with (a share of them, or the one that part shares
    /// with parts / kv_heads - 1 others).
    pub fn head_slice(m: &ModelConfig, parts: usize, r: usize) -> (Range<usize>, Range<usize>) {
        let kv_heads = if m.kv_heads % parts == 0 {
            crate::topology::even_slice(m.kv_heads, parts, r)
        } else {
            let g = r / (parts / m.kv_heads);
            g..g + 1
        };
        (crate::topology::even_slice(m.heads, parts, r), kv_heads)
    }

    pub fn heads(&self, m: &ModelConfig) -> Heads {
        Heads { heads: self.heads.len(), kv_heads: self.kv_heads.len(), head_dim: m.head_dim() }
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
        let (d, f, hd, kv_dim) = (m.d_model, m.mlp, m.head_dim(), m.kv_dim());
        let cols = (shard.heads.start * hd, shard.heads.len() * hd);
        let kv_cols = (shard.kv_heads.start * hd, shard.kv_heads.len() * hd);
        let id = |t| layer_tensor_id(layer, t);
        let w_in = Init::Weight { fan_in: d };
        let make = |region: Region, init: Init| -> Result<B::Act> {
            let mut a = be.alloc_act(region.rows, region.cols())?;
            be.fill(&mut a, 0, &region, seed, init)?;
            Ok(a)
        };
        // W_qkv is [d, d + 2 kv_dim] = [Q | K | V]; W_up is [d, F], or [d, 2F] = [gate | up].
        let qkv = |blocks: Vec<(usize, usize)>| Region {
            tensor: id(LayerTensor::Qkv),
            global_cols: d + 2 * kv_dim,
            row0: 0,
            rows: d,
            row_stride: 1,
            col_blocks: blocks,
        };
        let up_blocks = match m.mlp_act {
            MlpAct::Gelu => vec![(shard.mlp.start, shard.mlp.len())],
            MlpAct::Swiglu => vec![(shard.mlp.start, shard.mlp.len()), (f + shard.mlp.start, shard.mlp.len())],
        };
        Ok(LayerWeights {
            norm1: make(Region::rows(id(LayerTensor::Norm1), d, 0, 1), Init::Gain)?,
            w_q: make(qkv(vec![cols]), w_in)?,
            w_kv: make(qkv(vec![(d + kv_cols.0, kv_cols.1), (d + kv_dim + kv_cols.0, kv_cols.1)]), w_in)?,
            w_o: make(Region::rows(id(LayerTensor::Out), d, cols.0, cols.1), w_in)?,
            norm2: make(Region::rows(id(LayerTensor::Norm2), d, 0, 1), Init::Gain)?,
            w_up: make(
                Region {
                    tensor: id(LayerTensor::Up),
                    global_cols: f * m.mlp_act.up_factor(),
                    row0: 0,
                    rows: d,
                    row_stride: 1,
                    col_blocks: up_blocks,
                },
                w_in,
            )?,
            w_down: make(Region::rows(id(LayerTensor::Down), d, shard.mlp.start, shard.mlp.len()), Init::Weight { fan_in: f })?,
        })
    }
}

/// Activation buffers for one micro-batch on one rank, allocated once and reused by every layer.
/// `kv_in` is where other ranks' K/V lands: the ring's next block (it arrives while the current
/// one is in use), or the all-gathered sequence. `gated` holds SwiGLU's product (none for GELU,
/// which works in place). The accumulators `o` and `lse` are sized for the attention the rank
/// computes, which for Ulysses is not its own rows (`Buffers`).
pub struct Workspace<B: Backend> {
    pub heads: Heads,
    pub mlp_act: MlpAct,
    pub norm: B::Act,
    pub q: B::Act,
    pub kv: B::Act,
    pub kv_in: B::Act,
    pub attn: B::Act,
    pub o: B::Acc,
    pub lse: B::Acc,
    pub proj: B::Act,
    pub up: B::Act,
    pub gated: B::Act,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for `rows` local token rows, the K/V and accumulator sizes as `buffers` states.
    pub fn new(be: &B, m: &ModelConfig, shard: &Shard, rows: usize, buffers: &Buffers) -> Result<Self> {
        let heads = shard.heads(m);
        let (w, kvw, f) = (heads.width(), heads.kv_width(), shard.mlp.len());
        Ok(Workspace {
            heads,
            mlp_act: m.mlp_act,
            norm: be.alloc_act(rows, m.d_model)?,
            q: be.alloc_act(rows, w)?,
            kv: be.alloc_act(buffers.kv_rows.max(rows), 2 * kvw)?,
            kv_in: be.alloc_act(buffers.kv_in_rows, 2 * kvw)?,
            attn: be.alloc_act(rows, w)?,
            o: be.alloc_acc(buffers.acc_rows, buffers.acc_heads * m.head_dim())?,
            lse: be.alloc_acc(buffers.acc_rows, buffers.acc_heads)?,
            proj: be.alloc_act(rows, m.d_model)?,
            up: be.alloc_act(rows, f * m.mlp_act.up_factor())?,
            gated: be.alloc_act(if m.mlp_act == MlpAct::Swiglu { rows } else { 0 }, f)?,
        })
    }
}

/// What one layer's backward reads of its forward on one micro-batch, kept by `layer_forward`
/// in a training step (docs/design.md, "Training"): the layer's input, Q and this rank's K|V
/// after RoPE, the attention output and its final LSE, the input of the MLP block and the MLP's
/// pre-activation. The norms' outputs and the activation are recomputed from these (one
/// element-wise pass each, no GEMM).
pub struct Saved<B: Backend> {
    pub x_in: B::Act,
    pub q: B::Act,
    pub kv: B::Act,
    pub attn: B::Act,
    pub lse: B::Acc,
    pub x_mid: B::Act,
    pub up: B::Act,
}

impl<B: Backend> Saved<B> {
    /// Room for `rows` rows of a layer of `ws`'s shapes (the LSE as its accumulator is).
    pub fn new(be: &B, ws: &Workspace<B>, rows: usize) -> Result<Self> {
        Ok(Saved {
            x_in: be.alloc_act(rows, ws.proj.cols())?,
            q: be.alloc_act(rows, ws.q.cols())?,
            kv: be.alloc_act(rows, ws.kv.cols())?,
            attn: be.alloc_act(rows, ws.attn.cols())?,
            lse: be.alloc_acc(ws.lse.capacity_rows(), ws.lse.cols())?,
            x_mid: be.alloc_act(rows, ws.proj.cols())?,
            up: be.alloc_act(rows, ws.up.cols())?,
        })
    }
}

/// Bytes of one `Saved`, for the memory account: [rows, d] twice, Q and the attention output
/// [rows, w], K|V [rows, 2 kvw], the pre-activation [rows, up] in BF16; the LSE [acc_rows,
/// acc_heads] in FP32.
pub fn saved_bytes(rows: u64, d: u64, w: u64, kvw: u64, up: u64, acc: (u64, u64)) -> u64 {
    2 * rows * (2 * d + 2 * w + 2 * kvw + up) + 4 * acc.0 * acc.1
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

    /// Every (sequence index within the batch, span of rows, the stride of its positions) of
    /// this batch: row row0 + i holds position pos0 + i x stride.
    pub fn spans(&self) -> impl Iterator<Item = (usize, Span, usize)> + '_ {
        let n = self.tokens.len();
        (0..self.seqs).flat_map(move |s| {
            self.tokens.with_rows().map(move |(r, seg)| (s, Span { row0: s * n + r, len: seg.len, pos0: seg.start }, seg.stride))
        })
    }
}

/// Generate the input hidden states of `batch`'s tokens into x.
pub fn generate_input<B: Backend>(be: &B, m: &ModelConfig, seed: u64, batch: &Batch, x: &mut B::Act) -> Result<()> {
    generate_rows(be, m, seed, INPUT_TENSOR, batch, x)
}

/// Generate `batch`'s rows of a tensor shaped as the input, [batch, seq_len, d_model] (the
/// input, or a training step's upstream gradient), into x.
pub fn generate_rows<B: Backend>(be: &B, m: &ModelConfig, seed: u64, tensor: u64, batch: &Batch, x: &mut B::Act) -> Result<()> {
    x.set_rows(batch.rows());
    for (s, span, stride) in batch.spans() {
        let row0 = (batch.first_seq + s) * m.seq_len + span.pos0;
        let region = Region { row_stride: stride, ..Region::rows(tensor, m.d_model, row0, span.len) };
        be.fill(x, span.row0, &region, seed, Init::Uniform)?;
    }
    Ok(())
}

/// Where the tokens of several ranks sit in one buffer (an all-to-all's or an all-gather's): part
/// (row0, tokens) holds `seqs` sequences of `tokens`, sequence-major, from row `row0`; the buffer
/// has `rows` rows (parts padded to a common block leave rows between them unused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub seqs: usize,
    pub parts: Vec<(usize, LocalTokens)>,
    pub rows: usize,
}

impl Blocks {
    /// One rank's own rows.
    pub fn one(seqs: usize, tokens: &LocalTokens) -> Self {
        Blocks { seqs, parts: vec![(0, tokens.clone())], rows: seqs * tokens.len() }
    }

    /// `layout[i]` at rows i x `block`: the equal blocks of a collective, each padded to `block`
    /// rows. Where nothing is padded and one sequence is in flight, the parts are one run of rows
    /// in order, and so one part (one attention launch over all of them, not one per pair).
    pub fn padded(seqs: usize, layout: &[LocalTokens], block: usize) -> Self {
        let rows = layout.len() * block;
        if seqs == 1 && layout.iter().all(|t| t.len() == block) {
            return Blocks { seqs, parts: vec![(0, LocalTokens::concat(layout))], rows };
        }
        Blocks { seqs, parts: layout.iter().enumerate().map(|(i, t)| (i * block, t.clone())).collect(), rows }
    }
}

/// Attention of every query part of `q` against every key part of `kv` (see `attend`).
#[allow(clippy::too_many_arguments)]
pub fn attend_blocks<B: Backend>(
    be: &B,
    ws_q: &B::Act,
    q: &Blocks,
    kv: &B::Act,
    k: &Blocks,
    heads: Heads,
    causal: bool,
    o: &mut B::Acc,
    lse: &mut B::Acc,
) -> Result<()> {
    debug_assert_eq!(q.seqs, k.seqs);
    for (q_row0, q_tokens) in &q.parts {
        let batch = Batch { first_seq: 0, seqs: q.seqs, tokens: q_tokens };
        for (kv_row0, kv_tokens) in &k.parts {
            attend(be, ws_q, *q_row0, kv, *kv_row0, heads, &batch, kv_tokens, causal, o, lse)?;
        }
    }
    Ok(())
}

/// Attention of every query block against every key block of the same sequences, skipping pairs
/// that the causal mask hides entirely. The queries (and accumulators) start at row `q_row0`, the
/// keys at row `kv_row0` of `kv`, laid out as `kv_tokens` (another rank's block, or one rank's
/// part of a buffer gathered from several).
#[allow(clippy::too_many_arguments)]
pub fn attend<B: Backend>(
    be: &B,
    ws_q: &B::Act,
    q_row0: usize,
    kv: &B::Act,
    kv_row0: usize,
    heads: Heads,
    q: &Batch,
    kv_tokens: &LocalTokens,
    causal: bool,
    o: &mut B::Acc,
    lse: &mut B::Acc,
) -> Result<()> {
    let kn = kv_tokens.len();
    for (s, qs, q_stride) in q.spans() {
        for (r, seg) in kv_tokens.with_rows() {
            let qs = Span { row0: q_row0 + qs.row0, ..qs };
            let ks = Span { row0: kv_row0 + s * kn + r, len: seg.len, pos0: seg.start };
            let (qs, ks) = unit_stride(qs, ks, q_stride, seg.stride);
            if causal && ks.pos0 > qs.pos0 + qs.len - 1 {
                continue; // every key is after every query
            }
            be.attention(ws_q, kv, heads, qs, ks, causal, o, lse)?;
        }
    }
    Ok(())
}

/// A query span and a key span whose positions both advance by `stride` per row, as spans of
/// consecutive positions with the same causal mask: the kernels take consecutive positions. Key
/// row j is visible to query row i when k0 + j s <= q0 + i s, that is j <= i + floor((q0 - k0) / s),
/// which consecutive positions q0' = max(0, that offset), k0' = max(0, -that offset) reproduce
/// (the same pairs, so the same FLOPs and the same whole-tile skipping). Striped Attention's
/// observation; with stride 1 the spans are returned as they are.
pub fn unit_stride(qs: Span, ks: Span, q_stride: usize, k_stride: usize) -> (Span, Span) {
    assert_eq!(q_stride, k_stride, "queries and keys of one attention call share a stride");
    if q_stride == 1 {
        return (qs, ks);
    }
    let s = q_stride;
    if qs.pos0 >= ks.pos0 {
        (Span { pos0: (qs.pos0 - ks.pos0) / s, ..qs }, Span { pos0: 0, ..ks })
    } else {
        (Span { pos0: 0, ..qs }, Span { pos0: (ks.pos0 - qs.pos0).div_ceil(s), ..ks })
    }
}

/// One layer on the rows of `batch` held in x ([rows, d_model], updated in place):
/// x += Attn(RMSNorm(x)) W_o;  x += GELU(RMSNorm(x) W_up) W_down, or with SwiGLU
/// x += (silu(g W_gate) * (g W_up)) W_down, g = RMSNorm(x).
/// `attention` fills ws.attn from ws.q and ws.kv (RoPE applied); `reduce` sums a row-parallel
/// partial product over the tensor-parallel group (identity without TP). With `saved` (a
/// training step), it keeps what the layer's backward reads.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward<B: Backend>(
    be: &B,
    w: &LayerWeights<B>,
    ws: &mut Workspace<B>,
    x: &mut B::Act,
    batch: &Batch,
    attention: &mut dyn FnMut(&mut Workspace<B>) -> Result<()>,
    reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
    mut saved: Option<&mut Saved<B>>,
) -> Result<()> {
    let keep = |be: &B, src: &B::Act, dst: &mut B::Act| {
        dst.set_rows(src.rows());
        be.copy_rows(src, 0, dst, 0, src.rows())
    };
    if let Some(s) = saved.as_deref_mut() {
        keep(be, x, &mut s.x_in)?;
    }
    be.rms_norm(x, &w.norm1, &mut ws.norm)?;
    be.matmul(&ws.norm, &w.w_q, &mut ws.q)?;
    be.matmul(&ws.norm, &w.w_kv, &mut ws.kv)?;
    for (_, span, stride) in batch.spans() {
        be.rope(&mut ws.q, ws.heads, span, stride)?;
        be.rope(&mut ws.kv, ws.heads.keys(), span, stride)?; // K is the first kv_heads x head_dim columns of [K | V]
    }
    if let Some(s) = saved.as_deref_mut() {
        // Before attention: the ring leaves another rank's K|V in ws.kv.
        keep(be, &ws.q, &mut s.q)?;
        keep(be, &ws.kv, &mut s.kv)?;
    }
    attention(ws)?;
    be.matmul(&ws.attn, &w.w_o, &mut ws.proj)?;
    reduce(&mut ws.proj)?;
    be.add(x, &ws.proj)?;
    if let Some(s) = saved.as_deref_mut() {
        keep(be, &ws.attn, &mut s.attn)?;
        be.copy_acc(&ws.lse, &mut s.lse)?;
        keep(be, x, &mut s.x_mid)?;
    }

    be.rms_norm(x, &w.norm2, &mut ws.norm)?;
    be.matmul(&ws.norm, &w.w_up, &mut ws.up)?;
    if let Some(s) = saved {
        keep(be, &ws.up, &mut s.up)?;
    }
    match ws.mlp_act {
        MlpAct::Gelu => {
            be.gelu(&mut ws.up)?;
            be.matmul(&ws.up, &w.w_down, &mut ws.proj)?;
        }
        MlpAct::Swiglu => {
            be.swiglu(&ws.up, &mut ws.gated)?;
            be.matmul(&ws.gated, &w.w_down, &mut ws.proj)?;
        }
    }
    reduce(&mut ws.proj)?;
    be.add(x, &ws.proj)
}

/// Attention of a batch against its own tokens (reference and tp-pp): every key is local.
pub fn local_attention<B: Backend>(be: &B, ws: &mut Workspace<B>, batch: &Batch, causal: bool) -> Result<()> {
    ws.o.set_rows(batch.rows());
    ws.lse.set_rows(batch.rows());
    be.attention_reset(&mut ws.o, &mut ws.lse)?;
    attend(be, &ws.q, 0, &ws.kv, 0, ws.heads, batch, batch.tokens, causal, &mut ws.o, &mut ws.lse)?;
    be.attention_store(&ws.o, &mut ws.attn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::generator::value_bf16;

    /// GQA (4 heads, 2 K/V heads of 4) and SwiGLU (F = 8): W_qkv is [16, 16 + 2 x 8] = [Q | K | V],
    /// W_up is [16, 16] = [gate | up]; every TP shard is the slice of those whole tensors, with
    /// K/V heads split at tp 2 and replicated at tp 4.
    #[test]
    fn gqa_and_swiglu_shards_are_slices_of_the_whole_tensors() {
        let m = ModelConfig { layers: 1, d_model: 16, heads: 4, kv_heads: 2, mlp: 8, mlp_act: MlpAct::Swiglu, seq_len: 8, batch: 1 };
        let (be, seed) = (CpuBackend::new(), 3);
        let w_in = Init::Weight { fan_in: 16 };
        let qkv = |r: usize, c: usize| value_bf16(seed, layer_tensor_id(0, LayerTensor::Qkv), (r * 32 + c) as u64, w_in);
        let up = |r: usize, c: usize| value_bf16(seed, layer_tensor_id(0, LayerTensor::Up), (r * 16 + c) as u64, w_in);
        for (tp, kv_of) in
            [(1usize, [vec![0usize, 1]].to_vec()), (2, vec![vec![0], vec![1]]), (4, vec![vec![0], vec![0], vec![1], vec![1]])]
        {
            for (r, kv_heads) in kv_of.iter().enumerate() {
                let shard = Shard::tensor_parallel(&m, tp, r);
                assert_eq!(shard.kv_heads.clone().collect::<Vec<_>>(), *kv_heads, "tp {tp} rank {r}");
                let w = LayerWeights::generate(&be, &m, &shard, 0, seed).unwrap();
                let (q, kv, u) = (be.download(&w.w_q).unwrap(), be.download(&w.w_kv).unwrap(), be.download(&w.w_up).unwrap());
                let (qw, kw, f) = (shard.heads.len() * 4, kv_heads.len() * 4, shard.mlp.len());
                for row in 0..16 {
                    for c in 0..qw {
                        assert_eq!(q[row * qw + c], qkv(row, shard.heads.start * 4 + c), "Q tp {tp} rank {r}");
                    }
                    // K at columns 16 + 4 g, V at 16 + 8 + 4 g, for the shard's K/V heads g.
                    for c in 0..kw {
                        let g0 = kv_heads[0] * 4;
                        assert_eq!(kv[row * 2 * kw + c], qkv(row, 16 + g0 + c), "K tp {tp} rank {r}");
                        assert_eq!(kv[row * 2 * kw + kw + c], qkv(row, 24 + g0 + c), "V tp {tp} rank {r}");
                    }
                    // [gate | up]: the same MLP columns of each half.
                    for c in 0..f {
                        assert_eq!(u[row * 2 * f + c], up(row, shard.mlp.start + c), "gate tp {tp} rank {r}");
                        assert_eq!(u[row * 2 * f + f + c], up(row, 8 + shard.mlp.start + c), "up tp {tp} rank {r}");
                    }
                }
            }
        }
        // The seed's model is unchanged: W_qkv of MHA stays [d, 3d], its K block at column d.
        let dense = ModelConfig::dense(1, 16, 4, 6, 8, 1);
        let w = LayerWeights::generate(&be, &dense, &Shard::whole(&dense), 0, seed).unwrap();
        let kv = be.download(&w.w_kv).unwrap();
        assert_eq!(kv[2 * 32 + 1], value_bf16(seed, layer_tensor_id(0, LayerTensor::Qkv), (2 * 48 + 16 + 1) as u64, w_in));
    }
}
