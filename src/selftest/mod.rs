//! `ringbench selftest`: every backend op on this machine's GPU against the CPU backend, on fresh
//! random inputs at awkward sizes (odd lengths, lengths off the tile, a single token), outputs
//! poisoned with NaN before each run so that an unwritten element fails. Each case is written
//! once against `Backend` and run on both (STYLE.md, item 8).

use crate::backend::cuda::device::AttentionKernel;
use crate::backend::{Backend, Heads, Span};
use crate::generator::{layer_tensor_id, Init, LayerTensor, Region};
use anyhow::{bail, Result};
use half::bf16;

pub mod backward;
pub mod case;
pub mod comm;

pub(crate) use case::{act, poisoned, ring_calls, values, POISON_BF16};
pub use case::{Output, Tolerance};

/// One op with its inputs (host data) and shapes.
pub enum Step {
    Fill {
        rows: usize,
        cols: usize,
        region: Region,
        init: Init,
    },
    Matmul {
        m: usize,
        k: usize,
        n: usize,
        x: Vec<bf16>,
        w: Vec<bf16>,
    },
    RmsNorm {
        rows: usize,
        cols: usize,
        x: Vec<bf16>,
        gain: Vec<bf16>,
    },
    Rope {
        rows: usize,
        heads: Heads,
        x: Vec<bf16>,
        span: Span,
        stride: usize,
    },
    Gelu {
        x: Vec<bf16>,
    },
    /// [rows, 2 f] = [gate | up] into [rows, f].
    Swiglu {
        rows: usize,
        f: usize,
        x: Vec<bf16>,
    },
    Add {
        x: Vec<bf16>,
        y: Vec<bf16>,
    },
    /// Two attention calls into the same accumulators (so the merge with a non-empty state runs),
    /// then the store to BF16; returns the FP32 (o, lse) concatenated.
    Attention {
        rows: usize,
        heads: Heads,
        q: Vec<bf16>,
        kv: Vec<bf16>,
        first: (Span, Span),
        second: (Span, Span),
        causal: bool,
    },
    CopyRows {
        rows: usize,
        cols: usize,
        x: Vec<bf16>,
        from: usize,
        to: usize,
        n: usize,
    },
    /// A decode call (`attention_decode`): `count` sequences' new queries, each against its `len`
    /// cached rows (rows `stride` apart), merged into accumulators that already hold one
    /// attention call's result; then their FP32 bits through the wire (pack_acc, unpack_acc) and
    /// merged with themselves (attention_merge: the same lse, + ln 2; o unchanged). Returns the
    /// FP32 (o, lse) after the decode call, then after the merge.
    Decode {
        heads: Heads,
        count: usize,
        len: usize,
        q: Vec<bf16>,
        kv: Vec<bf16>,
    },
    /// A block of columns into a buffer of another width (Ulysses' packing).
    CopyBlock {
        src: (usize, usize),
        dst: (usize, usize),
        x: Vec<bf16>,
        block: crate::backend::BlockCopy,
    },
    /// A backward op (a training step's): `backward`.
    Backward(backward::Step),
}

/// Run one step on a backend.
pub fn execute<B: Backend>(be: &B, step: &Step) -> Result<Output> {
    let out = match step {
        Step::Fill { rows, cols, region, init } => {
            let mut o = poisoned(be, *rows, *cols)?;
            be.fill(&mut o, 0, region, 7, *init)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::Matmul { m, k, n, x, w } => {
            let (x, w) = (act(be, *m, *k, x)?, act(be, *k, *n, w)?);
            let mut o = poisoned(be, *m, *n)?;
            be.matmul(&x, &w, &mut o)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::RmsNorm { rows, cols, x, gain } => {
            let (x, g) = (act(be, *rows, *cols, x)?, act(be, 1, *cols, gain)?);
            let mut o = poisoned(be, *rows, *cols)?;
            be.rms_norm(&x, &g, &mut o)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::Rope { rows, heads, x, span, stride } => {
            let mut x = act(be, *rows, x.len() / rows, x)?;
            be.rope(&mut x, *heads, *span, *stride)?;
            Output::Bf16(be.download(&x)?)
        }
        Step::Gelu { x } => {
            let mut x = act(be, 1, x.len(), x)?;
            be.gelu(&mut x)?;
            Output::Bf16(be.download(&x)?)
        }
        Step::Swiglu { rows, f, x } => {
            let x = act(be, *rows, 2 * f, x)?;
            let mut o = poisoned(be, *rows, *f)?;
            be.swiglu(&x, &mut o)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::Add { x, y } => {
            let (mut x, y) = (act(be, 1, x.len(), x)?, act(be, 1, y.len(), y)?);
            be.add(&mut x, &y)?;
            Output::Bf16(be.download(&x)?)
        }
        Step::Attention { rows, heads, q, kv, first, second, causal } => {
            let w = heads.width();
            let (q, kv) = (act(be, *rows, w, q)?, act(be, *rows, 2 * heads.kv_width(), kv)?);
            let (mut o, mut lse) = (be.alloc_acc(*rows, w)?, be.alloc_acc(*rows, heads.heads)?);
            be.upload_acc(&mut o, &vec![f32::NAN; rows * w])?;
            be.upload_acc(&mut lse, &vec![f32::NAN; rows * heads.heads])?;
            be.attention_reset(&mut o, &mut lse)?;
            for (qs, ks) in [first, second] {
                be.attention(&q, &kv, *heads, *qs, *ks, *causal, &mut o, &mut lse)?;
            }
            let mut stored = poisoned(be, *rows, w)?;
            be.attention_store(&o, &mut stored)?;
            let mut all = be.download_acc(&o)?;
            all.extend(be.download_acc(&lse)?);
            all.extend(be.download(&stored)?.iter().map(|v| v.to_f32()));
            Output::F32(all)
        }
        Step::Decode { heads, count, len, q, kv } => {
            let (w, stride) = (heads.width(), len + 3);
            let (q, kv) = (act(be, *count, w, q)?, act(be, count * stride, 2 * heads.kv_width(), kv)?);
            let (mut o, mut lse) = (be.alloc_acc(*count, w)?, be.alloc_acc(*count, heads.heads)?);
            be.attention_reset(&mut o, &mut lse)?;
            // A first result to merge into: the last cached row of each sequence alone.
            for i in 0..*count {
                let (qs, ks) = (Span { row0: i, len: 1, pos0: 0 }, Span { row0: i * stride + len - 1, len: 1, pos0: 0 });
                be.attention(&q, &kv, *heads, qs, ks, false, &mut o, &mut lse)?;
            }
            let mut scratch = be.alloc_acc(crate::backend::decode_scratch_rows(*count, *heads, *len), heads.head_dim + 1)?;
            let span = crate::backend::DecodeSpan { q_row0: 0, count: *count, seq0: 0, stride, len: *len };
            be.attention_decode(&q, &kv, *heads, span, &mut o, &mut lse, &mut scratch)?;
            let mut all = be.download_acc(&o)?;
            all.extend(be.download_acc(&lse)?);
            let (mut wire_o, mut wire_l) = (poisoned(be, *count, 2 * w)?, poisoned(be, *count, 2 * heads.heads)?);
            be.pack_acc(&o, &mut wire_o)?;
            be.pack_acc(&lse, &mut wire_l)?;
            let (mut o2, mut l2) = (be.alloc_acc(*count, w)?, be.alloc_acc(*count, heads.heads)?);
            be.unpack_acc(&wire_o, &mut o2)?;
            be.unpack_acc(&wire_l, &mut l2)?;
            be.attention_merge(&mut o, &mut lse, &o2, &l2, 0)?;
            all.extend(be.download_acc(&o)?);
            all.extend(be.download_acc(&lse)?);
            Output::F32(all)
        }
        Step::CopyRows { rows, cols, x, from, to, n } => {
            let x = act(be, *rows, *cols, x)?;
            // Rows outside the copy must keep what they held: start from known values, not poison.
            let mut o = act(be, *rows, *cols, &values(91, rows * cols, 1.0))?;
            be.copy_rows(&x, *from, &mut o, *to, *n)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::CopyBlock { src, dst, x, block } => {
            let x = act(be, src.0, src.1, x)?;
            // Values outside the block must stay: start from known values, not poison.
            let mut o = act(be, dst.0, dst.1, &values(92, dst.0 * dst.1, 1.0))?;
            be.copy_block(&x, &mut o, *block)?;
            Output::Bf16(be.download(&o)?)
        }
        Step::Backward(s) => backward::execute(be, s)?,
    };
    be.synchronize()?;
    Ok(out)
}

/// The tolerance of an attention case: against the flash kernel's twin where `kernel` runs it at
/// this head dim, the FP32 one otherwise.
pub(crate) fn attention_tolerance(kernel: AttentionKernel, hd: usize) -> Tolerance {
    match kernel.twin_tile(hd) {
        Some(tile) => Tolerance::FlashTwin { tile },
        None => Tolerance::Relative(2e-4),
    }
}

/// What a step should give and how close: the reference backend's output, or for attention on
/// the flash kernel (FlashTwin) the kernel's CPU twin's, with its per-value bounds.
pub fn expected<R: Backend>(reference: &R, step: &Step, tol: &Tolerance) -> Result<(Output, Tolerance)> {
    if let (&Tolerance::Derived { flash }, Step::Backward(s)) = (tol, step) {
        return Ok((execute(reference, step)?, backward::bounds(s, flash)?));
    }
    if let (Tolerance::Relative(r), Step::Attention { rows, heads, .. }) = (tol, step) {
        let want = execute(reference, step)?;
        let Output::F32(v) = &want else { bail!("attention gives FP32 outputs") };
        let (o_end, lse_end) = (rows * heads.width(), rows * (heads.width() + heads.heads));
        let rel = |x: &f32| r * (*x as f64).abs().max(1.0);
        let tol = attention_bounds(v[..o_end].iter().map(rel).collect(), v[o_end..lse_end].iter().map(rel).collect(), &v[lse_end..]);
        return Ok((want, tol));
    }
    let (&Tolerance::FlashTwin { tile }, Step::Attention { rows, heads, q, kv, first, second, .. }) = (tol, step) else {
        return Ok((execute(reference, step)?, tol.clone()));
    };
    let Step::Attention { causal, .. } = step else { unreachable!() };
    let (w, hn) = (heads.width(), heads.heads);
    let (mut o, mut lse) = (vec![0f32; rows * w], vec![f32::NEG_INFINITY; rows * hn]);
    let mut bound = vec![0f64; rows * hn * 2]; // (o, lse) per row and head
    for (qs, ks) in [first, second] {
        for (k, b) in
            crate::backend::flash_twin::attention(q, kv, *heads, *qs, *ks, *causal, tile, &mut o, &mut lse).into_iter().enumerate()
        {
            let at = (qs.row0 + k / hn) * hn + k % hn;
            bound[2 * at] += b.o;
            bound[2 * at + 1] += b.lse;
        }
    }
    let stored: Vec<f32> = o.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    let tol = attention_bounds(
        (0..rows * w).map(|i| bound[2 * (i / heads.head_dim)]).collect(),
        (0..rows * hn).map(|i| bound[2 * i + 1]).collect(),
        &stored,
    );
    let mut all = o;
    all.extend(lse);
    all.extend(stored);
    Ok((Output::F32(all), tol))
}

/// Attention's per-value bounds over [o | lse | stored]: each accumulator value's own, and for the
/// stored BF16 copy its accumulator's plus one BF16 ulp. The two sides' FP32 values agree only
/// within their bound, and one near a rounding boundary rounds to BF16 one ulp apart, a difference
/// no FP32 bound covers.
fn attention_bounds(o: Vec<f64>, lse: Vec<f64>, stored: &[f32]) -> Tolerance {
    let stored: Vec<f64> = stored.iter().zip(&o).map(|(&x, b)| b + crate::backend::bf16_ulp(x as f64)).collect();
    Tolerance::Bounds([o, lse, stored].concat())
}

/// The cases: every op at awkward sizes, with the tolerances for the tested backend's attention
/// `kernel` (the CPU backend's numerics are the plain kernel's: FP32 throughout).
pub fn steps(kernel: AttentionKernel) -> Vec<(String, Tolerance, Step)> {
    let mut v = Vec::new();
    let qkv = layer_tensor_id(3, LayerTensor::Qkv);
    v.push((
        "generate W_qkv shard (3 column blocks, 97 rows, every third)".into(),
        Tolerance::Exact,
        Step::Fill {
            rows: 97,
            cols: 3 * 40,
            region: Region {
                tensor: qkv,
                global_cols: 3 * 160,
                row0: 5,
                rows: 97,
                row_stride: 3,
                col_blocks: vec![(40, 40), (200, 40), (360, 40)],
            },
            init: Init::Weight { fan_in: 160 },
        },
    ));
    v.push((
        "generate gain (1 x 4096)".into(),
        Tolerance::Exact,
        Step::Fill { rows: 1, cols: 4096, region: Region::rows(16, 4096, 0, 1), init: Init::Gain },
    ));
    v.push((
        "generate input (1 token x 4096, index 2^33 + ...)".into(),
        Tolerance::Exact,
        Step::Fill { rows: 1, cols: 4096, region: Region::rows(1, 4096, 2_100_000, 1), init: Init::Uniform },
    ));
    for (i, &(m, k, n)) in [(1usize, 64usize, 96usize), (113, 37, 29), (257, 512, 1024), (1023, 256, 768)].iter().enumerate() {
        v.push((
            format!("matmul {m} x {k} x {n}"),
            Tolerance::OneUlp,
            Step::Matmul { m, k, n, x: values(10 + i as u64, m * k, 1.0), w: values(20 + i as u64, k * n, 0.1) },
        ));
    }
    for (i, &(rows, cols)) in [(1usize, 64usize), (97, 4096), (300, 200)].iter().enumerate() {
        v.push((
            format!("rms_norm {rows} x {cols}"),
            Tolerance::OneUlp,
            Step::RmsNorm { rows, cols, x: values(30 + i as u64, rows * cols, 2.0), gain: values(40 + i as u64, cols, 1.0) },
        ));
    }
    let ropes = [(1usize, 1usize, 64usize, 0usize, 1usize), (97, 4, 128, 99_903, 1), (300, 2, 64, 6250, 1), (97, 2, 128, 5, 16)];
    for (i, &(rows, heads, hd, pos0, stride)) in ropes.iter().enumerate() {
        let h = Heads::mha(heads, hd);
        let span = Span { row0: rows / 3, len: rows - rows / 3, pos0 };
        let every = if stride > 1 { format!(", every {stride}th (striped)") } else { String::new() };
        v.push((
            format!("rope {rows} rows, {heads} x {hd}, from position {pos0}{every}"),
            Tolerance::OneUlp,
            Step::Rope { rows, heads: h, x: values(50 + i as u64, rows * 2 * h.width(), 1.0), span, stride },
        ));
    }
    for (rows, f) in [(1usize, 1usize), (97, 333), (300, 1024)] {
        v.push((format!("swiglu {rows} x {f}"), Tolerance::OneUlp, Step::Swiglu { rows, f, x: values(63, rows * 2 * f, 6.0) }));
    }
    for n in [1usize, 1023, 100_003] {
        v.push((format!("gelu {n}"), Tolerance::OneUlp, Step::Gelu { x: values(60, n, 4.0) }));
        v.push((format!("add {n}"), Tolerance::OneUlp, Step::Add { x: values(61, n, 4.0), y: values(62, n, 4.0) }));
    }
    // Head dims 64 and 128 run the tensor-core flash kernel on the GPU, the others the plain one.
    // Lengths straddle its 64-row tiles; the query block starts off a tile boundary.
    // (rows, head dim, causal, query heads, K/V heads): the last three share K/V heads (GQA; one
    // K/V head for all, MQA, on the flash kernel and on the plain one).
    for (i, &(rows, hd, causal, nh, nkv)) in [
        (1usize, 64usize, true, 2usize, 2usize),
        (97, 128, true, 2, 2),
        (300, 64, false, 2, 2),
        (257, 128, false, 2, 2),
        (701, 128, true, 2, 2),
        (190, 32, true, 2, 2),
        (129, 80, false, 2, 2),
        (201, 128, true, 4, 1),
        (150, 64, false, 4, 2),
        (77, 32, true, 4, 1),
    ]
    .iter()
    .enumerate()
    {
        let heads = Heads { heads: nh, kv_heads: nkv, head_dim: hd };
        let w = heads.width();
        // At one row the diagonal twice, so that the merge into a non-empty state runs there too.
        let [first, second] = ring_calls(rows);
        let (first, second) = if rows == 1 { (second, second) } else { (first, second) };
        let kv = values(80 + i as u64, rows * 2 * heads.kv_width(), 3.0);
        let kv_label = if nkv == nh { String::new() } else { format!(" ({nkv} K/V)") };
        v.push((
            format!("attention {rows} rows, {nh} x {hd}{kv_label}, {}", if causal { "causal" } else { "full" }),
            attention_tolerance(kernel, hd),
            Step::Attention { rows, heads, q: values(70 + i as u64, rows * w, 3.0), kv, first, second, causal },
        ));
    }
    // A causal block whose keys all come after its queries merges nothing: the second call must
    // leave the first call's result untouched.
    {
        let (rows, heads) = (130usize, Heads::mha(2, 128));
        let w = heads.width();
        let q = Span { row0: 0, len: 65, pos0: 0 };
        let kv = values(88, rows * 2 * w, 3.0);
        v.push((
            "attention 65 queries, keys after them, 2 x 128, causal".into(),
            attention_tolerance(kernel, 128),
            Step::Attention {
                rows,
                heads,
                q: values(78, rows * w, 3.0),
                kv,
                first: (q, Span { row0: 0, len: 65, pos0: 0 }),
                second: (q, Span { row0: 65, len: 65, pos0: 5000 }),
                causal: true,
            },
        ));
    }
    // Decode: the split kernel at awkward cache lengths, grouped K/V 8:1 and 1:1, merged into a
    // result already held, then the partials' bits through the wire and their LSE merge.
    for (i, &(count, len, nh, nkv, hd)) in
        [(1usize, 1usize, 16usize, 2usize, 128usize), (3, 127, 4, 4, 64), (2, 4097, 16, 2, 128), (5, 1000, 8, 1, 80)].iter().enumerate()
    {
        let heads = Heads { heads: nh, kv_heads: nkv, head_dim: hd };
        let kv_label = if nkv == nh { String::new() } else { format!(" ({nkv} K/V)") };
        v.push((
            format!("decode {count} x {len} cached, {nh} x {hd}{kv_label}, then pack and merge"),
            Tolerance::Relative(2e-4),
            Step::Decode {
                heads,
                count,
                len,
                q: values(60 + i as u64, count * heads.width(), 3.0),
                kv: values(65 + i as u64, count * (len + 3) * 2 * heads.kv_width(), 3.0),
            },
        ));
    }
    v.push((
        "copy_rows 33 of 97 x 77".into(),
        Tolerance::Exact,
        Step::CopyRows { rows: 97, cols: 77, x: values(90, 97 * 77, 1.0), from: 50, to: 3, n: 33 },
    ));
    v.push((
        "copy_block 41 x 24 of 97 x 77 into 130 x 50".into(),
        Tolerance::Exact,
        Step::CopyBlock {
            src: (97, 77),
            dst: (130, 50),
            x: values(93, 97 * 77, 1.0),
            block: crate::backend::BlockCopy { src_row0: 50, src_col0: 48, dst_row0: 83, dst_col0: 13, rows: 41, cols: 24 },
        },
    ));
    v.extend(backward::steps().into_iter().map(|(name, s)| (name, backward::tolerance(&s, kernel), Step::Backward(s))));
    v
}

/// The comparison of one case: (max abs error, max relative error, pass).
pub fn compare(want: &Output, got: &Output, tol: &Tolerance) -> (f64, f64, bool) {
    let (a, b): (Vec<f64>, Vec<f64>) = match (want, got) {
        (Output::Bf16(a), Output::Bf16(b)) => (a.iter().map(|v| v.to_f64()).collect(), b.iter().map(|v| v.to_f64()).collect()),
        (Output::F32(a), Output::F32(b)) => (a.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect()),
        _ => return (f64::NAN, f64::NAN, false),
    };
    if a.len() != b.len() {
        return (f64::NAN, f64::NAN, false);
    }
    let (mut max_abs, mut max_rel, mut pass) = (0.0f64, 0.0f64, true);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // Where the reference itself is -inf (an LSE with no keys), the GPU must agree exactly.
        if x.is_infinite() && x == y {
            continue;
        }
        let d = (x - y).abs();
        // NaN never passes: every comparison with it is false.
        let ok = match tol {
            Tolerance::Exact => x == y,
            Tolerance::OneUlp => d <= crate::backend::bf16_ulp(x.abs().max(y.abs())) + 1e-30,
            Tolerance::Relative(r) => d <= r * x.abs().max(1.0),
            Tolerance::Bounds(b) => x == y || d <= b[i],
            Tolerance::FlashTwin { .. } | Tolerance::Derived { .. } => false, // resolved by `expected` before any comparison
        };
        pass &= ok;
        max_abs = if d > max_abs || d.is_nan() { d } else { max_abs };
        let rel = d / x.abs().max(1e-30);
        max_rel = if rel > max_rel || rel.is_nan() { rel } else { max_rel };
    }
    (max_abs, max_rel, pass)
}

/// Run the cases whose name `keep` accepts on `reference` and `tested` (whose attention runs
/// `kernel`); print the table; true when all pass.
pub fn run<R: Backend, T: Backend>(
    reference: &R,
    tested: &T,
    label: &str,
    kernel: AttentionKernel,
    keep: &dyn Fn(&str) -> bool,
) -> Result<bool> {
    crate::outln!("{:<58} {:>12} {:>12} {:>10}  verdict", "op", "max abs", "max rel", "tolerance");
    let mut all = true;
    for (name, tol, step) in steps(kernel).into_iter().filter(|(name, ..)| keep(name)) {
        let (want, tol) = expected(reference, &step, &tol)?;
        let got = execute(tested, &step)?;
        let (abs, rel, pass) = compare(&want, &got, &tol);
        all &= pass;
        let t = match tol {
            Tolerance::Exact => "exact".to_string(),
            Tolerance::OneUlp => "1 ulp".to_string(),
            Tolerance::Relative(r) => format!("{r:.0e} rel"),
            Tolerance::Bounds(b) => format!("{:.1e} max", b.iter().cloned().fold(0.0, f64::max)),
            Tolerance::FlashTwin { .. } => "twin".to_string(),
            Tolerance::Derived { .. } => "derived".to_string(),
        };
        crate::outln!("{name:<58} {abs:>12.3e} {rel:>12.3e} {t:>10}  {}", if pass { "PASS" } else { "FAIL" });
    }
    crate::outln!("selftest on {label}: {}", if all { "PASS" } else { "FAIL" });
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn the_selftest_itself_passes_cpu_against_cpu_and_catches_poison() {
        let (a, b) = (CpuBackend::new(), CpuBackend::new());
        assert!(run(&a, &b, "cpu vs cpu", AttentionKernel::Plain, &|_| true).unwrap());
        // An output left unwritten (still the NaN poison) fails, whatever the tolerance.
        let want = Output::Bf16(vec![bf16::ONE; 3]);
        let got = Output::Bf16(vec![bf16::ONE, POISON_BF16, bf16::ONE]);
        for tol in [Tolerance::Exact, Tolerance::OneUlp, Tolerance::Relative(1e9), Tolerance::Bounds(vec![1e9; 3])] {
            assert!(!compare(&want, &got, &tol).2, "{tol:?}");
        }
        // Against the flash kernel's twin: the twin's own output passes its bounds; the FP32
        // backend's (P unrounded) does not, nor does one value moved by 1e-3 or a NaN.
        let (_, _, step) = steps(AttentionKernel::Flash128).into_iter().find(|(n, ..)| n.starts_with("attention 97 rows")).unwrap();
        let (twin, tol) = expected(&a, &step, &Tolerance::FlashTwin { tile: 64 }).unwrap();
        assert!(matches!(tol, Tolerance::Bounds(_)));
        assert!(compare(&twin, &twin, &tol).2);
        assert!(!compare(&twin, &execute(&a, &step).unwrap(), &tol).2, "the FP32 backend is not the kernel's twin");
        let Output::F32(w) = &twin else { unreachable!() };
        let i = w.iter().position(|&x| x != 0.0).unwrap();
        for bad in [w[i] + 1e-3, f32::NAN] {
            let mut moved = w.clone();
            moved[i] = bad;
            assert!(!compare(&twin, &Output::F32(moved), &tol).2, "{bad}");
        }
        // The plain kernel's tolerance: its stored BF16 copy may round one ulp the other way
        // (the GPU sums in another order), its FP32 accumulators only within 2e-4.
        let (_, rel, step) = steps(AttentionKernel::Plain).into_iter().find(|(n, ..)| n.starts_with("attention 97 rows")).unwrap();
        let (want_plain, tol) = expected(&a, &step, &rel).unwrap();
        let Output::F32(w) = &want_plain else { unreachable!() };
        let Step::Attention { rows, heads, .. } = &step else { unreachable!() };
        let stored = rows * (heads.width() + heads.heads);
        let (j, x) = w[stored..].iter().enumerate().find(|(_, x)| x.abs() > 0.1).map(|(j, &x)| (stored + j, x)).unwrap();
        let mut flipped = w.clone();
        flipped[j] = bf16::from_bits(bf16::from_f32(x).to_bits() + 1).to_f32();
        assert!(compare(&want_plain, &Output::F32(flipped), &tol).2, "one BF16 rounding of the stored copy passes");
        let mut off = w.clone();
        off[0] += 1e-3;
        assert!(!compare(&want_plain, &Output::F32(off), &tol).2, "an FP32 accumulator 1e-3 off fails");
        // One BF16 ulp passes OneUlp and fails Exact.
        let near = Output::Bf16(vec![bf16::ONE, bf16::from_bits(bf16::ONE.to_bits() + 1), bf16::ONE]);
        assert!(compare(&want, &near, &Tolerance::OneUlp).2 && !compare(&want, &near, &Tolerance::Exact).2);
    }
}
