//! The CUDA kernels' own sources, compiled with g++ against the SIMT stand-in in tests/simt
//! (threads for GPU threads, barriers for warp collectives, the PTX ISA's fragment layouts for
//! ldmatrix and mma.sync, cp.async copies landing late or early; for the wgmma kernel, wgmma with
//! its shared-memory descriptors and swizzles, mbarriers and TMA bulk tensor copies, each block's
//! threads as fibers) and run on the CPU, so CI checks
//! their indexing, masking, reductions and merges without a GPU: the attention kernels (forward
//! and backward) against FP64, the flash kernel also within a few BF16 ulps of its CPU twin
//! (src/backend/flash_twin.rs, P rounded to BF16 as the kernel rounds it), the generator against docs/design.md's test vectors, the element-wise kernels
//! against their formulas. What this cannot check (the real instructions' rounding and speed, the
//! backend's launch arguments) is left to `selftest` on a GPU.

use half::bf16;
use ringbench::backend::{flash_twin, Heads, Span};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `tests/simt/<name>.cpp` with g++; the executable's path.
fn build(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::temp_dir().join(format!("ringbench-simt-{name}-{}", std::process::id()));
    // No FMA contraction: the kernels' FP32 arithmetic is then exactly IEEE's, as on the GPU.
    let build = Command::new("g++")
        .args(["-std=c++20", "-O2", "-pthread", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-I"])
        .arg(root.join("tests/simt"))
        .arg(root.join(format!("tests/simt/{name}.cpp")))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("g++ is installed (scripts/install-deps.sh)");
    let log = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "g++ failed on {name}.cpp:\n{log}");
    assert!(!log.contains("warning"), "{name}.cpp compiles without warnings:\n{log}");
    exe
}

/// Run the program (with `env`); its stdout, after checking it passed with `cases` passing lines.
fn run(exe: &Path, env: &[(&str, &str)], verdict: &str, cases: usize) -> String {
    let run = Command::new(exe).envs(env.iter().copied()).output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{env:?}:\n{out}");
    assert!(run.status.success() && out.contains(&format!("{verdict}: PASS")), "{env:?}:\n{out}");
    assert_eq!(out.matches(": PASS").count(), cases + 1, "{env:?}: {cases} cases and the verdict:\n{out}");
    out
}

/// One flash case as attention_check.cpp dumps it: the inputs and the kernel's outputs.
struct Dumped {
    heads: Heads,
    rows: usize,
    spans: [Span; 3],
    causal: bool,
    bm: i32,
    /// The twin's key tile: the kernel's keys per tile.
    tile: usize,
    q: Vec<bf16>,
    kv: Vec<bf16>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

fn read_dump(path: &Path) -> Dumped {
    let b = std::fs::read(path).unwrap();
    let i32_at = |k: usize| i32::from_le_bytes(b[4 * k..4 * k + 4].try_into().unwrap());
    let h: Vec<i32> = (0..16).map(i32_at).collect();
    let heads = Heads { heads: h[1] as usize, kv_heads: h[14] as usize, head_dim: h[0] as usize };
    let (rows, w) = (h[2] as usize, heads.width());
    let span = |k: usize| Span { row0: h[k] as usize, len: h[k + 1] as usize, pos0: h[k + 2] as usize };
    let mut at = 64;
    let mut take = |n: usize, size: usize| {
        let s = &b[at..at + n * size];
        at += n * size;
        s.to_vec()
    };
    let bits = |v: Vec<u8>| v.chunks(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect::<Vec<_>>();
    let floats = |v: Vec<u8>| v.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
    let (q, kv) = (bits(take(rows * w, 2)), bits(take(rows * 2 * heads.kv_width(), 2)));
    let (o, lse) = (floats(take(rows * w, 4)), floats(take(rows * heads.heads, 4)));
    Dumped { heads, rows, spans: [span(3), span(6), span(9)], causal: h[12] != 0, bm: h[13], tile: h[15] as usize, q, kv, o, lse }
}

/// Build and run an attention check program in both copy modes, expecting `cases` passing lines,
/// then hold each of its `flash` dumped flash cases to the kernel's CPU twin, whose key tile must
/// be `tile`. Deferred copies show reads before a wait (for the wgmma kernel, also wgmma results
/// read before the thread's wgmma.wait_group); eager ones show overwrites before a barrier (a
/// stage refilled before every consumer released it).
fn attention_check(name: &str, verdict: &str, cases: usize, flash: usize, tile: usize) {
    let exe = build(name);
    let dump = std::env::temp_dir().join(format!("ringbench-simt-{name}-dump-{}", std::process::id()));
    for mode in ["deferred", "eager"] {
        let prefix = format!("{}-{mode}", dump.display());
        run(&exe, &[("SIMT_COPY", mode), ("SIMT_DUMP", &prefix)], verdict, cases);
        // And the flash kernel within a few BF16 ulps of its CPU twin (P rounded as it rounds it).
        for n in 0..flash {
            let path = PathBuf::from(format!("{prefix}-{n}.bin"));
            let d = read_dump(&path);
            assert_eq!(d.tile, tile, "{name}: the twin's key tile");
            flash_within_its_twin(&d, &format!("{name} {mode} case {n}"));
            std::fs::remove_file(&path).unwrap();
        }
    }
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn the_attention_kernel_sources_match_fp64_attention_on_the_simt_emulation() {
    // Seven flash cases at both block shapes (two with grouped K/V heads), and four plain ones.
    attention_check("attention_check", "attention kernels on the SIMT emulation", 18, 14, flash_twin::MMA_SYNC_TILE);
}

#[test]
fn the_wgmma_kernel_source_matches_fp64_attention_and_its_twin_on_the_simt_emulation() {
    // Eight cases, d64 and d128, two with grouped K/V heads, two of three key tiles.
    attention_check("wgmma_check", "wgmma flash kernel on the SIMT emulation", 8, 8, flash_twin::WGMMA_TILE);
}

/// The twin on the case's inputs (accumulators set up as attention_check.cpp sets them), and
/// every query row's o and LSE within the twin's bound of the kernel's.
fn flash_within_its_twin(d: &Dumped, what: &str) {
    let (heads, w) = (d.heads, d.heads.width());
    let [qs, first, second] = d.spans;
    let (mut o, mut lse) = (vec![7.25f32; d.rows * w], vec![7.25f32; d.rows * heads.heads]);
    for r in qs.row0..qs.row0 + qs.len {
        o[r * w..(r + 1) * w].fill(0.0);
        lse[r * heads.heads..(r + 1) * heads.heads].fill(f32::NEG_INFINITY);
    }
    let mut bound = vec![flash_twin::Bound::default(); qs.len * heads.heads];
    for ks in [first, second] {
        for (b, x) in bound.iter_mut().zip(flash_twin::attention(&d.q, &d.kv, heads, qs, ks, d.causal, d.tile, &mut o, &mut lse)) {
            (b.o, b.lse) = (b.o + x.o, b.lse + x.lse);
        }
    }
    let (mut worst_o, mut worst_ratio, mut worst_lse) = (0f64, 0f64, 0f64);
    for i in 0..qs.len {
        for h in 0..heads.heads {
            let (r, b) = (qs.row0 + i, bound[i * heads.heads + h]);
            let (got, want) = (d.lse[r * heads.heads + h], lse[r * heads.heads + h]);
            let le = if got == want { 0.0 } else { (got as f64 - want as f64).abs() };
            assert!(le <= b.lse, "{what} (m{}): row {r} head {h}: lse {got} vs twin {want}, bound {:.2e}", d.bm, b.lse);
            worst_lse = worst_lse.max(le);
            for e in 0..heads.head_dim {
                let k = r * w + h * heads.head_dim + e;
                let err = (d.o[k] as f64 - o[k] as f64).abs();
                assert!(
                    err <= b.o,
                    "{what} (m{}): row {r} head {h} o[{e}] = {} vs twin {}: {err:.2e} beyond the bound {:.2e}",
                    d.bm,
                    d.o[k],
                    o[k],
                    b.o
                );
                worst_o = worst_o.max(err);
                worst_ratio = worst_ratio.max(err / b.o.max(1e-30));
            }
        }
    }
    println!(
        "{what} (m{}): flash vs its CPU twin: o max abs {worst_o:.2e} (at most {:.0}% of its bound), lse max abs {worst_lse:.2e}",
        d.bm,
        100.0 * worst_ratio
    );
}

#[test]
fn the_generator_and_elementwise_kernel_sources_match_design_on_the_simt_emulation() {
    let exe = build("elementwise_check");
    run(&exe, &[], "element-wise kernels on the SIMT emulation", 10);
    let _ = std::fs::remove_file(&exe);
}

/// The decode kernels' sources (kernels/decode_attention.cu, and the merge of partial results in
/// elementwise.cu) against FP64 attention on the SIMT stand-in (tests/simt/decode_check.cpp: a
/// cache of 1, 127 and 4097 keys, GQA 8:1 and 1:1, accumulators already holding a result), then
/// each case within FP32 rounding of the kernel's CPU twin (src/backend/decode_twin.rs).
#[test]
fn the_decode_kernel_sources_match_fp64_attention_and_their_twin_on_the_simt_emulation() {
    use ringbench::backend::{decode_twin, DecodeSpan};
    let exe = build("decode_check");
    let dump = std::env::temp_dir().join(format!("ringbench-simt-decode-dump-{}", std::process::id()));
    run(&exe, &[("SIMT_DUMP", &dump.display().to_string())], "decode kernels on the SIMT emulation", 5);
    for n in 0..4 {
        let path = PathBuf::from(format!("{}-{n}.bin", dump.display()));
        let b = std::fs::read(&path).unwrap();
        let h: Vec<usize> = (0..12).map(|k| i32::from_le_bytes(b[4 * k..4 * k + 4].try_into().unwrap()) as usize).collect();
        let heads = Heads { heads: h[0], kv_heads: h[1], head_dim: h[2] };
        let span = DecodeSpan { q_row0: h[3], count: h[4], seq0: h[5], stride: h[6], len: h[7] };
        let (q_rows, kv_rows) = (h[8], h[9]);
        let mut at = 48;
        let mut take = |n: usize, size: usize| {
            let s = b[at..at + n * size].to_vec();
            at += n * size;
            s
        };
        let bits = |v: Vec<u8>| v.chunks(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect::<Vec<_>>();
        let floats = |v: Vec<u8>| v.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let (w, kvw) = (heads.width(), heads.kv_width());
        let (q, kv) = (bits(take(q_rows * w, 2)), bits(take(kv_rows * 2 * kvw, 2)));
        let (mut o, mut lse) = (floats(take(q_rows * w, 4)), floats(take(q_rows * heads.heads, 4)));
        let (got_o, got_lse) = (floats(take(q_rows * w, 4)), floats(take(q_rows * heads.heads, 4)));
        decode_twin::attention(&q, &kv, heads, span, &mut o, &mut lse);
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0f32, f32::max);
        let (eo, el) = (worst(&got_o, &o), worst(&got_lse, &lse));
        println!("decode case {n} ({span:?}): kernel vs its CPU twin: o max abs {eo:.2e}, lse max abs {el:.2e}");
        // The same FP32 operations in the same order: equal but for the exponentials' last bits.
        assert!(eo <= 1e-6 && el <= 1e-6, "decode case {n}: o {eo:e}, lse {el:e} from the twin");
        std::fs::remove_file(&path).unwrap();
    }
    let _ = std::fs::remove_file(&exe);
}

/// The backward kernels' sources (kernels/flash_backward.cu, attention_backward.cu, backward.cu)
/// against FP64 on the SIMT stand-in (tests/simt/backward_check.cpp: 8 flash and 4 plain
/// attention cases, two calls into the same accumulators as a ring's steps make them, then RMSNorm,
/// GELU, SwiGLU, delta and the FP32 add), copies landing late and early; then each attention case
/// held to the kernel's CPU twin (CpuBackend::attention_backward, src/backend/cpu_backward.rs, FP32
/// without rounding P or dS) within the per-element bound the check derived from BF16 rounding.
#[test]
fn the_backward_kernel_sources_match_fp64_and_their_cpu_twin_on_the_simt_emulation() {
    use ringbench::backend::{cpu::CpuBackend, Backend, Backward};
    let exe = build("backward_check");
    let dump = std::env::temp_dir().join(format!("ringbench-simt-backward-dump-{}", std::process::id()));
    for mode in ["deferred", "eager"] {
        let prefix = format!("{}-{mode}", dump.display());
        run(&exe, &[("SIMT_COPY", mode), ("SIMT_DUMP", &prefix)], "backward kernels on the SIMT emulation", 17);
        for n in 0..12 {
            let path = PathBuf::from(format!("{prefix}-{n}.bin"));
            let b = std::fs::read(&path).unwrap();
            let h: Vec<usize> = (0..16).map(|k| i32::from_le_bytes(b[4 * k..4 * k + 4].try_into().unwrap()) as usize).collect();
            let heads = Heads { heads: h[1], kv_heads: h[14], head_dim: h[0] };
            let (rows, w, kvw2) = (h[2], heads.width(), 2 * heads.kv_width());
            let span = |k: usize| Span { row0: h[k], len: h[k + 1], pos0: h[k + 2] };
            let (qs, spans, causal) = (span(3), [span(6), span(9)], h[12] != 0);
            let mut at = 64;
            let mut take = |n: usize, size: usize| {
                let s = b[at..at + n * size].to_vec();
                at += n * size;
                s
            };
            let bits = |v: Vec<u8>| v.chunks(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect::<Vec<_>>();
            let floats = |v: Vec<u8>| v.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
            let (q, kv, d_o) = (bits(take(rows * w, 2)), bits(take(rows * kvw2, 2)), bits(take(rows * w, 2)));
            let (lse, delta) = (floats(take(rows * heads.heads, 4)), floats(take(rows * heads.heads, 4)));
            let (dq0, dkv0) = (floats(take(rows * w, 4)), floats(take(rows * kvw2, 4)));
            let (got_dq, got_dkv) = (floats(take(rows * w, 4)), floats(take(rows * kvw2, 4)));
            let (bound_dq, bound_dkv) = (floats(take(rows * w, 4)), floats(take(rows * kvw2, 4)));
            // The twin on the same inputs, two calls into the same accumulators.
            let be = CpuBackend::new();
            let act = |v: &[bf16], cols: usize| {
                let mut a = be.alloc_act(rows, cols).unwrap();
                be.upload(&mut a, v).unwrap();
                a
            };
            let acc = |v: &[f32], cols: usize| {
                let mut a = be.alloc_acc(rows, cols).unwrap();
                be.upload_acc(&mut a, v).unwrap();
                a
            };
            let (q, kv, d_o) = (act(&q, w), act(&kv, kvw2), act(&d_o, w));
            let (lse, delta) = (acc(&lse, heads.heads), acc(&delta, heads.heads));
            let (mut dq, mut dkv) = (acc(&dq0, w), acc(&dkv0, kvw2));
            for ks in spans {
                be.attention_backward(&q, &kv, heads, qs, ks, causal, &d_o, &lse, &delta, &mut dq, &mut dkv).unwrap();
            }
            let (twin_dq, twin_dkv) = (be.download_acc(&dq).unwrap(), be.download_acc(&dkv).unwrap());
            let mut worst = 0f64;
            for (what, got, twin, bound) in [("dq", &got_dq, &twin_dq, &bound_dq), ("dkv", &got_dkv, &twin_dkv, &bound_dkv)] {
                for (i, ((g, t), b)) in got.iter().zip(twin.iter()).zip(bound.iter()).enumerate() {
                    let err = (*g as f64 - *t as f64).abs();
                    // Both within the bound of FP64's, so within twice it of each other.
                    assert!(err <= 2.0 * *b as f64, "{mode} case {n} {what}[{i}]: kernel {g} vs twin {t}, bound {b:e}");
                    worst = worst.max(err / (2.0 * *b as f64).max(1e-30));
                }
            }
            println!(
                "{mode} case {n} ({heads:?}, flash {}): kernel vs its CPU twin within {:.0}% of twice the bound",
                h[13],
                100.0 * worst
            );
            std::fs::remove_file(&path).unwrap();
        }
    }
    let _ = std::fs::remove_file(&exe);
}
