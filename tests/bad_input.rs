//! Bad input stops before any work, on 1 rank and on 4, with one line naming the flag, what was
//! given and what is needed, printed once; never a panic, never a hang.

mod common;
use common::mpirun;

const CASES: [(&str, &str); 15] = [
    ("--strategy ring --comm-timeout 0", "--comm-timeout 0: must be a positive number of seconds"),
    ("--strategy tp-pp --tp 0", "--tp 0: must be at least 1"),
    ("--strategy tp-pp --tp 2 --pp 3 --layers 6", "--tp 2 x --pp 3 = 6 ranks, but the job has"),
    ("--strategy ring --ring 5", "--ring 5: the job has"),
    ("--strategy tp-pp --tp 3 --heads 4 --pp 1", "--heads 4 must be divisible"),
    ("--strategy tp-pp --tp 1 --pp 1 --layers 0", "--layers 0: must be at least 1"),
    ("--strategy ring --d-model 100 --heads 3", "--d-model 100: must be divisible by --heads 3"),
    ("--strategy ring --d-model 60 --heads 4", "head dim 15 is odd"),
    ("--strategy ring --seq-len 1", "--seq-len 1: a zigzag ring of"),
    ("--strategy ring --batch 3 --micro-batch 2", "--micro-batch 2: must divide --batch 3"),
    ("--strategy ring --iters 0", "--iters 0: must be at least 1"),
    ("--strategy ring --mlp 0", "--mlp 0: must be at least 1"),
    ("--strategy ring --decode-tokens 0", "--decode-tokens 0: must be at least 1"),
    ("--strategy tp-pp --decode-tokens 4 --no-causal", "--decode-tokens 4 with --no-causal: decode generates tokens one after another"),
    ("--strategy ring --train --decode-tokens 2", "--train with --decode-tokens 2: a training step has no decode steps"),
];

#[test]
fn each_bad_input_fails_fast_with_its_message() {
    for np in [1, 4] {
        for (flags, want) in CASES {
            for cmd in ["run", "verify"] {
                let mut args = vec![cmd];
                args.extend(flags.split_whitespace());
                let run = mpirun(np, &args);
                let out = run.all();
                assert_ne!(run.status, Some(0), "{cmd} -np {np} {flags} was accepted:\n{out}");
                assert!(out.contains(want), "{cmd} -np {np} {flags}: want {want:?} in:\n{out}");
                assert_eq!(out.matches("ringbench: error:").count(), 1, "printed once, by rank 0:\n{out}");
                assert!(!out.contains("panic"), "{out}");
                assert!(run.elapsed.as_secs() < 20, "{cmd} -np {np} {flags} took {:?}", run.elapsed);
            }
        }
    }
}

#[test]
fn combinations_that_only_fail_together_are_refused() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["verify", "--strategy", "ring", "--seq-len", "200000", "--batch", "64"],
            "verify checks small configs: its FP64 oracle on rank 0 would compute",
        ),
        (&["run", "--strategy", "all", "--tp", "2", "--pp", "2", "--ring", "2"], "--ring 2: the job has 4 ranks"),
        (
            &["verify", "--strategy", "all", "--pp", "2", "--save-output", "x.h5"],
            "--save-output takes one strategy's output; --strategy all runs two",
        ),
        (&["run", "--strategy", "all", "--heads", "6", "--d-model", "96", "--pp", "1"], "--tp 4: --heads 6 must be divisible"),
        (&["run", "--strategy", "ring", "--kv-heads", "3"], "--kv-heads 3: --heads 4 must be a multiple of it"),
        (
            &["verify", "--strategy", "tp-pp", "--tp", "4", "--heads", "12", "--d-model", "96", "--kv-heads", "6", "--mlp", "240"],
            "--tp 4 with --kv-heads 6: the tensor-parallel size must divide the K/V heads",
        ),
    ];
    for (args, want) in cases {
        let run = mpirun(4, args);
        assert_eq!(run.status, Some(2), "{args:?}:\n{}", run.all());
        assert_eq!(run.all().matches(want).count(), 1, "{args:?}: want {want:?} once in:\n{}", run.all());
    }
}

#[test]
fn a_malformed_flag_is_reported_once() {
    let run = mpirun(4, &["run", "--strategy", "ring", "--ring", "four"]);
    assert_eq!(run.status, Some(2), "{}", run.all());
    assert_eq!(run.all().matches("invalid value 'four' for '--ring <N>'").count(), 1, "{}", run.all());
    let run = mpirun(2, &["run", "--strategy", "ring", "--preset", "huge"]);
    assert_ne!(run.status, Some(0));
    assert_eq!(run.all().matches("invalid value 'huge'").count(), 1, "{}", run.all());
}

/// Sizes that would exhaust memory or time are refused before any allocation or directory, with
/// the flag and the limit named, and `plan`'s cost does not grow with the sequence length.
#[test]
fn resource_limits_are_refused_before_any_work() {
    let root = common::temp_root("limits");
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let out = root.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["run", "--strategy", "reference", "--decode-tokens", "2000000", "--out", out, "--run-id", "x"],
            "--decode-tokens 2000000: at most 1048576",
        ),
        (
            // A cache that no host holds, refused by its size before any allocation.
            &[
                "run",
                "--strategy",
                "reference",
                "--decode-tokens",
                "1000000",
                "--seq-len",
                "1000000",
                "--batch",
                "4096",
                "--out",
                out,
                "--run-id",
                "x",
            ],
            "bytes) for 1000000 decode steps",
        ),
        (
            &["run", "--strategy", "reference", "--iters", "1000000000", "--out", out, "--run-id", "x"],
            "--iters 1000000000: at most 1000000",
        ),
        (
            &["run", "--strategy", "reference", "--warmup", "1000000000", "--out", out, "--run-id", "x"],
            "--warmup 1000000000: at most 1000000",
        ),
        (
            &["run", "--strategy", "reference", "--comm-timeout", "1e20", "--out", out, "--run-id", "x"],
            "--comm-timeout 100000000000000000000: at most",
        ),
        (&["bench", "attention", "--backend", "cpu", "--queries", "100000000", "--keys", "6250"], "the buffers need"),
        (
            &["plan", "--strategy", "ring", "--ring", "16", "--seq-len", "18446744073709551615"],
            "--seq-len 18446744073709551615: at most 1099511627776",
        ),
        (&["plan", "--strategy", "ring", "--ring", "16", "--batch", "16777216", "--seq-len", "1099511627776"], "at most 2^62 are accepted"),
    ];
    for (args, want) in cases {
        let t0 = std::time::Instant::now();
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert!(!err.contains("panic"), "{err}");
        assert!(t0.elapsed().as_secs() < 5, "{args:?} took {:?}", t0.elapsed());
        // No run directory is left behind to block the run id.
        assert!(!root.join("x").exists(), "{args:?} created the run directory");
    }
    // Ten billion tokens: planned as fast as ten thousand.
    let t0 = std::time::Instant::now();
    let o =
        std::process::Command::new(bin).args(["plan", "--strategy", "ring", "--ring", "16", "--seq-len", "10000000000"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t0.elapsed().as_secs_f64() < 2.0, "plan took {:?}", t0.elapsed());
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2: the unchecked values a hostile reading found (defects 7, 10, 17, 18, 19,
/// 20, 21), each refused before any work with exit 2 and one line naming it; never a panic,
/// never a run that cannot end.
#[test]
fn the_second_rounds_unchecked_values_are_refused_by_name() {
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let dup = common::temp_root("dup-lens");
    let out = dup.join("never");
    let cases: [(&[&str], &[(&str, &str)], &str); 13] = [
        // 7: an `all` that plans nothing says why, in text and in JSON alike.
        (
            &["plan", "--strategy", "all", "--ring", "4", "--micro-batch", "3"],
            &[],
            "--strategy all: no strategy fits these sizes on 4 ranks",
        ),
        (&["plan", "--strategy", "all", "--ring", "4", "--micro-batch", "3", "--json"], &[], "no strategy fits"),
        // 10: a warm-up past any bound, and one that would run for ever.
        (
            &["bench", "launch", "--backend", "cpu", "--warmup", "18446744073709551615"],
            &[],
            "--warmup 18446744073709551615: at most 1000000",
        ),
        (&["bench", "launch", "--backend", "cpu", "--warmup", "1000000000"], &[], "--warmup 1000000000: at most 1000000"),
        // 17: a timeout that would end a healthy job.
        (&["run", "--strategy", "reference", "--comm-timeout", "1e-300"], &[], "--comm-timeout 1e-300: at least 1 second"),
        // 18: a fault with a key given twice.
        (&["run", "--strategy", "reference"], &[("RINGBENCH_FAULT", "rank:0,rank:1,iter:0,kind:error")], "rank is given twice"),
        // 19: a kernel choice the CPU backend does not have.
        (&["bench", "attention", "--backend", "cpu", "--kernel", "wgmma"], &[], "--kernel wgmma: a choice among the CUDA backend's"),
        // 20: a hardware flag that overflows once scaled.
        (&["plan", "--strategy", "ring", "--ring", "4", "--peak-tflops", "1e308"], &[], "--peak-tflops 1e308: too large"),
        // 15: messages that blamed the wrong thing: a reference run emulated (said "launch it with
        // -np 1" to a job of one process), a bad $SLURM_JOB_ID (blamed --run-id), a huge world
        // (a wrapped 2P in the message), a sweep's directory given to report.
        (
            &["run", "--strategy", "reference", "--emulate-world", "4", "--as-rank", "0"],
            &[],
            "--strategy reference is one rank's work already",
        ),
        (
            &["run", "--strategy", "reference", "--out", out.to_str().unwrap()],
            &[("SLURM_JOB_ID", "a/b")],
            "$SLURM_JOB_ID \"a/b\" cannot name a run directory",
        ),
        (
            &["run", "--strategy", "ring", "--emulate-world", "18446744073709551615", "--as-rank", "0"],
            &[],
            "--emulate-world 18446744073709551615: at most 1048576",
        ),
        (&["plan", "--strategy", "ring", "--ring", "99999999999"], &[], "--ring 99999999999: at most 1048576"),
        // 21: a length given twice.
        (
            &["sweep", "--strategy", "ring", "--seq-lens", "128,256,128", "--gpus", "2", "--out", out.to_str().unwrap()],
            &[],
            "--seq-lens: 128 is given twice",
        ),
    ];
    for (args, env, want) in cases {
        let t0 = std::time::Instant::now();
        let o = std::process::Command::new(bin).args(args).envs(env.iter().copied()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert!(!err.contains("panic") && err.lines().count() == 1, "{args:?}: {err}");
        assert!(t0.elapsed().as_secs() < 5, "{args:?} took {:?}", t0.elapsed());
    }
    assert!(!out.exists(), "nothing written for a refused sweep");
    std::fs::remove_dir_all(&dup).ok();
}
