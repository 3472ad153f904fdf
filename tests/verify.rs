//! Every strategy against the single-rank reference, under several process counts, every layout,
//! causal and not, at awkward sequence lengths (loopback MPI, CPU backend).

mod common;
use common::{mpirun, parse_errors};

/// Awkward lengths: chunks of unequal length for most rings, spans that end mid-tile (64 rows)
/// and, for the smaller rings and tp-pp, spans of several tiles. (The 2-D strategies and the GQA
/// cases take 1000 and 1023 themselves.)
const LENGTHS: [usize; 3] = [97, 500, 511];

fn verify(np: usize, flags: &str) {
    let args: Vec<&str> = flags.split_whitespace().collect();
    let run = mpirun(np, &[&["verify", "--layers", "4"], &args[..]].concat());
    let out = run.all();
    assert_eq!(run.status, Some(0), "verify -np {np} {flags} failed:\n{out}");
    assert_eq!(out.matches("PASS").count(), 1, "one verdict, printed by rank 0:\n{out}");
    let strategy = args[1];
    let (rel, max) = parse_errors(&out, &format!("{strategy} vs reference"));
    let (tol_rel, tol_max) = parse_errors(&out, "tolerance");
    println!(
        "-np {np} {flags}: rel L2 {rel:.2e} (<= {tol_rel:.2e}), max abs {max:.2e} (<= {tol_max:.2e}), {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(rel <= tol_rel && max <= tol_max);
}

#[test]
fn tp_pp_matches_the_reference() {
    let mut i = 0;
    for (tp, pp) in [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (2, 4)] {
        for causal in ["", "--no-causal"] {
            let seq = LENGTHS[i % LENGTHS.len()];
            i += 1;
            verify(tp * pp, &format!("--strategy tp-pp --tp {tp} --pp {pp} --seq-len {seq} {causal}"));
        }
    }
}

#[test]
fn ring_matches_the_reference() {
    let mut i = 0;
    for ring in [1, 2, 3, 4, 8] {
        for layout in ["zigzag", "contiguous", "striped"] {
            for causal in ["", "--no-causal"] {
                let seq = LENGTHS[i % LENGTHS.len()];
                i += 1;
                verify(ring, &format!("--strategy ring --ring {ring} --layout {layout} --seq-len {seq} {causal}"));
            }
        }
    }
}

/// The strategies beside the seed's, by the same rule: every process count of 1 to 4 they allow,
/// each layout they take, causal and not, multi-head and grouped K/V in turn.
#[test]
fn allgather_and_ulysses_match_the_reference() {
    let mut i = 0;
    for (strategy, counts, layouts) in
        [("allgather", &[1, 2, 3, 4][..], &["zigzag", "contiguous", "striped"][..]), ("ulysses", &[1, 2, 4], &["contiguous"])]
    {
        for &np in counts {
            for layout in layouts {
                for causal in ["", "--no-causal"] {
                    let (seq, kv) = (LENGTHS[i % LENGTHS.len()], if i % 2 == 0 { "--kv-heads 2" } else { "" });
                    i += 1;
                    verify(np, &format!("--strategy {strategy} --ring {np} --layout {layout} --seq-len {seq} {causal} {kv}"));
                }
            }
        }
    }
}

#[test]
fn ring_with_one_token_per_chunk_and_micro_batches() {
    // 16 chunks of 1 token; 4 sequences in micro-batches of 2.
    verify(8, "--strategy ring --ring 8 --seq-len 16 --batch 4 --micro-batch 2");
    verify(4, "--strategy tp-pp --tp 2 --pp 2 --seq-len 33 --batch 4 --micro-batch 2");
    verify(4, "--strategy allgather --seq-len 9 --batch 4 --micro-batch 2");
    verify(4, "--strategy ring --layout striped --seq-len 4 --batch 4 --micro-batch 2");
    verify(4, "--strategy ulysses --seq-len 5 --batch 4 --micro-batch 2 --kv-heads 1");
}

#[test]
fn ring_and_tp_pp_agree_with_each_other() {
    let dir = std::env::temp_dir().join(format!("ringbench-agree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ring_h5, tp_h5) = (dir.join("ring.h5"), dir.join("tp-pp.h5"));
    let flags = "--layers 4 --seq-len 1000 --batch 2";
    let ring = mpirun(
        4,
        &[&["verify", "--strategy", "ring", "--save-output", ring_h5.to_str().unwrap()], &flags.split_whitespace().collect::<Vec<_>>()[..]]
            .concat(),
    );
    assert_eq!(ring.status, Some(0), "{}", ring.all());
    let tp = mpirun(
        4,
        &[
            &["verify", "--strategy", "tp-pp", "--pp", "2", "--save-output", tp_h5.to_str().unwrap()],
            &flags.split_whitespace().collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    assert_eq!(tp.status, Some(0), "{}", tp.all());
    let read = |p: &std::path::Path| -> Vec<f64> {
        let ds = hdf5::File::open(p).unwrap().dataset("output").unwrap();
        assert_eq!(ds.shape(), vec![2, 1000, 64]);
        ds.read_raw::<f32>().unwrap().into_iter().map(f64::from).collect()
    };
    let (a, b) = (read(&ring_h5), read(&tp_h5));
    let d = ringbench::harness::Diff::between(&a, &b);
    let (tol_rel, tol_max) = parse_errors(&ring.stdout, "tolerance");
    println!("ring vs tp-pp: rel L2 {:.2e} (<= {tol_rel:.2e}), max abs {:.2e} (<= {tol_max:.2e})", d.rel_l2, d.max_abs);
    assert!(d.rel_l2 <= tol_rel && d.max_abs <= tol_max);
    // The outputs are real hidden states, not a constant.
    assert!(a.iter().any(|&v| v > 0.5) && a.iter().any(|&v| v < -0.5));

    // An existing output file is refused before any work, and kept.
    let before = std::fs::read(&ring_h5).unwrap();
    let again = mpirun(4, &["verify", "--strategy", "ring", "--save-output", ring_h5.to_str().unwrap()]);
    assert_eq!(again.status, Some(2), "{}", again.all());
    assert!(again.stderr.contains("--save-output") && again.stderr.contains("exists"), "{}", again.all());
    assert!(!again.stdout.contains("PASS"));
    assert_eq!(std::fs::read(&ring_h5).unwrap(), before);

    let nowhere = dir.join("no-such-dir").join("out.h5");
    let run = mpirun(2, &["verify", "--strategy", "ring", "--save-output", nowhere.to_str().unwrap()]);
    assert_eq!(run.status, Some(2), "{}", run.all());
    assert!(run.stderr.contains("no-such-dir does not exist"), "{}", run.all());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Grouped K/V heads (kv_heads = heads, heads / 2, 1) and the gated MLP, on every strategy, 1 to
/// 4 ranks: tp dividing the K/V heads, and tp above them (each K/V head replicated on tp /
/// kv_heads ranks). The tiny preset has 4 heads.
#[test]
fn gqa_and_swiglu_match_the_reference_on_every_strategy() {
    let cases = [
        (1, "--strategy reference --kv-heads 1 --mlp-act swiglu --seq-len 97"),
        (1, "--strategy reference --kv-heads 2 --seq-len 101"),
        (3, "--strategy ring --ring 3 --kv-heads 1 --mlp-act swiglu --seq-len 1023"),
        (4, "--strategy ring --ring 4 --kv-heads 2 --mlp-act swiglu --layout contiguous --seq-len 97 --no-causal"),
        (2, "--strategy ring --ring 2 --kv-heads 4 --mlp-act swiglu --seq-len 101"),
        (2, "--strategy tp-pp --tp 2 --kv-heads 2 --mlp-act swiglu --seq-len 1000"),
        (4, "--strategy tp-pp --tp 4 --kv-heads 2 --seq-len 97"),
        (4, "--strategy tp-pp --tp 2 --pp 2 --kv-heads 1 --mlp-act swiglu --seq-len 101 --no-causal"),
        (3, "--strategy allgather --ring 3 --kv-heads 1 --mlp-act swiglu --layout striped --seq-len 1000"),
        (4, "--strategy ulysses --ring 4 --kv-heads 1 --mlp-act swiglu --seq-len 101"),
        (4, "--strategy ring --ring 4 --kv-heads 2 --mlp-act swiglu --layout striped --seq-len 1023"),
    ];
    for (np, flags) in cases {
        verify(np, flags);
    }
}

/// The 2-D strategies: on 4 ranks (ulysses 2 x ring 2, tp 2 x cp 2) and on 6 (3 x 2 and 2 x 3,
/// with 6 heads so that both splits divide them), grouped K/V throughout (split, and replicated
/// where the inner group exceeds the K/V heads), every layout, micro-batches.
#[test]
fn usp_and_tp_cp_match_the_reference() {
    let six = "--heads 6 --d-model 96 --mlp 192";
    let cases = [
        (4, "--strategy usp --ulysses 2 --ring 2 --kv-heads 2 --seq-len 97".to_string()),
        (4, "--strategy tp-cp --tp 2 --cp 2 --kv-heads 1 --seq-len 1023 --no-causal".into()),
        (6, format!("--strategy usp --ulysses 3 --ring 2 {six} --kv-heads 3 --seq-len 1000")),
        (6, format!("--strategy usp --ulysses 2 --ring 3 {six} --kv-heads 2 --layout contiguous --seq-len 97 --no-causal")),
        (6, format!("--strategy tp-cp --tp 3 --cp 2 {six} --kv-heads 1 --mlp-act swiglu --seq-len 1023")),
        (6, format!("--strategy tp-cp --tp 2 --cp 3 {six} --kv-heads 2 --layout striped --seq-len 101 --no-causal")),
        (4, "--strategy usp --ulysses 2 --ring 2 --seq-len 9 --batch 4 --micro-batch 2 --kv-heads 1 --layout striped".into()),
        (4, "--strategy tp-cp --tp 2 --cp 2 --seq-len 17 --batch 4 --micro-batch 2 --kv-heads 2 --layout contiguous".into()),
    ];
    for (np, flags) in cases {
        verify(np, &flags);
    }
}

/// The double ring (issue 29) at awkward lengths: P, W = 4, 2; 6, 2; 6, 3; 8, 4 (oversubscribed),
/// every layout in turn, grouped K/V heads on some, causal and not; and with one window (W = P)
/// it is the ring, bit for bit: the same blocks attended in the same order.
#[test]
fn double_ring_matches_the_reference_and_is_the_ring_with_one_window() {
    let cases = [
        (4, 2, "zigzag", 97, ""),
        (6, 2, "contiguous", 500, "--kv-heads 2"),
        (6, 3, "striped", 511, "--no-causal"),
        (8, 4, "zigzag", 97, "--kv-heads 1"),
    ];
    for (p, w, layout, seq, extra) in cases {
        verify(p, &format!("--strategy double-ring --ring {p} --window {w} --layout {layout} --seq-len {seq} {extra}"));
    }
    let dir = common::temp_root("double-ring-bits");
    let out = |name: &str, flags: &str| -> Vec<f32> {
        let h5 = dir.join(format!("{name}.h5"));
        let args: Vec<&str> = flags.split_whitespace().collect();
        let run =
            mpirun(4, &[&["verify", "--save-output", h5.to_str().unwrap(), "--seq-len", "203", "--kv-heads", "2"][..], &args[..]].concat());
        assert_eq!(run.status, Some(0), "{}", run.all());
        hdf5::File::open(&h5).unwrap().dataset("output").unwrap().read_raw::<f32>().unwrap()
    };
    let ring = out("ring", "--strategy ring");
    assert_eq!(out("one-window", "--strategy double-ring --window 4"), ring, "W = P is the ring");
    assert_eq!(out("windows-of-one", "--strategy double-ring --window 1"), ring, "W = 1 is the ring too: its outer ring");
    std::fs::remove_dir_all(&dir).ok();
}

/// Decode on every strategy at awkward sizes (prompts of 61, 97 and 200 tokens, 1 to 9 decode
/// tokens, 3 sequences over up to 6 query owners, grouped K/V with SwiGLU) on 2, 3, 4 and 6
/// ranks: the prompt's hidden states and every decode step's within the tolerance of the
/// reference, whose decode is itself checked against the FP64 oracle's prefill of the prompt
/// and the decode rows. One decode token is the last row of a prefill of S + 1.
#[test]
fn decode_matches_the_reference_and_the_oracle_on_every_strategy() {
    let model = "--layers 2 --d-model 48 --heads 6 --mlp 96 --mlp-act swiglu --batch 3";
    let cases: [(usize, &str); 19] = [
        (2, "--strategy ring --layout striped"),
        (3, "--strategy ring"),
        (6, "--strategy ring --layout contiguous"),
        (2, "--strategy allgather"),
        (4, "--strategy allgather --layout striped"),
        (6, "--strategy allgather"),
        (2, "--strategy ulysses"),
        (3, "--strategy ulysses --kv-heads 3"),
        (6, "--strategy ulysses"),
        (4, "--strategy usp --ulysses 2 --ring 2"),
        (6, "--strategy usp --ulysses 3 --ring 2 --kv-heads 3"),
        (6, "--strategy usp --ulysses 2 --ring 3 --layout striped"),
        (4, "--strategy tp-cp --tp 2 --cp 2"),
        (6, "--strategy tp-cp --tp 3 --cp 2 --kv-heads 3"),
        (3, "--strategy tp-pp --tp 3 --pp 1 --kv-heads 3"),
        (4, "--strategy tp-pp --tp 2 --pp 2"),
        (6, "--strategy tp-pp --tp 3 --pp 2 --kv-heads 3 --micro-batch 1"),
        (4, "--strategy double-ring --window 2"),
        (6, "--strategy double-ring --window 3"),
    ];
    for (i, (np, flags)) in cases.iter().enumerate() {
        let (seq, tokens) = ([61, 97, 200][i % 3], [1, 3, 5, 9][i % 4]);
        let kv = if flags.contains("--kv-heads") { "" } else { "--kv-heads 2" };
        let flags = format!("{flags} {kv} {model} --seq-len {seq} --decode-tokens {tokens}");
        let args: Vec<&str> = flags.split_whitespace().collect();
        let run = mpirun(*np, &[&["verify"], &args[..]].concat());
        let out = run.all();
        assert_eq!(run.status, Some(0), "verify -np {np} {flags} failed:\n{out}");
        assert!(out.contains(&format!("{tokens} decode steps (the oracle: a prefill")), "{out}");
        // Two comparisons (the prompt, the decode steps), each within its own tolerance.
        let strategy = args[1];
        let rows = |label: &str| -> Vec<(f64, f64)> {
            out.lines()
                .filter(|l| l.trim_start().starts_with(label))
                .map(|l| {
                    let n: Vec<f64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                    (n[n.len() - 2], n[n.len() - 1])
                })
                .collect()
        };
        let (got, tol) = (rows(&format!("{strategy} vs reference")), rows("tolerance"));
        assert_eq!((got.len(), tol.len()), (2, 2), "{out}");
        for ((rel, max), (tol_rel, tol_max)) in got.iter().zip(&tol) {
            assert!(rel <= tol_rel && max <= tol_max, "{out}");
        }
        assert_eq!(out.matches("PASS").count(), 1, "{out}");
        println!("-np {np} {flags}: decode rel L2 {:.2e} (<= {:.2e}), {:.1} s", got[1].0, tol[1].0, run.elapsed.as_secs_f64());
    }
}

/// A training step's gradients (issue 30): dX and every weight gradient of every layer, gathered
/// whole on rank 0, within tolerance of the reference's and of the FP64 oracle's backward, for
/// every strategy on 2, 3, 4 and 6 ranks at awkward lengths (61, 97, 130), grouped K/V (copied
/// over TP ranks too) with SwiGLU, causal and not, every layout, recomputing once; and
/// `--save-output` writes them in the whole tensors' shapes.
#[test]
fn training_gradients_match_the_reference_and_the_oracle() {
    let dir = std::env::temp_dir().join(format!("ringbench-verify-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let h5 = dir.join("grads.h5");
    let _ = std::fs::remove_file(&h5);
    let cases = [
        (1, "--strategy reference --seq-len 97 --no-causal"),
        (3, "--strategy ring --seq-len 61 --kv-heads 2 --mlp-act swiglu"),
        (4, "--strategy ring --seq-len 130 --layout striped --no-causal"),
        (2, "--strategy ring --seq-len 97 --layout contiguous --kv-heads 2"),
        (3, "--strategy allgather --seq-len 130 --no-causal --kv-heads 2 --mlp-act swiglu"),
        (2, "--strategy ulysses --seq-len 97 --kv-heads 1"),
        (4, "--strategy usp --ulysses 2 --ring 2 --seq-len 61 --kv-heads 2 --mlp-act swiglu"),
        (6, "--strategy tp-cp --tp 2 --cp 3 --seq-len 97 --no-causal"),
        (4, "--strategy tp-pp --tp 2 --pp 2 --seq-len 130 --kv-heads 1 --recompute"),
        (6, "--strategy double-ring --window 3 --seq-len 61 --kv-heads 2"),
    ];
    for (i, (np, flags)) in cases.into_iter().enumerate() {
        let mut args: Vec<&str> = vec!["verify", "--train", "--layers", "2"];
        args.extend(flags.split_whitespace());
        let save = h5.to_str().unwrap();
        if i == 1 {
            args.extend(["--save-output", save]);
        }
        let run = mpirun(np, &args);
        let out = run.all();
        assert_eq!(run.status, Some(0), "verify --train -np {np} {flags} failed:\n{out}");
        assert_eq!(out.matches("PASS").count(), 1, "one verdict:\n{out}");
        // dX, and 6 weight gradients in each of 2 layers, each judged.
        assert!(out.contains("gradient of the input hidden states"), "{out}");
        assert_eq!(out.matches(" ok\n").count(), 12, "every weight gradient judged and passed:\n{out}");
        println!("-np {np} {flags}: {:.1} s", run.elapsed.as_secs_f64());
    }
    let file = hdf5::File::open(&h5).unwrap();
    assert_eq!(file.dataset("grad/input").unwrap().shape(), vec![2, 61, 64]);
    // tiny: d 64, 4 heads of 16, 2 K/V heads: W_qkv [64, 64 + 2 x 32]; SwiGLU's W_up [64, 2 x 256].
    assert_eq!(file.dataset("grad/layer1/w_qkv").unwrap().shape(), vec![64, 128]);
    assert_eq!(file.dataset("grad/layer0/w_up").unwrap().shape(), vec![64, 512]);
    assert_eq!(file.dataset("grad/layer0/norm1").unwrap().shape(), vec![64]);
    let w_down = file.dataset("grad/layer1/w_down").unwrap().read_raw::<f32>().unwrap();
    assert!(w_down.iter().all(|v| v.is_finite()) && w_down.iter().any(|&v| v != 0.0));
    drop(file);
    std::fs::remove_dir_all(&dir).ok();
}
