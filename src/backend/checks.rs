//! The ops' preconditions, stated once for both backends (STYLE.md, item 6): each takes the
//! operands as `Matrix` (their rows in use and columns) and gives the error the op refuses with.
//! The CPU backend and the CUDA launchers call the same function, so the two cannot disagree on
//! what a valid call is.

use super::{Heads, Matrix, Span};
use crate::generator::Region;
use anyhow::{ensure, Result};

/// `fill`: the region as wide as the buffer, its rows inside it from `dst_row0`.
pub fn fill(out: &impl Matrix, dst_row0: usize, region: &Region) -> Result<()> {
    ensure!(region.cols() == out.cols(), "fill: region is {} wide, buffer {}", region.cols(), out.cols());
    ensure!(dst_row0 + region.rows <= out.rows(), "fill: rows {}..{} beyond {}", dst_row0, dst_row0 + region.rows, out.rows());
    Ok(())
}

/// `matmul`: x [m, k] w [k, n] into n columns.
pub fn matmul(x: &impl Matrix, w: &impl Matrix, out: &impl Matrix) -> Result<()> {
    ensure!(x.cols() == w.rows(), "matmul: x is [{}, {}], w is [{}, {}]", x.rows(), x.cols(), w.rows(), w.cols());
    ensure!(out.cols() == w.cols(), "matmul: out has {} columns, w {}", out.cols(), w.cols());
    Ok(())
}

/// `rms_norm`: x, its gain and out of one width.
pub fn rms_norm(x: &impl Matrix, gain: &impl Matrix, out: &impl Matrix) -> Result<()> {
    ensure!(gain.cols() == x.cols() && out.cols() == x.cols(), "rms_norm: widths {} / {} / {}", x.cols(), gain.cols(), out.cols());
    Ok(())
}

/// `rope`: the heads inside the buffer's width, the span inside its rows.
pub fn rope(x: &impl Matrix, heads: Heads, span: Span) -> Result<()> {
    ensure!(heads.width() <= x.cols(), "rope: {} heads x {} wider than {}", heads.heads, heads.head_dim, x.cols());
    ensure!(span.row0 + span.len <= x.rows(), "rope: rows beyond buffer");
    Ok(())
}

/// `swiglu`: [gate | up] twice as wide as out.
pub fn swiglu(gate_up: &impl Matrix, out: &impl Matrix) -> Result<()> {
    ensure!(gate_up.cols() == 2 * out.cols(), "swiglu: [gate | up] is {} wide, out {}", gate_up.cols(), out.cols());
    Ok(())
}

/// `add`: two buffers of one shape.
pub fn add(x: &impl Matrix, y: &impl Matrix) -> Result<()> {
    ensure!(x.rows() == y.rows() && x.cols() == y.cols(), "add: [{}, {}] += [{}, {}]", x.rows(), x.cols(), y.rows(), y.cols());
    Ok(())
}

/// `attention`: q [rows, heads x head_dim], kv [rows, 2 x kv_heads x head_dim], accumulators o
/// [rows, heads x head_dim] and lse [rows, heads], the K/V heads dividing the heads, the spans
/// inside the buffers.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &impl Matrix, kv: &impl Matrix, heads: Heads, qs: Span, ks: Span, o: &impl Matrix, lse: &impl Matrix) -> Result<()> {
    let (hd, width, kvw) = (heads.head_dim, heads.width(), heads.kv_width());
    ensure!(
        q.cols() == width && kv.cols() == 2 * kvw && heads.kv_heads > 0 && heads.heads % heads.kv_heads == 0,
        "attention: q has {} columns, kv {}, {} heads ({} K/V) x {hd} need {width} and {}",
        q.cols(),
        kv.cols(),
        heads.heads,
        heads.kv_heads,
        2 * kvw
    );
    ensure!(
        o.cols() == width && lse.cols() == heads.heads,
        "attention: accumulators are [{}, {}] and [{}, {}]",
        o.rows(),
        o.cols(),
        lse.rows(),
        lse.cols()
    );
    ensure!(qs.row0 + qs.len <= q.rows() && qs.row0 + qs.len <= o.rows(), "attention: query rows beyond buffers");
    ensure!(ks.row0 + ks.len <= kv.rows(), "attention: key rows {}..{} beyond {}", ks.row0, ks.row0 + ks.len, kv.rows());
    Ok(())
}

/// `attention_store`: the accumulator and the output of one width.
pub fn attention_store(o: &impl Matrix, out: &impl Matrix) -> Result<()> {
    ensure!(o.cols() == out.cols(), "attention_store: widths {} / {}", o.cols(), out.cols());
    Ok(())
}

/// `copy_rows`: one width, both ranges inside their buffers.
pub fn copy_rows(src: &impl Matrix, src_row0: usize, dst: &impl Matrix, dst_row0: usize, rows: usize) -> Result<()> {
    ensure!(src.cols() == dst.cols(), "copy_rows: widths {} / {}", src.cols(), dst.cols());
    ensure!(src_row0 + rows <= src.rows() && dst_row0 + rows <= dst.rows(), "copy_rows: rows beyond buffers");
    Ok(())
}

/// attention_merge's shapes: o [rows, heads x hd] and lse [rows, heads], the partials as wide,
/// with rows in_row0 .. in_row0 + rows.
pub fn attention_merge(o: &impl Matrix, lse: &impl Matrix, o_in: &impl Matrix, lse_in: &impl Matrix, in_row0: usize) -> Result<()> {
    let fits = o.rows() == lse.rows()
        && o_in.cols() == o.cols()
        && lse_in.cols() == lse.cols()
        && lse.cols() > 0
        && o.cols() % lse.cols() == 0
        && in_row0 + o.rows() <= o_in.rows().min(lse_in.rows());
    ensure!(
        fits,
        "attention_merge: o [{}, {}], lse [{}, {}] from rows {in_row0}.. of o_in [{}, {}], lse_in [{}, {}]",
        o.rows(),
        o.cols(),
        lse.rows(),
        lse.cols(),
        o_in.rows(),
        o_in.cols(),
        lse_in.rows(),
        lse_in.cols()
    );
    Ok(())
}

/// attention_decode's shapes: query rows and every sequence's cache rows inside their buffers,
/// the accumulators as wide as the heads, and room for `splits` partials of each (sequence, head).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    q: &impl Matrix,
    kv: &impl Matrix,
    heads: Heads,
    s: super::DecodeSpan,
    o: &impl Matrix,
    lse: &impl Matrix,
    scratch: &impl Matrix,
    splits: usize,
) -> Result<()> {
    let (w, kvw) = (heads.width(), heads.kv_width());
    ensure!(
        q.cols() == w
            && kv.cols() == 2 * kvw
            && o.cols() == w
            && lse.cols() == heads.heads
            && heads.kv_heads > 0
            && heads.heads % heads.kv_heads == 0,
        "attention_decode: q [{}, {}], kv [{}, {}], o [{}, {}], lse [{}, {}] for {heads:?}",
        q.rows(),
        q.cols(),
        kv.rows(),
        kv.cols(),
        o.rows(),
        o.cols(),
        lse.rows(),
        lse.cols()
    );
    let q_end = s.q_row0 + s.count;
    let kv_end = if s.count == 0 { 0 } else { (s.seq0 + s.count - 1) * s.stride + s.len };
    ensure!(
        q_end <= q.rows() && q_end <= o.rows() && q_end <= lse.rows() && kv_end <= kv.rows() && (s.count <= 1 || s.len <= s.stride),
        "attention_decode: {s:?} outside q [{} rows], kv [{} rows], o [{} rows]",
        q.rows(),
        kv.rows(),
        o.rows()
    );
    let need = s.count * heads.heads * splits;
    ensure!(
        scratch.cols() == heads.head_dim + 1 && need <= scratch.capacity_rows(),
        "attention_decode: {need} partials of {} values, scratch [{}, {}]",
        heads.head_dim + 1,
        scratch.capacity_rows(),
        scratch.cols()
    );
    Ok(())
}

/// pack_acc's and unpack_acc's shapes: the wire is twice as wide as the FP32 buffer, and holds its rows.
pub fn packed(acc: &impl Matrix, wire: &impl Matrix, rows: usize) -> Result<()> {
    ensure!(
        wire.cols() == 2 * acc.cols() && rows <= acc.capacity_rows() && rows <= wire.capacity_rows(),
        "pack: {rows} rows of FP32 [{}, {}] as BF16 halves [{}, {}]",
        acc.capacity_rows(),
        acc.cols(),
        wire.capacity_rows(),
        wire.cols()
    );
    Ok(())
}

/// `matmul_backward_input`: dy [m, n] w^T with w [k, n], into k columns.
pub fn matmul_backward_input(dy: &impl Matrix, w: &impl Matrix, dx: &impl Matrix) -> Result<()> {
    ensure!(
        dy.cols() == w.cols() && dx.cols() == w.rows(),
        "matmul_backward_input: dy [{}, {}], w [{}, {}], dx {} wide",
        dy.rows(),
        dy.cols(),
        w.rows(),
        w.cols(),
        dx.cols()
    );
    Ok(())
}

/// `matmul_backward_weight`: x [m, k]^T dy [m, n] into dw [k, n].
pub fn matmul_backward_weight(x: &impl Matrix, dy: &impl Matrix, dw: &impl Matrix) -> Result<()> {
    let fits = x.rows() == dy.rows() && dw.rows() == x.cols() && dw.cols() == dy.cols();
    ensure!(
        fits,
        "matmul_backward_weight: x [{}, {}], dy [{}, {}], dw [{}, {}]",
        x.rows(),
        x.cols(),
        dy.rows(),
        dy.cols(),
        dw.rows(),
        dw.cols()
    );
    Ok(())
}

/// `rms_norm_backward`: x, dy and dx of one shape, the gain and its gradient as wide.
pub fn rms_norm_backward(x: &impl Matrix, gain: &impl Matrix, dy: &impl Matrix, dx: &impl Matrix, dgain: &impl Matrix) -> Result<()> {
    rms_norm(x, gain, dy)?;
    add(dx, x)?;
    add(dy, x)?;
    ensure!(
        dgain.cols() == x.cols() && dgain.rows() == 1,
        "rms_norm_backward: the gain's gradient is [{}, {}]",
        dgain.rows(),
        dgain.cols()
    );
    Ok(())
}

/// `copy_acc`: as wide, and `dst` holds `src`'s rows.
pub fn copy_acc(src: &impl Matrix, dst: &impl Matrix) -> Result<()> {
    ensure!(
        src.cols() == dst.cols() && src.rows() <= dst.capacity_rows(),
        "copy_acc: [{}, {}] into [{}, {}]",
        src.rows(),
        src.cols(),
        dst.capacity_rows(),
        dst.cols()
    );
    Ok(())
}

/// `attention_backward_delta`: o and dO of one shape, delta [rows, heads].
pub fn attention_backward_delta(o: &impl Matrix, d_o: &impl Matrix, heads: usize, delta: &impl Matrix) -> Result<()> {
    add(o, d_o)?;
    ensure!(
        heads > 0 && o.cols() % heads == 0 && delta.cols() == heads && delta.capacity_rows() >= o.rows(),
        "attention_backward_delta: o [{}, {}] over {heads} heads into [{}, {}]",
        o.rows(),
        o.cols(),
        delta.rows(),
        delta.cols()
    );
    Ok(())
}

/// `attention_backward`: the forward's shapes (`attention`), dO, lse and delta over the query
/// rows, dq as wide as q and dkv as kv, each over its span's rows.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &impl Matrix,
    kv: &impl Matrix,
    heads: Heads,
    qs: Span,
    ks: Span,
    d_o: &impl Matrix,
    lse: &impl Matrix,
    delta: &impl Matrix,
    dq: &impl Matrix,
    dkv: &impl Matrix,
) -> Result<()> {
    attention(q, kv, heads, qs, ks, d_o, lse)?;
    let end = qs.row0 + qs.len;
    ensure!(
        delta.cols() == heads.heads && end <= delta.rows() && end <= lse.rows() && end <= d_o.rows(),
        "attention_backward: query rows beyond dO, lse or delta"
    );
    ensure!(
        dq.cols() == q.cols() && end <= dq.rows(),
        "attention_backward: dq [{}, {}] for q [{}, {}]",
        dq.rows(),
        dq.cols(),
        q.rows(),
        q.cols()
    );
    ensure!(
        dkv.cols() == kv.cols() && ks.row0 + ks.len <= dkv.rows(),
        "attention_backward: dkv [{}, {}] for kv [{}, {}]",
        dkv.rows(),
        dkv.cols(),
        kv.rows(),
        kv.cols()
    );
    Ok(())
}
