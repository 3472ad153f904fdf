//! One layer's backward pass, written once against `Backend` as the forward is: from dL/dx of
//! the layer's output it accumulates the gradients of the layer's weights (FP32) and turns dx into
//! dL/dx of its input. As in the forward, a strategy supplies the attention (here its backward,
//! which may talk to other ranks) and the reduction of partial products over its tensor-parallel
//! group (here of the input gradients of the column-parallel GEMMs).

use super::{unit_stride, Batch, Blocks, LayerWeights, Saved, Shard, Workspace};
use crate::backend::{Backend, Heads, Matrix, Span};
use crate::config::{MlpAct, ModelConfig};
use crate::topology::LocalTokens;
use anyhow::Result;

/// A strategy's attention backward of one layer: from gws.dattn (dL/d of the attention output,
/// the rank's own rows) and what the forward saved, gws.dq and gws.dkv, the gradients of this
/// rank's Q and K|V after RoPE (BF16).
pub type AttentionBackward<'f, B> = dyn FnMut(&mut Workspace<B>, &mut GradWorkspace<B>, &Saved<B>) -> Result<()> + 'f;

/// The FP32 gradients of one layer's weights, in its shard's shapes, accumulated over
/// micro-batches.
pub struct LayerGrads<B: Backend> {
    pub norm1: B::Acc,
    pub w_q: B::Acc,
    pub w_kv: B::Acc,
    pub w_o: B::Acc,
    pub norm2: B::Acc,
    pub w_up: B::Acc,
    pub w_down: B::Acc,
}

impl<B: Backend> LayerGrads<B> {
    /// Zeros, shaped as `w`.
    pub fn new(be: &B, w: &LayerWeights<B>) -> Result<Self> {
        let zeros = |a: &B::Act| -> Result<B::Acc> {
            let mut g = be.alloc_acc(a.rows(), a.cols())?;
            be.zero_acc(&mut g)?;
            Ok(g)
        };
        Ok(LayerGrads {
            norm1: zeros(&w.norm1)?,
            w_q: zeros(&w.w_q)?,
            w_kv: zeros(&w.w_kv)?,
            w_o: zeros(&w.w_o)?,
            norm2: zeros(&w.norm2)?,
            w_up: zeros(&w.w_up)?,
            w_down: zeros(&w.w_down)?,
        })
    }

    /// Every gradient, in one order: what a reduction walks.
    pub fn each_mut(&mut self) -> [&mut B::Acc; 7] {
        [&mut self.norm1, &mut self.w_q, &mut self.w_kv, &mut self.w_o, &mut self.norm2, &mut self.w_up, &mut self.w_down]
    }

    /// Every gradient, in the same order.
    pub fn each(&self) -> [&B::Acc; 7] {
        [&self.norm1, &self.w_q, &self.w_kv, &self.w_o, &self.norm2, &self.w_up, &self.w_down]
    }
}

/// Bytes of one layer's gradients (`LayerGrads`) for `shard`: its weights' values, in FP32.
pub fn grads_bytes(m: &ModelConfig, shard: &Shard) -> u64 {
    let heads = shard.heads(m);
    let (d, w, kvw, f) = (m.d_model as u64, heads.width() as u64, heads.kv_width() as u64, shard.mlp.len() as u64);
    4 * (2 * d + d * w + d * 2 * kvw + w * d + d * f * m.mlp_act.up_factor() as u64 + f * d)
}

/// The backward's own buffers for `rows` local rows: the gradients flowing between ops (BF16)
/// and attention's FP32 accumulators (dq, dkv over `dkv_rows` rows of K|V, delta).
pub struct GradWorkspace<B: Backend> {
    /// dL/dx of the current layer boundary, updated in place layer by layer.
    pub dx: B::Act,
    pub dnorm: B::Act,
    pub dtmp: B::Act,
    pub dq: B::Act,
    pub dkv: B::Act,
    pub dattn: B::Act,
    pub dact: B::Act,
    /// SwiGLU's d[gate | up] (GELU works in place in dact).
    pub dup: B::Act,
    pub dq_acc: B::Acc,
    pub dkv_acc: B::Acc,
    pub delta: B::Acc,
}

impl<B: Backend> GradWorkspace<B> {
    pub fn new(be: &B, m: &ModelConfig, shard: &Shard, rows: usize, dkv_rows: usize) -> Result<Self> {
        let heads = shard.heads(m);
        let (d, w, kvw, f) = (m.d_model, heads.width(), heads.kv_width(), shard.mlp.len());
        let swiglu = m.mlp_act == MlpAct::Swiglu;
        Ok(GradWorkspace {
            dx: be.alloc_act(rows, d)?,
            dnorm: be.alloc_act(rows, d)?,
            dtmp: be.alloc_act(rows, d)?,
            dq: be.alloc_act(rows, w)?,
            dkv: be.alloc_act(rows, 2 * kvw)?,
            dattn: be.alloc_act(rows, w)?,
            dact: be.alloc_act(rows, f)?,
            dup: be.alloc_act(if swiglu { rows } else { 0 }, 2 * f)?,
            dq_acc: be.alloc_acc(rows, w)?,
            dkv_acc: be.alloc_acc(dkv_rows, 2 * kvw)?,
            delta: be.alloc_acc(rows, heads.heads)?,
        })
    }
}

/// Bytes of one `GradWorkspace` (`GradWorkspace::new`'s shapes).
pub fn grad_workspace_bytes(m: &ModelConfig, shard: &Shard, rows: u64, dkv_rows: u64) -> u64 {
    let heads = shard.heads(m);
    let (d, w, kvw, f) = (m.d_model as u64, heads.width() as u64, heads.kv_width() as u64, shard.mlp.len() as u64);
    let dup = if m.mlp_act == MlpAct::Swiglu { rows * 2 * f } else { 0 };
    2 * (3 * rows * d + 2 * rows * w + rows * 2 * kvw + rows * f + dup) + 4 * (rows * w + dkv_rows * 2 * kvw + rows * heads.heads as u64)
}

/// The backward of `layer_forward` on `batch`'s rows: gws.dx holds dL/d(layer output) and
/// becomes dL/d(layer input); `g` accumulates the weights' gradients. `attention` is the
/// strategy's attention backward, `reduce` sums the input gradients of the column-parallel GEMMs
/// (W_qkv, W_up) over the tensor-parallel group (identity without TP). `ws` is the forward's
/// workspace, free again: the norms and the activation are recomputed into it.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward<B: Backend>(
    be: &B,
    w: &LayerWeights<B>,
    g: &mut LayerGrads<B>,
    saved: &Saved<B>,
    ws: &mut Workspace<B>,
    gws: &mut GradWorkspace<B>,
    batch: &Batch,
    attention: &mut AttentionBackward<B>,
    reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
) -> Result<()> {
    // x_out = x_mid + act(norm2(x_mid) W_up) W_down.
    be.rms_norm(&saved.x_mid, &w.norm2, &mut ws.norm)?;
    let act = match ws.mlp_act {
        MlpAct::Gelu => {
            ws.up.set_rows(saved.up.rows());
            be.copy_rows(&saved.up, 0, &mut ws.up, 0, saved.up.rows())?;
            be.gelu(&mut ws.up)?;
            &ws.up
        }
        MlpAct::Swiglu => {
            be.swiglu(&saved.up, &mut ws.gated)?;
            &ws.gated
        }
    };
    be.matmul_backward_weight(act, &gws.dx, &mut g.w_down)?;
    be.matmul_backward_input(&gws.dx, &w.w_down, &mut gws.dact)?;
    let d_pre = match ws.mlp_act {
        MlpAct::Gelu => {
            be.gelu_backward(&saved.up, &mut gws.dact)?;
            &gws.dact
        }
        MlpAct::Swiglu => {
            be.swiglu_backward(&saved.up, &gws.dact, &mut gws.dup)?;
            &gws.dup
        }
    };
    be.matmul_backward_weight(&ws.norm, d_pre, &mut g.w_up)?;
    be.matmul_backward_input(d_pre, &w.w_up, &mut gws.dnorm)?;
    reduce(&mut gws.dnorm)?;
    be.rms_norm_backward(&saved.x_mid, &w.norm2, &gws.dnorm, &mut gws.dx, &mut g.norm2)?;

    // x_mid = x_in + Attn(RoPE(norm1(x_in) [W_q | W_kv])) W_o.
    be.matmul_backward_weight(&saved.attn, &gws.dx, &mut g.w_o)?;
    be.matmul_backward_input(&gws.dx, &w.w_o, &mut gws.dattn)?;
    attention(ws, gws, saved)?;
    for (_, span, stride) in batch.spans() {
        be.rope_backward(&mut gws.dq, ws.heads, span, stride)?;
        be.rope_backward(&mut gws.dkv, ws.heads.keys(), span, stride)?;
    }
    be.rms_norm(&saved.x_in, &w.norm1, &mut ws.norm)?;
    be.matmul_backward_weight(&ws.norm, &gws.dq, &mut g.w_q)?;
    be.matmul_backward_weight(&ws.norm, &gws.dkv, &mut g.w_kv)?;
    be.matmul_backward_input(&gws.dq, &w.w_q, &mut gws.dnorm)?;
    be.matmul_backward_input(&gws.dkv, &w.w_kv, &mut gws.dtmp)?;
    be.add(&mut gws.dnorm, &gws.dtmp)?;
    reduce(&mut gws.dnorm)?;
    be.rms_norm_backward(&saved.x_in, &w.norm1, &gws.dnorm, &mut gws.dx, &mut g.norm1)
}

/// The backward of `attend` (same buffers, spans and skipping): into dq (rows of q) and dkv
/// (rows of kv), FP32, from d_o, the final lse and delta over the query rows.
#[allow(clippy::too_many_arguments)]
pub fn attend_backward<B: Backend>(
    be: &B,
    (q, q_row0): (&B::Act, usize),
    (kv, kv_row0): (&B::Act, usize),
    heads: Heads,
    batch: &Batch,
    kv_tokens: &LocalTokens,
    causal: bool,
    (d_o, lse, delta): (&B::Act, &B::Acc, &B::Acc),
    dq: &mut B::Acc,
    dkv: &mut B::Acc,
) -> Result<()> {
    let kn = kv_tokens.len();
    for (s, qs, q_stride) in batch.spans() {
        for (r, seg) in kv_tokens.with_rows() {
            let qs = Span { row0: q_row0 + qs.row0, ..qs };
            let ks = Span { row0: kv_row0 + s * kn + r, len: seg.len, pos0: seg.start };
            let (qs, ks) = unit_stride(qs, ks, q_stride, seg.stride);
            if causal && ks.pos0 > qs.pos0 + qs.len - 1 {
                continue;
            }
            be.attention_backward(q, kv, heads, qs, ks, causal, d_o, lse, delta, dq, dkv)?;
        }
    }
    Ok(())
}

/// The backward of `attend_blocks` (same parts, same skipping): every query part of `q` against
/// every key part of `kv`, into dq (rows of q) and dkv (rows of kv).
#[allow(clippy::too_many_arguments)]
pub fn attend_blocks_backward<B: Backend>(
    be: &B,
    (q, q_blocks): (&B::Act, &Blocks),
    (kv, kv_blocks): (&B::Act, &Blocks),
    heads: Heads,
    causal: bool,
    grads: (&B::Act, &B::Acc, &B::Acc),
    dq: &mut B::Acc,
    dkv: &mut B::Acc,
) -> Result<()> {
    for (q_row0, q_tokens) in &q_blocks.parts {
        let batch = Batch { first_seq: 0, seqs: q_blocks.seqs, tokens: q_tokens };
        for (kv_row0, kv_tokens) in &kv_blocks.parts {
            attend_backward(be, (q, *q_row0), (kv, *kv_row0), heads, &batch, kv_tokens, causal, grads, dq, dkv)?;
        }
    }
    Ok(())
}

/// delta for gws.dattn against the saved output, and dq_acc zeroed over `batch`'s rows: the
/// start of every attention backward.
pub fn begin_attention_backward<B: Backend>(be: &B, gws: &mut GradWorkspace<B>, saved: &Saved<B>, heads: Heads) -> Result<()> {
    be.attention_backward_delta(&saved.attn, &gws.dattn, heads.heads, &mut gws.delta)?;
    gws.dq_acc.set_rows(saved.attn.rows());
    be.zero_acc(&mut gws.dq_acc)
}

/// Attention backward of a batch against its own tokens (reference and tp-pp): every key local.
pub fn local_attention_backward<B: Backend>(
    be: &B,
    gws: &mut GradWorkspace<B>,
    saved: &Saved<B>,
    heads: Heads,
    batch: &Batch,
    causal: bool,
) -> Result<()> {
    begin_attention_backward(be, gws, saved, heads)?;
    gws.dkv_acc.set_rows(batch.rows());
    be.zero_acc(&mut gws.dkv_acc)?;
    let grads = (&gws.dattn, &saved.lse, &gws.delta);
    attend_backward(be, (&saved.q, 0), (&saved.kv, 0), heads, batch, batch.tokens, causal, grads, &mut gws.dq_acc, &mut gws.dkv_acc)?;
    be.attention_store(&gws.dq_acc, &mut gws.dq)?;
    be.attention_store(&gws.dkv_acc, &mut gws.dkv)
}
