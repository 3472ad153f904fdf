//! The operations a transformer layer needs, on one device: buffers, GEMM, norms, RoPE, GELU,
//! residual add, and attention of a query block against a key/value block merged by log-sum-exp
//! into FP32 accumulators. Strategies and the model are written once against this trait.
//!
//! Numerics on every backend: storage BF16 (`Act`), arithmetic FP32, one rounding to BF16 per
//! operation's output; attention statistics and partial outputs FP32 (`Acc`).

pub mod checks;
pub mod cpu;
pub mod cpu_backward;
pub mod cuda;
pub mod decode_twin;
pub mod flash_twin;

use crate::generator::{Init, Region};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the simulated GPU (tests/sim, scripts/sim-gpu.sh) calls its device. A device of that name
/// runs the kernels on the CPU: its timings are marked "simulated" wherever they appear, and no
/// bound of real hardware applies to them.
pub const SIMULATED_DEVICE: &str = "ringbench simulated GPU";

/// Whether a device (as its name appears in outputs) is the simulated GPU.
pub fn is_simulated_device(device: &str) -> bool {
    device.contains(SIMULATED_DEVICE)
}

/// How a timing on `device` was taken: "measured", or "simulated" on the simulated GPU.
pub fn timing_kind(device: &str) -> &'static str {
    if is_simulated_device(device) {
        "simulated"
    } else {
        "measured"
    }
}

/// Bytes held by a backend's buffers now, and at most since the last reset.
#[derive(Debug, Default)]
pub struct Tracker {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Tracker {
    pub fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A row-major 2-D buffer. Its row count can shrink and grow within the capacity it was allocated
/// with, so one buffer serves blocks of different lengths (uneven ring chunks).
pub trait Matrix {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    fn capacity_rows(&self) -> usize;
    /// Panics if `rows` exceeds the capacity: a sizing bug, not an input error.
    fn set_rows(&mut self, rows: usize);
    fn len(&self) -> usize {
        self.rows() * self.cols()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows `row0 .. row0 + len` of a buffer, holding tokens at global positions `pos0 .. pos0 + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub row0: usize,
    pub len: usize,
    pub pos0: usize,
}

/// A decode attention call (`Backend::attention_decode`): the new tokens of `count` sequences,
/// their queries in rows q_row0 .. q_row0 + count of q, sequence i's `len` cached K|V rows from
/// row (seq0 + i) x stride of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSpan {
    pub q_row0: usize,
    pub count: usize,
    pub seq0: usize,
    pub stride: usize,
    pub len: usize,
}

/// Thread blocks the decode kernel aims to fill (two waves of an H100's 132 SMs): it splits each
/// sequence's cache into as many parts as reach this many blocks over the call's sequences and
/// K/V heads (FlashDecoding's split), at most `DECODE_MAX_SPLITS`, each at least a tile of keys.
pub const DECODE_TARGET_BLOCKS: usize = 264;
pub const DECODE_MAX_SPLITS: usize = 64;
/// Keys per tile of the decode kernel (DEC_TILE in kernels/decode_attention.cu).
pub const DECODE_TILE: usize = 32;

/// The splits of each sequence's cache for a decode call of `count` sequences over `kv_heads`
/// K/V heads and `len` keys.
pub fn decode_splits(count: usize, kv_heads: usize, len: usize) -> usize {
    let want = DECODE_TARGET_BLOCKS.div_ceil((count * kv_heads).max(1));
    want.clamp(1, DECODE_MAX_SPLITS).min(len.div_ceil(DECODE_TILE).max(1))
}

/// Rows of head_dim + 1 FP32 values the split partials of a decode call of up to `count`
/// sequences need (`attention_decode`'s scratch): the most of any call of 1 to `count`.
pub fn decode_scratch_rows(count: usize, heads: Heads, len: usize) -> usize {
    (1..=count.max(1)).map(|c| c * heads.heads * decode_splits(c, heads.kv_heads, len)).max().unwrap_or(0)
}

/// A block of `rows` x `cols` from (src_row0, src_col0) of one buffer to (dst_row0, dst_col0) of
/// another, of any widths: how Ulysses packs head slices for its all-to-all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    pub src_row0: usize,
    pub src_col0: usize,
    pub dst_row0: usize,
    pub dst_col0: usize,
    pub rows: usize,
    pub cols: usize,
}

impl BlockCopy {
    /// The block must lie inside both buffers' rows in use.
    pub fn check(&self, src: &impl Matrix, dst: &impl Matrix) -> anyhow::Result<()> {
        let fits = self.src_row0 + self.rows <= src.rows()
            && self.src_col0 + self.cols <= src.cols()
            && self.dst_row0 + self.rows <= dst.rows()
            && self.dst_col0 + self.cols <= dst.cols();
        anyhow::ensure!(fits, "copy_block: {self:?} outside [{}, {}] -> [{}, {}]", src.rows(), src.cols(), dst.rows(), dst.cols());
        Ok(())
    }
}

/// Head layout shared by a query buffer `q` [rows, heads * head_dim] and a key/value buffer
/// `kv` [rows, 2 * kv_heads * head_dim] = [K | V]; query head h attends with K/V head
/// h / (heads / kv_heads) (grouped-query attention; kv_heads = heads is multi-head attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Multi-head attention: a K/V head per query head.
    pub fn mha(heads: usize, head_dim: usize) -> Self {
        Heads { heads, kv_heads: heads, head_dim }
    }

    /// Width of the query (and output) rows: heads x head_dim.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of K (and of V): kv_heads x head_dim.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The K/V head that query head `h` attends with.
    pub fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// The K/V heads as heads of their own (RoPE on K).
    pub fn keys(&self) -> Heads {
        Heads::mha(self.kv_heads, self.head_dim)
    }
}

/// Peak memory of one rank, as the measurement protocol defines it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// High-water mark of the backend's own buffers since the last reset.
    pub buffers_peak_bytes: u64,
    /// The device's (CPU: the process's resident) memory at its highest since the last reset,
    /// where the platform reports it.
    pub device_peak_bytes: Option<u64>,
}

/// The FLOPs of the ops a backend was asked to run, counted at each call from its shapes (a
/// multiply-add as 2): 2 m k n per GEMM; 4 head_dim per head and (query, visible key) pair of an
/// attention call, the pairs its causal mask leaves by the spans' true positions. Counted where
/// the work is issued, so it checks the strategies' division of the work (and the emulation's
/// copy of it) against `metrics::flops`, which derives the same figures from the config alone.
#[derive(Debug, Default)]
pub struct FlopCounter(std::sync::Mutex<(f64, f64)>);

impl FlopCounter {
    pub fn gemm(&self, m: usize, k: usize, n: usize) {
        self.add(2.0 * m as f64 * k as f64 * n as f64, 0.0);
    }

    pub fn attention(&self, heads: Heads, qs: Span, ks: Span, causal: bool) {
        let pairs: u64 = if causal {
            // Query at position p sees the block's keys at positions <= p.
            (qs.pos0..qs.pos0 + qs.len).map(|p| ((p + 1).saturating_sub(ks.pos0).min(ks.len)) as u64).sum()
        } else {
            (qs.len * ks.len) as u64
        };
        self.add(0.0, 4.0 * heads.head_dim as f64 * heads.heads as f64 * pairs as f64);
    }

    fn add(&self, linear: f64, attention: f64) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += linear;
        c.1 += attention;
    }

    /// (linear, attention) FLOPs counted so far.
    pub fn total(&self) -> (f64, f64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Host-clock seconds of the GEMMs and attention calls made while timing is on: the CPU backend's
/// ops run inside their calls, so the host's clock is their time. Off by default.
#[derive(Debug, Default)]
pub struct OpClock {
    on: std::sync::atomic::AtomicBool,
    secs: std::sync::Mutex<(f64, f64)>,
}

impl OpClock {
    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Run `op`, adding its time to the GEMMs' (`linear`) or attention's while timing is on.
    pub fn time<T>(&self, linear: bool, op: impl FnOnce() -> T) -> T {
        if !self.on.load(std::sync::atomic::Ordering::Relaxed) {
            return op();
        }
        let t0 = std::time::Instant::now();
        let out = op();
        let dt = t0.elapsed().as_secs_f64();
        let mut s = self.secs.lock().unwrap_or_else(|e| e.into_inner());
        if linear {
            s.0 += dt;
        } else {
            s.1 += dt;
        }
        out
    }

    /// (GEMM, attention) seconds since the last take.
    pub fn take(&self) -> (f64, f64) {
        std::mem::take(&mut *self.secs.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a backend measures of itself, apart from the ops (`Backend`): its device, the timer of
/// a timed iteration, the memory it uses, and the FLOPs and seconds of the calls it ran. The
/// timing engine and the results read these; the strategies never need them.
pub trait Instruments {
    /// What runs the kernels, for the results ("cpu: <model> x<cores>", a GPU's name).
    fn device_name(&self) -> String;

    /// Dense BF16 peak FLOP/s of one device, where known: the denominator of MFU.
    fn peak_flops(&self) -> Option<f64>;

    /// (linear, attention) FLOPs of every GEMM and attention call issued so far (`FlopCounter`).
    fn counted_flops(&self) -> (f64, f64);

    /// Time every GEMM and attention call from now (`true`) until turned off: the profile of one
    /// iteration that `plan --calibrate` reads. Off by default (on a GPU it records two events
    /// per call).
    fn set_op_timing(&self, on: bool);

    /// The (GEMM, attention) seconds of the calls timed since the last take, once `synchronize`
    /// has returned.
    fn take_op_seconds(&self) -> anyhow::Result<(f64, f64)>;

    /// Start a new peak-memory measurement (between strategy runs).
    fn reset_peak_memory(&self);

    fn memory(&self) -> MemoryStats;

    /// The memory one rank may use, when `sharing` ranks share this rank's memory (CPU: the
    /// node's available memory divided among its ranks); None where unknown.
    fn memory_budget(&self, sharing: usize) -> Option<u64>;

    /// Mark the start of a timed iteration on the device's own timeline (CUDA: an event on the
    /// compute stream); a backend without one keeps no mark.
    fn timer_start(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Mark the end of the timed iteration, after everything it queued.
    fn timer_stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Seconds from `timer_start` to `timer_stop` on the device's timeline, once `synchronize`
    /// has returned; None where the host's clock is the measure.
    fn timer_elapsed(&self) -> anyhow::Result<Option<f64>> {
        Ok(None)
    }

    /// The PCI bus id of the GPU this backend runs on ("00000000:19:00.0"), for NVML; None off a GPU.
    fn pci_bus_id(&self) -> Option<String> {
        None
    }
}

/// A backend's two kinds of buffer.
pub trait Storage {
    /// BF16 activations and weights.
    type Act: Matrix;
    /// FP32 accumulators: attention's, and the gradients of a training step.
    type Acc: Matrix;
}

/// The backward of every forward op, for a training step (docs/design.md, "Training"): the
/// gradients of activations are BF16 between ops (each op's output rounded once from FP32), those
/// of the weights and of attention's inputs accumulate in FP32 (`Acc`). The CPU's versions
/// (`cpu_backward`) are the twins a GPU's kernels are checked against.
pub trait Backward: Storage {
    /// dx = dy w^T: dy [m, n], w [k, n]; sets dx's rows to m (the input gradient of `matmul`).
    fn matmul_backward_input(&self, dy: &Self::Act, w: &Self::Act, dx: &mut Self::Act) -> anyhow::Result<()>;

    /// dw += x^T dy in FP32: x [m, k], dy [m, n], dw [k, n] (the weight gradient of `matmul`,
    /// accumulated over micro-batches).
    fn matmul_backward_weight(&self, x: &Self::Act, dy: &Self::Act, dw: &mut Self::Acc) -> anyhow::Result<()>;

    /// The backward of `rms_norm` y = x r g, r = (mean(x^2) + 1e-5)^-1/2, from dy:
    /// dx += r g dy - x r^3 / d sum_j(g_j dy_j x_j) (the sum in FP32, dx rounded once), and
    /// dgain [1, d] += sum over rows of dy x r in FP32.
    fn rms_norm_backward(
        &self,
        x: &Self::Act,
        gain: &Self::Act,
        dy: &Self::Act,
        dx: &mut Self::Act,
        dgain: &mut Self::Acc,
    ) -> anyhow::Result<()>;

    /// The transpose of `rope` (a rotation, so its inverse): the same rows rotated by minus
    /// their angles.
    fn rope_backward(&self, dx: &mut Self::Act, heads: Heads, span: Span, stride: usize) -> anyhow::Result<()>;

    /// dy *= GELU'(pre), in place: `pre` is the input the forward's `gelu` had.
    fn gelu_backward(&self, pre: &Self::Act, dy: &mut Self::Act) -> anyhow::Result<()>;

    /// The backward of `swiglu` out = silu(gate) up, from dout [rows, F] and the forward's
    /// gate_up [rows, 2F]: d_gate_up = [dout up silu'(gate) | dout silu(gate)]; sets its rows.
    fn swiglu_backward(&self, gate_up: &Self::Act, dout: &Self::Act, d_gate_up: &mut Self::Act) -> anyhow::Result<()>;

    /// delta [rows, heads] = per head, the sum over its head_dim columns of dO O, in FP32: the
    /// term FlashAttention-2's backward subtracts (o and d_o [rows, heads x head_dim]).
    fn attention_backward_delta(&self, o: &Self::Act, d_o: &Self::Act, heads: usize, delta: &mut Self::Acc) -> anyhow::Result<()>;

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
    ) -> anyhow::Result<()>;

    /// Every value of the rows in use to 0.
    fn zero_acc(&self, x: &mut Self::Acc) -> anyhow::Result<()>;

    /// x += y, FP32, same shape.
    fn add_acc(&self, x: &mut Self::Acc, y: &Self::Acc) -> anyhow::Result<()>;

    /// dst = src (FP32, every row in use; sets dst's rows).
    fn copy_acc(&self, src: &Self::Acc, dst: &mut Self::Acc) -> anyhow::Result<()>;
}

/// The ops every strategy is written in, on BF16 activations and FP32 attention accumulators;
/// `Backward` holds the backward of each for a training step, `Instruments` what a backend
/// measures of itself.
pub trait Backend: Instruments + Backward {
    fn alloc_act(&self, rows: usize, cols: usize) -> anyhow::Result<Self::Act>;
    fn alloc_acc(&self, rows: usize, cols: usize) -> anyhow::Result<Self::Acc>;

    /// Generate `region` of a tensor (docs/design.md's generator) into rows `dst_row0 ..` of `out`.
    fn fill(&self, out: &mut Self::Act, dst_row0: usize, region: &Region, seed: u64, init: Init) -> anyhow::Result<()>;

    /// out = x w, x [m, k], w [k, n], FP32 accumulation. Sets out's rows to m.
    fn matmul(&self, x: &Self::Act, w: &Self::Act, out: &mut Self::Act) -> anyhow::Result<()>;

    /// out = x / sqrt(mean(x^2) + 1e-5) * gain, per row; gain [1, cols].
    fn rms_norm(&self, x: &Self::Act, gain: &Self::Act, out: &mut Self::Act) -> anyhow::Result<()>;

    /// Rotate the first heads x head_dim columns of rows `span` by their global positions: row
    /// span.row0 + i is at position span.pos0 + i x `stride` (1, or P for the striped layout).
    fn rope(&self, x: &mut Self::Act, heads: Heads, span: Span, stride: usize) -> anyhow::Result<()>;

    /// x = GELU(x), tanh form.
    fn gelu(&self, x: &mut Self::Act) -> anyhow::Result<()>;

    /// out = silu(gate) * up, per row of gate_up = [gate | up] (two halves of equal width), in
    /// FP32, rounded once to BF16; silu(z) = z / (1 + e^-z).
    fn swiglu(&self, gate_up: &Self::Act, out: &mut Self::Act) -> anyhow::Result<()>;

    /// x += y.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> anyhow::Result<()>;

    /// Accumulators to the empty state: o = 0, lse = -inf.
    fn attention_reset(&self, o: &mut Self::Acc, lse: &mut Self::Acc) -> anyhow::Result<()>;

    /// Attention of the queries in rows `qs` of `q` against the keys and values in rows `ks` of `kv`,
    /// per head, causal by global position if `causal`, scale 1/sqrt(head_dim); merged into the FP32
    /// accumulators o [rows, heads x head_dim] and lse [rows, heads] by the log-sum-exp rule.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
    ) -> anyhow::Result<()>;

    /// out = BF16(o); sets out's rows to o's.
    fn attention_store(&self, o: &Self::Acc, out: &mut Self::Act) -> anyhow::Result<()>;

    /// Decode attention (`DecodeSpan`): each new token's query against every cached row of its
    /// sequence (all visible), merged into its row of (o, lse). `scratch` [rows, head_dim + 1]
    /// FP32 holds the split partials (`decode_scratch_rows`); the CPU computes each row whole.
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        span: DecodeSpan,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
        scratch: &mut Self::Acc,
    ) -> anyhow::Result<()>;

    /// Merge the partial results in rows `in_row0 ..` of (o_in, lse_in) into every row of (o,
    /// lse) by the log-sum-exp rule (`lse_merge`): how a decode step combines the partial
    /// attention that other ranks computed against their share of the K/V cache.
    fn attention_merge(
        &self,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
        o_in: &Self::Acc,
        lse_in: &Self::Acc,
        in_row0: usize,
    ) -> anyhow::Result<()>;

    /// The bits of the FP32 buffer `acc` as BF16-sized halves in `wire` (cols = 2 x acc's cols;
    /// rows set to acc's): FP32 partial results travel through the transports, which move
    /// activations, unrounded.
    fn pack_acc(&self, acc: &Self::Acc, wire: &mut Self::Act) -> anyhow::Result<()>;

    /// The reverse of `pack_acc`: `acc` (rows set to wire's) holds the FP32 values whose bits `wire` carries.
    fn unpack_acc(&self, wire: &Self::Act, acc: &mut Self::Acc) -> anyhow::Result<()>;

    /// dst[dst_row0 .. dst_row0 + rows] = src[src_row0 .. src_row0 + rows].
    fn copy_rows(&self, src: &Self::Act, src_row0: usize, dst: &mut Self::Act, dst_row0: usize, rows: usize) -> anyhow::Result<()>;

    /// dst's block = src's block, as `c` places them (no arithmetic: the bits are copied).
    fn copy_block(&self, src: &Self::Act, dst: &mut Self::Act, c: BlockCopy) -> anyhow::Result<()>;

    /// The buffer's rows, on the host.
    fn download(&self, x: &Self::Act) -> anyhow::Result<Vec<half::bf16>>;

    /// Host values into the buffer's rows (exactly as many as it holds).
    fn upload(&self, x: &mut Self::Act, data: &[half::bf16]) -> anyhow::Result<()>;

    fn download_acc(&self, x: &Self::Acc) -> anyhow::Result<Vec<f32>>;

    fn upload_acc(&self, x: &mut Self::Acc, data: &[f32]) -> anyhow::Result<()>;

    /// Wait until every operation issued so far has finished (the end of a timed iteration).
    fn synchronize(&self) -> anyhow::Result<()>;
}

/// The spacing of BF16 values (8 significant bits) at magnitude x.
pub fn bf16_ulp(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    2f64.powi(x.abs().log2().floor() as i32 - 7)
}

/// The log-sum-exp merge of a partial attention result (o_new, lse_new) into (o, lse), in FP32:
/// lse' = m + ln(e^(lse - m) + e^(lse_new - m)), o' = o e^(lse - lse') + o_new e^(lse_new - lse').
/// An empty side (lse = -inf, no keys seen) leaves the other unchanged.
pub fn lse_merge(o: &mut [f32], lse: &mut f32, o_new: &[f32], lse_new: f32) {
    if lse_new == f32::NEG_INFINITY {
        return;
    }
    if *lse == f32::NEG_INFINITY {
        o.copy_from_slice(o_new);
        *lse = lse_new;
        return;
    }
    let m = lse.max(lse_new);
    let merged = m + ((*lse - m).exp() + (lse_new - m).exp()).ln();
    let (w_old, w_new) = ((*lse - merged).exp(), (lse_new - merged).exp());
    for (a, b) in o.iter_mut().zip(o_new) {
        *a = *a * w_old + b * w_new;
    }
    *lse = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_ulp_is_the_spacing_of_bf16_values() {
        for x in [1.0f64, 3.7, 4.0, 0.3, 100.0] {
            let b = half::bf16::from_f64(x);
            let next = half::bf16::from_bits(b.to_bits() + 1);
            assert_eq!(bf16_ulp(b.to_f64()), next.to_f64() - b.to_f64(), "at {x}");
        }
    }

    /// Softmax attention of one query over `keys` in FP64: (output, lse).
    fn softmax_f64(scores: &[f64], values: &[Vec<f64>]) -> (Vec<f64>, f64) {
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        let mut out = vec![0.0; values[0].len()];
        for (s, v) in scores.iter().zip(values) {
            for (o, x) in out.iter_mut().zip(v) {
                *o += (s - m).exp() / z * x;
            }
        }
        (out, m + z.ln())
    }

    #[test]
    fn merging_two_halves_by_lse_equals_softmax_over_the_whole() {
        use crate::generator::uniform;
        // Sharp scores (up to +-12) so that a wrong weight would show.
        let n = 37;
        let scores: Vec<f64> = (0..n).map(|i| 12.0 * uniform(1, 2, i) as f64).collect();
        let values: Vec<Vec<f64>> = (0..n).map(|i| (0..5).map(|j| uniform(1, 3, i * 5 + j) as f64).collect()).collect();
        let (want, want_lse) = softmax_f64(&scores, &values);
        for split in [1, 13, 36] {
            let (a, la) = softmax_f64(&scores[..split], &values[..split]);
            let (b, lb) = softmax_f64(&scores[split..], &values[split..]);
            let mut o: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let mut lse = la as f32;
            let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            lse_merge(&mut o, &mut lse, &b32, lb as f32);
            assert!((lse as f64 - want_lse).abs() < 1e-5, "lse {lse} vs {want_lse}");
            for (x, w) in o.iter().zip(&want) {
                assert!((*x as f64 - w).abs() < 1e-6, "split {split}: {x} vs {w}");
            }
        }
    }

    #[test]
    fn merging_with_an_empty_side_keeps_the_other() {
        let mut o = vec![0.0f32; 2];
        let mut lse = f32::NEG_INFINITY;
        lse_merge(&mut o, &mut lse, &[1.0, 2.0], 0.5);
        assert_eq!((o.clone(), lse), (vec![1.0, 2.0], 0.5));
        lse_merge(&mut o, &mut lse, &[9.0, 9.0], f32::NEG_INFINITY);
        assert_eq!((o, lse), (vec![1.0, 2.0], 0.5));
    }
}
