//! The backward of every forward op, for a training step (docs/design.md, "Training"): the
//! gradients of activations are BF16 between ops (each op's output rounded once from FP32), those
//! of the weights and of attention's inputs accumulate in FP32 (`Acc`). The CPU's versions
//! (`cpu_backward`) are the twins a GPU's kernels are checked against.

use super::{Heads, Span, Storage};
use anyhow::Result;

/// The backward ops, beside the forward ones of `Backend`.
pub trait Backward: Storage {
    /// dx = dy w^T: dy [m, n], w [k, n]; sets dx's rows to m (the input gradient of `matmul`).
    fn matmul_backward_input(&self, dy: &Self::Act, w: &Self::Act, dx: &mut Self::Act) -> Result<()>;

    /// dw += x^T dy in FP32: x [m, k], dy [m, n], dw [k, n] (the weight gradient of `matmul`,
    /// accumulated over micro-batches).
    fn matmul_backward_weight(&self, x: &Self::Act, dy: &Self::Act, dw: &mut Self::Acc) -> Result<()>;

    /// The backward of `rms_norm` y = x r g, r = (mean(x^2) + 1e-5)^-1/2, from dy:
    /// dx += r g dy - x r^3 / d sum_j(g_j dy_j x_j) (the sum in FP32, dx rounded once), and
    /// dgain [1, d] += sum over rows of dy x r in FP32.
    fn rms_norm_backward(&self, x: &Self::Act, gain: &Self::Act, dy: &Self::Act, dx: &mut Self::Act, dgain: &mut Self::Acc) -> Result<()>;

    /// The transpose of `rope` (a rotation, so its inverse): the same rows rotated by minus
    /// their angles.
    fn rope_backward(&self, dx: &mut Self::Act, heads: Heads, span: Span, stride: usize) -> Result<()>;

    /// dy *= GELU'(pre), in place: `pre` is the input the forward's `gelu` had.
    fn gelu_backward(&self, pre: &Self::Act, dy: &mut Self::Act) -> Result<()>;

    /// The backward of `swiglu` out = silu(gate) up, from dout [rows, F] and the forward's
    /// gate_up [rows, 2F]: d_gate_up = [dout up silu'(gate) | dout silu(gate)]; sets its rows.
    fn swiglu_backward(&self, gate_up: &Self::Act, dout: &Self::Act, d_gate_up: &mut Self::Act) -> Result<()>;

    /// delta [rows, heads] = per head, the sum over its head_dim columns of dO O, in FP32: the
    /// term FlashAttention-2's backward subtracts (o and d_o [rows, heads x head_dim]).
    fn attention_backward_delta(&self, o: &Self::Act, d_o: &Self::Act, heads: usize, delta: &mut Self::Acc) -> Result<()>;

    /// The backward of one `attention` call (same q, kv, spans and mask), from the upstream
    /// gradient d_o of the merged output, the forward's final lse (over every key block, so the
    /// probabilities P = exp(S - lse) of this block are already normalised: the log-sum-exp
    /// merge's backward is this) and delta: with dS = P (dO V^T - delta), dq += scale dS K,
    /// [dK | dV] += [scale dS^T Q | P^T dO], in FP32 into the rows of the spans. dq is [rows of
    /// q, heads x head_dim], dkv [rows of kv, 2 kv_heads x head_dim]; a K/V head sums over the
    /// query heads that attend with it.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        d_o: &Self::Act,
        lse: &Self::Acc,
        delta: &Self::Acc,
        dq: &mut Self::Acc,
        dkv: &mut Self::Acc,
    ) -> Result<()>;

    /// Every value of the rows in use to 0.
    fn zero_acc(&self, x: &mut Self::Acc) -> Result<()>;

    /// x += y, FP32, same shape.
    fn add_acc(&self, x: &mut Self::Acc, y: &Self::Acc) -> Result<()>;

    /// dst = src (FP32, every row in use; sets dst's rows).
    fn copy_acc(&self, src: &Self::Acc, dst: &mut Self::Acc) -> Result<()>;
}
