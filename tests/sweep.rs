//! `ringbench sweep --mode plan` end to end: on a hardware profile simple enough to solve by hand,
//! the crossover and the best splits are the hand-computed ones; the tables and charts land in
//! --out and are never overwritten by a different sweep; a flag the sweep sets itself is refused.

mod common;
use std::path::Path;
use std::process::Command;

fn sweep(out: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("sweep").args(args).arg("--out").arg(out).output().unwrap()
}

fn rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records().map(|rec| header.iter().cloned().zip(rec.unwrap().iter().map(String::from)).collect()).collect()
}

/// Peak 1 TFLOP/s at full efficiency (F), every link 1 GB/s (B), HBM too fast to matter: the tiny
/// model (d = 64, multi-head) at batch 1, non-causal, chunks of equal length. On the `cpu` profile,
/// whose every rate is given here: it has no rates by size (no GEMM shape curve, no attention
/// waves, no latency per call), so the arithmetic by hand below is the whole model.
const PROFILE: [&str; 21] = [
    "--hardware",
    "cpu",
    "--memory-gib",
    "80",
    "--preset",
    "tiny",
    "--batch",
    "1",
    "--no-causal",
    "--peak-tflops",
    "1",
    "--gemm-efficiency",
    "1",
    "--attention-efficiency",
    "1",
    "--nvlink-gbps",
    "1",
    "--ib-gbps",
    "1",
    "--hbm-tbps",
    "1000000",
];

/// By hand, per layer of one sequence of S tokens over P ranks (kv_dim = d), ring and Ulysses do
/// the same FLOPs and differ in exposed communication only:
/// - ring: P - 1 steps, each moving its K/V block (S/P x 2d x 2 B) under that step's attention
///   (4 (S/P)^2 d FLOPs): exposed (P - 1) max(0, 4 S d / (P B) - 4 d S^2 / (P^2 F));
/// - ulysses: three all-to-alls of (P - 1) / P of S x (2d / P, 2 kv / P, 2d / P) B, all exposed:
///   4 (P - 1) S (d + kv) / (P^2 B).
///
/// Equal at S* = F (P kv - d - kv) / (d B) = F (P - 2) / B = 2000 tokens for P = 4: ulysses is
/// faster below, ring above. And usp on 8 ranks (U x R), exposed per layer in units of S d / B:
/// a2a 8 (U - 1) / (U^2 R), ring (R - 1) 4 / (R U) max(0, 1 - S B / (R F)):
/// - 4 x 2: 0.75 + 0.5 max(0, 1 - S / 2000);  2 x 4: 0.5 + 1.5 max(0, 1 - S / 4000);
/// - 1 x 8 (the ring): 3.5 max(0, 1 - S / 8000).
///
/// At S = 1000: 1.0, 1.625, 3.06: 4 x 2 is best. At S = 3600: 0.75, 0.65, 1.93: 2 x 4 is best.
#[test]
fn the_crossover_and_the_best_splits_are_the_hand_computed_ones() {
    let root = common::temp_root("sweep");
    let all = root.join("all");
    let out = sweep(&all, &[&PROFILE[..], &["--strategy", "all", "--gpus", "4", "--seq-lens", "1000,1600,2400,3200"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", text, String::from_utf8_lossy(&out.stderr));
    let cross = rows(&all.join("crossovers.csv"));
    let ring_ulysses: Vec<_> = cross
        .iter()
        .filter(|r| {
            [r["faster_below"].as_str(), r["faster_above"].as_str()] == ["ulysses", "ring"]
                || [r["faster_below"].as_str(), r["faster_above"].as_str()] == ["ring", "ulysses"]
        })
        .collect();
    assert_eq!(ring_ulysses.len(), 1, "{cross:?}");
    let c = ring_ulysses[0];
    assert_eq!((c["faster_below"].as_str(), c["faster_above"].as_str()), ("ulysses", "ring"));
    assert_eq!((c["seq_len_below"].as_str(), c["seq_len_above"].as_str(), c["world"].as_str()), ("1600", "2400", "4"));
    let estimate: f64 = c["seq_len_estimate"].parse().unwrap();
    assert!(estimate > 1600.0 && estimate < 2400.0, "{estimate}");
    assert!(text.contains("crossover: ulysses is faster below, ring above, between 1600 and 2400 tokens"), "{text}");
    // Every point of the grid: 4 lengths x (tp-pp 4 x 1 and 2 x 2, ring, allgather, ulysses, usp
    // 2 x 2, tp-cp 2 x 2, double-ring 2 windows of 2); the 2-D strategies' one-dimensional splits
    // are left to the others.
    let points = rows(&all.join("sweep.csv"));
    assert_eq!(points.len(), 4 * 8, "{points:?}");
    // The double ring by hand: with every link alike and a step's transfer t longer than its
    // attention c, each window's one inner step per outer step is exposed by t - c, as each of the
    // ring's 3 steps is; the one outer step runs under the inner ring's t + c and is hidden. So
    // it exposes 2 (t - c) per layer where the ring exposes 3 (t - c).
    for seq in ["1000", "1600", "2400", "3200"] {
        let exposed = |strategy: &str| -> f64 {
            let p = points.iter().find(|p| p["seq_len"] == seq && p["strategy"] == strategy).unwrap();
            p["projected_exposed_comm_s"].parse().unwrap()
        };
        let (ring, double) = (exposed("ring"), exposed("double-ring"));
        assert!(ring > 0.0 && (double / ring - 2.0 / 3.0).abs() < 0.01, "{seq}: ring {ring}, double-ring {double}");
    }
    assert!(points.iter().all(|p| p["fits"] == "true" && p["projected_tps"].parse::<f64>().unwrap() > 0.0));
    assert!(all.join("tps-world-4.png").is_file());

    let usp = root.join("usp");
    let out = sweep(&usp, &[&PROFILE[..], &["--strategy", "usp", "--gpus", "8", "--seq-lens", "1000,3600"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let best = rows(&usp.join("best.csv"));
    let splits: Vec<(&str, &str)> = best.iter().map(|r| (r["seq_len"].as_str(), r["split"].as_str())).collect();
    assert_eq!(splits, vec![("1000", "ulysses 4 x ring 2"), ("3600", "ulysses 2 x ring 4")]);
    // And the whole order of the splits, as by hand (the compute is the same for all three).
    let points = rows(&usp.join("sweep.csv"));
    for (seq, order) in [
        ("1000", ["ulysses 4 x ring 2", "ulysses 2 x ring 4", "ulysses 1 x ring 8"]),
        ("3600", ["ulysses 2 x ring 4", "ulysses 4 x ring 2", "ulysses 1 x ring 8"]),
    ] {
        let tps = |split: &str| -> f64 {
            points.iter().find(|p| p["seq_len"] == seq && p["split"] == split).unwrap_or_else(|| panic!("{seq} {split}"))["projected_tps"]
                .parse()
                .unwrap()
        };
        assert!(tps(order[0]) > tps(order[1]) && tps(order[1]) > tps(order[2]), "{seq}: {order:?}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn sweep_input_is_checked_and_results_are_never_overwritten() {
    let root = common::temp_root("sweep-input");
    for (args, want) in [
        // A sweep chooses every split and takes a list of lengths: it has no --tp or --seq-len.
        (&["--strategy", "all", "--seq-lens", "1024", "--tp", "2"][..], "unexpected argument '--tp'"),
        (&["--strategy", "all", "--seq-lens", "1024", "--seq-len", "2048"], "unexpected argument '--seq-len'"),
        (&["--strategy", "all", "--seq-lens", "1024,0"], "--seq-lens 0: must be at least 1"),
        (&["--strategy", "all", "--seq-lens", "1024", "--gpus", "1000000"], "--gpus 1000000: at most 65536"),
        (&["--strategy", "ulysses", "--seq-lens", "1024", "--gpus", "3"], "no strategy and split of the sweep's grid validates"),
        (
            &["--mode", "run", "--strategy", "ring", "--seq-lens", "64", "--gpus", "8"],
            "--gpus 8: a measured sweep runs on the launch's world only, 1 rank",
        ),
    ] {
        let out = sweep(&root.join("x"), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert!(!root.join("x").exists(), "nothing written for bad input");
    }
    let dir = root.join("once");
    let args = ["--strategy", "ring", "--seq-lens", "1024,4096", "--gpus", "8,16", "--preset", "llama3-8b", "--quiet"];
    assert!(sweep(&dir, &args).status.success());
    let before = std::fs::read(dir.join("sweep.csv")).unwrap();
    assert!(sweep(&dir, &args).status.success(), "the same sweep again writes the same files");
    let other = sweep(&dir, &["--strategy", "ring", "--seq-lens", "2048", "--gpus", "8", "--preset", "llama3-8b"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("never overwritten"), "{}", String::from_utf8_lossy(&other.stderr));
    assert_eq!(std::fs::read(dir.join("sweep.csv")).unwrap(), before);
    std::fs::remove_dir_all(&root).ok();
}

/// README's sweep (Llama 3 70B on 8 to 256 H100s, the default grid: `sweep --preset llama3-70b`
/// alone) is committed under results/: the same command gives the same tables, so the figures
/// README quotes are what the model says today.
#[test]
fn the_committed_llama3_70b_sweep_is_what_the_model_gives() {
    let root = common::temp_root("sweep-70b");
    let dir = root.join("again");
    let args = ["--preset", "llama3-70b", "--quiet"];
    let out = sweep(&dir, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/sweep-llama3-70b-h100");
    for table in ["sweep.csv", "best.csv", "crossovers.csv"] {
        assert!(
            std::fs::read(dir.join(table)).unwrap() == std::fs::read(committed.join(table)).unwrap(),
            "results/sweep-llama3-70b-h100/{table} differs from what `ringbench sweep` gives now: regenerate it (README, \"sweep\") and update README's figures"
        );
    }
    for w in [8, 16, 32, 64, 128, 256] {
        assert!(committed.join(format!("tps-world-{w}.png")).is_file());
    }
    std::fs::remove_dir_all(&root).ok();
}

/// `--mode run` on 4 ranks of the CPU backend, stopped by SIGTERM midway (as SLURM's time limit
/// would) and run again: every point is in the tables once, measured; the points done before the
/// signal were not run again; the one it interrupted was moved aside (kept) and run again.
#[test]
fn a_run_sweep_interrupted_by_sigterm_resumes_where_it_stopped() {
    let root = common::temp_root("sweep-run");
    let state = |dir: &Path| -> Option<String> {
        let row = rows(&dir.join("summary.csv").exists().then(|| dir.join("summary.csv"))?).into_iter().next()?;
        Some(row["status"].clone())
    };
    // A point runs for about a second and the gap between two is a few milliseconds: a signal
    // that lands in a gap interrupts nothing, so a later one is tried (a fresh directory each).
    let (mut out, mut first, mut done, mut cut) = (root.clone(), None, Vec::new(), Vec::new());
    for (attempt, after_s) in [3, 4, 5].into_iter().enumerate() {
        out = root.join(format!("sweep-{attempt}"));
        let args = sweep_run_args(&out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = common::mpirun_with(4, &args, &[], Some(after_s));
        assert_ne!(run.status, Some(0), "the sweep should have been stopped:\n{}", run.all());
        let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        done = dirs.iter().filter(|d| state(d).as_deref() == Some("complete")).cloned().collect();
        cut = dirs.iter().filter(|d| state(d).as_deref() != Some("complete")).cloned().collect();
        assert!(!done.is_empty() && done.len() < 16, "SIGTERM should land midway: {} complete of 16\n{}", done.len(), run.all());
        assert!(cut.len() <= 1, "at most one point interrupted: {cut:?}\n{}", run.all());
        first = Some(run);
        if cut.len() == 1 {
            break;
        }
    }
    let first = first.unwrap();
    assert_eq!(cut.len(), 1, "one point interrupted: {cut:?}\n{}", first.all());
    let args = sweep_run_args(&out);
    let kept: Vec<(std::path::PathBuf, Vec<u8>)> =
        done.iter().map(|d| (d.to_path_buf(), std::fs::read(d.join("summary.csv")).unwrap())).collect();
    let interrupted = cut[0].file_name().unwrap().to_string_lossy().to_string();

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = common::mpirun(4, &args);
    assert_eq!(again.status, Some(0), "{}", again.all());
    assert!(again.stdout.contains(&format!("sweep: {interrupted} was interrupted; its files are kept in")), "{}", again.stdout);
    assert!(out.join("interrupted").join(format!("{interrupted}.1")).join("rank-00000.h5").is_file());
    for (dir, summary) in &kept {
        assert_eq!(&std::fs::read(dir.join("summary.csv")).unwrap(), summary, "{} was run again", dir.display());
    }
    let points = rows(&out.join("sweep.csv"));
    assert_eq!(points.len(), 16, "every point once");
    let ids: std::collections::BTreeSet<&str> = points.iter().map(|p| p["run_dir"].as_str()).collect();
    assert_eq!(ids.len(), 16);
    assert!(ids.contains(interrupted.as_str()));
    for p in &points {
        assert!(p["measured_tps"].parse::<f64>().unwrap() > 0.0 && p["projected_tps"].parse::<f64>().unwrap() > 0.0, "{p:?}");
        assert_eq!(state(&out.join(&p["run_dir"])).as_deref(), Some("complete"));
    }
    assert!(rows(&out.join("best.csv")).iter().all(|r| r["basis"] == "measured"));
    assert!(out.join("tps-world-4.png").is_file());
    std::fs::remove_dir_all(&root).ok();
}

fn sweep_run_args(out: &Path) -> Vec<String> {
    ["sweep", "--mode", "run", "--preset", "tiny", "--strategy", "all", "--seq-lens", "256,512", "--iters", "60", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
}

/// `plan --calibrate` (and `sweep --calibrate`) from a CPU run: the efficiencies are the FLOPs over
/// the seconds of the ops each rank timed in its last warm-up iteration, relative to the profile's
/// peak; the intra-node link is the bytes over the communication time of that one-host run; the
/// output says where each number came from. A directory without profiles is refused.
#[test]
fn calibration_takes_the_rates_a_cpu_run_measured() {
    let root = common::temp_root("calibrate");
    let out = root.to_str().unwrap();
    let run = common::mpirun(
        2,
        &["run", "--strategy", "ring", "--preset", "tiny", "--warmup", "1", "--iters", "2", "--out", out, "--run-id", "r", "--quiet"],
    );
    assert_eq!(run.status, Some(0), "{}", run.all());
    let dir = root.join("r");
    let (mut flops, mut secs, mut bytes, mut comm) = ((0.0, 0.0), (0.0, 0.0), 0u64, 0.0);
    for rank in 0..2 {
        for r in ringbench::output::rankfile::read(&dir.join(format!("rank-{rank:05}.h5"))).unwrap() {
            let p = r.op_profile.expect("the last warm-up iteration was profiled");
            assert!(p.linear_s > 0.0 && p.attention_s > 0.0 && p.linear_flops > 0.0 && p.attention_flops > 0.0, "{p:?}");
            // The profiled iteration did the FLOP model's work.
            assert!((p.linear_flops / r.flops.linear - 1.0).abs() < 1e-9 && (p.attention_flops / r.flops.attention - 1.0).abs() < 1e-9);
            (flops.0, flops.1, secs.0, secs.1) =
                (flops.0 + p.linear_flops, flops.1 + p.attention_flops, secs.0 + p.linear_s, secs.1 + p.attention_s);
            for i in &r.iterations {
                bytes += i.bytes_sent.max(i.bytes_received);
                comm += i.comm_s + i.hidden_s;
            }
        }
    }
    let plan = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ringbench"))
            .args(["plan", "--strategy", "ring", "--ring", "2", "--preset", "tiny", "--calibrate", dir.to_str().unwrap()])
            .args(common::CPU_PROFILE)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = plan(&["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hw = &v["hardware"];
    let close = |got: &serde_json::Value, want: f64| (got.as_f64().unwrap() / want - 1.0).abs() < 1e-12;
    assert!(close(&hw["gemm_efficiency"], flops.0 / secs.0 / 989e12), "{hw}");
    assert!(close(&hw["attention_efficiency"], flops.1 / secs.1 / 989e12), "{hw}");
    assert!(close(&hw["nvlink_bytes_per_s"], bytes as f64 / comm), "{hw}");
    assert_eq!(hw["ib_bytes_per_s"].as_f64(), Some(50e9), "not measured: the profile's");
    let notes: Vec<&str> = hw["calibrated"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(
        notes[0].starts_with("GEMM efficiency")
            && notes[0].contains("measured in")
            && notes[2].contains("InfiniBand 50 GB/s: not measured"),
        "{notes:?}"
    );
    // A CPU run's rates are refused for a GPU's profile, naming both.
    let gpu = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["plan", "--strategy", "ring", "--ring", "2", "--preset", "tiny", "--calibrate", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert_eq!(gpu.status.code(), Some(2), "{err}");
    assert!(
        err.contains("it ran on cpu") && err.contains("not on the hardware profile's h100-sxm") && err.contains("--hardware cpu"),
        "{err}"
    );
    // The cpu profile without the rates no run measures names the flags that give them.
    let bare_profile = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args([
            "plan",
            "--strategy",
            "ring",
            "--ring",
            "2",
            "--preset",
            "tiny",
            "--hardware",
            "cpu",
            "--peak-tflops",
            "1",
            "--calibrate",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bare_profile.stderr);
    assert_eq!(bare_profile.status.code(), Some(2), "{err}");
    assert!(err.contains("--hardware cpu: no profile knows these rates of it; give --hbm-tbps, --memory-gib, --ib-gbps"), "{err}");
    // An explicit flag still wins, and says so.
    let out = plan(&["--gemm-efficiency", "0.5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GEMM at 50%") && text.contains("calibrated: --gemm-efficiency 0.5 given: it replaces the calibration's"),
        "{text}"
    );
    // The sweep takes the same calibration.
    let swept = sweep(
        &root.join("sweep"),
        &[
            &["--strategy", "ring", "--preset", "tiny", "--seq-lens", "256", "--gpus", "2", "--calibrate", dir.to_str().unwrap()][..],
            common::CPU_PROFILE,
        ]
        .concat(),
    );
    assert!(String::from_utf8_lossy(&swept.stdout).contains("calibrated: GEMM efficiency"), "{}", String::from_utf8_lossy(&swept.stdout));
    // Without a warm-up iteration there is no profile; a directory that is not a run is named.
    let bare = common::mpirun(
        2,
        &[
            "run",
            "--strategy",
            "ring",
            "--preset",
            "tiny",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--out",
            root.to_str().unwrap(),
            "--run-id",
            "bare",
            "--quiet",
        ],
    );
    assert_eq!(bare.status, Some(0), "{}", bare.all());
    for (from, want) in [(root.join("bare"), "hold no op profile"), (root.join("nowhere"), "not a run directory")] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
            .args(["plan", "--strategy", "ring", "--ring", "2", "--calibrate", from.to_str().unwrap()])
            .args(common::CPU_PROFILE)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_dir_all(&root).ok();
}

fn measured_sweep(out: &Path, seq_lens: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["sweep", "--mode", "run", "--preset", "tiny", "--strategy", "ring", "--seq-lens", seq_lens, "--quiet", "--out"]
            .map(String::from)
            .to_vec();
    args.push(out.to_str().unwrap().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn launch(np: usize, args: &[String]) -> common::Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::mpirun(np, &args)
}

/// Hardening round 2, the sweep's data-loss defects: a measured sweep is extended (its tables and
/// chart drawn again together, its points kept); a measured sweep never writes over a projected
/// one's directory, nor the reverse; its points are read through `reduce`'s loading (a planted
/// value in a point's summary.csv never reaches the tables; a point whose rank 0 file is gone is
/// moved aside and measured again, never reused).
#[test]
fn a_measured_sweep_is_extended_and_never_reads_or_writes_what_is_not_its_own() {
    let root = common::temp_root("sweep-extend");
    // Extended: 128, then 128 and 256 (defect 1).
    let m = root.join("measured");
    let first = launch(2, &measured_sweep(&m, "128", &[]));
    assert_eq!(first.status, Some(0), "{}", first.all());
    let point = m.join("ring-2-zigzag-s128-kv4");
    let kept = std::fs::read(point.join("rank-00000.h5")).unwrap();
    let chart = std::fs::read(m.join("tps-world-2.png")).unwrap();
    let more = launch(2, &measured_sweep(&m, "128,256", &[]));
    assert_eq!(more.status, Some(0), "{}", more.all());
    let lens: Vec<String> = rows(&m.join("sweep.csv")).iter().map(|r| r["seq_len"].clone()).collect();
    assert_eq!(lens, ["128", "256"]);
    assert_eq!(std::fs::read(point.join("rank-00000.h5")).unwrap(), kept, "the complete point was not run again");
    assert_ne!(std::fs::read(m.join("tps-world-2.png")).unwrap(), chart, "the chart was drawn again with the new point");
    // Planted values in a point's summary.csv never reach the tables (defect 4).
    let tps = rows(&m.join("sweep.csv"))[0]["measured_tps"].clone();
    let summary = std::fs::read_to_string(point.join("summary.csv")).unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == "tps").unwrap();
    let planted: Vec<String> = summary
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                l.split(',').enumerate().map(|(j, v)| if j == at { "NaN" } else { v }).collect::<Vec<_>>().join(",")
            }
        })
        .collect();
    std::fs::write(point.join("summary.csv"), planted.join("\n") + "\n").unwrap();
    let again = launch(2, &measured_sweep(&m, "128,256", &[]));
    assert_eq!(again.status, Some(0), "{}", again.all());
    assert_eq!(rows(&m.join("sweep.csv"))[0]["measured_tps"], tps, "the rank files' figure, not the planted one");
    // A point without its rank 0 file is not reused, even for another seed (defect 4).
    std::fs::remove_file(point.join("rank-00000.h5")).unwrap();
    let reseeded = launch(2, &measured_sweep(&m, "128", &["--seed", "1"]));
    assert_eq!(reseeded.status, Some(0), "{}", reseeded.all());
    assert!(reseeded.stdout.contains("sweep: ring-2-zigzag-s128-kv4 was interrupted; its files are kept in"), "{}", reseeded.stdout);
    assert!(point.join("rank-00000.h5").is_file(), "measured again");

    // `report` of the sweep's directory says what it is (defect 15), not that a rank file is missing.
    let report = Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("report").arg(&m).output().unwrap();
    let err = String::from_utf8_lossy(&report.stderr);
    assert!(!report.status.success() && err.contains("a sweep's directory, not a run directory"), "{err}");

    // A projected sweep's directory refuses a measured sweep, and the reverse (defect 3).
    let p = root.join("projected");
    let plan = sweep(&p, &["--preset", "tiny", "--strategy", "ring", "--seq-lens", "128", "--gpus", "2", "--quiet"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let before = std::fs::read(p.join("sweep.csv")).unwrap();
    let run = launch(2, &measured_sweep(&p, "128", &[]));
    assert_eq!(run.status, Some(2), "{}", run.all());
    assert!(run.stderr.contains("it holds a projected sweep; a measured sweep never writes over it"), "{}", run.all());
    assert_eq!(std::fs::read(p.join("sweep.csv")).unwrap(), before);
    let over = sweep(&m, &["--preset", "tiny", "--strategy", "ring", "--seq-lens", "128", "--gpus", "2", "--quiet"]);
    assert_eq!(over.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&over.stderr).contains("it holds a measured sweep"), "{}", String::from_utf8_lossy(&over.stderr));
    std::fs::remove_dir_all(&root).ok();
}

/// Two sweeps started on one --out (defect 2): the second is refused before it moves or writes
/// anything, naming the first, and the first ends with tables of its own data.
#[test]
fn a_second_sweep_on_the_same_out_is_refused_while_the_first_runs() {
    let root = common::temp_root("sweep-two");
    let out = root.join("shared");
    let args = measured_sweep(&out, "128,256", &["--iters", "400"]);
    let _one_at_a_time = common::lock();
    let first = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"])
        .arg(env!("CARGO_BIN_EXE_ringbench"))
        .args(&args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first holds the directory once its lock names it.
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(out.join(".sweep.lock")).is_ok_and(|s| !s.is_empty()) {
        assert!(t0.elapsed().as_secs() < 60, "the first sweep never took its directory");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(&args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("another sweep (pid") && err.contains("is writing there"), "{err}");
    assert!(!out.join("interrupted").exists(), "nothing of the first's was moved");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}{}", String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("2 of 2 points measured"));
    assert_eq!(rows(&out.join("sweep.csv")).len(), 2);
    std::fs::remove_dir_all(&root).ok();
}

/// Front door (issue 27, item 3): `sweep --preset P` alone is a projected sweep of every strategy
/// over the default grid (8Ki to 1Mi tokens, 8 to 256 GPUs, batch 1) into a new directory under
/// results/ that it names.
#[test]
fn a_sweep_with_no_flags_but_the_preset_runs_the_default_grid_into_a_new_directory() {
    let cwd = common::temp_root("sweep-default");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .current_dir(&cwd)
        .args(["sweep", "--preset", "llama3-8b", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("sweep of llama3-8b: 32 layers") && text.lines().next().unwrap().contains("batch 1,"), "{text}");
    let made: Vec<_> = std::fs::read_dir(cwd.join("results")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(made[0].starts_with("sweep-llama3-8b-h100-sxm-"), "{made:?}");
    assert!(text.contains(&format!("wrote results/{}/sweep.csv", made[0])), "{text}");
    let table = rows(&cwd.join("results").join(&made[0]).join("sweep.csv"));
    let set = |col: &str| table.iter().map(|r| r[col].parse::<usize>().unwrap()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set("seq_len").into_iter().collect::<Vec<_>>(), (13..=20).map(|e| 1usize << e).collect::<Vec<_>>());
    assert_eq!(set("world").into_iter().collect::<Vec<_>>(), vec![8, 16, 32, 64, 128, 256]);
    let strategies: std::collections::BTreeSet<&str> = table.iter().map(|r| r["strategy"].as_str()).collect();
    assert_eq!(strategies.len(), 7, "{strategies:?}");
    // The chart says what it shows.
    let png = std::fs::read(cwd.join("results").join(&made[0]).join("tps-world-16.png")).unwrap();
    let words = ringbench::chart::text_chunks(&png);
    let subtitle = &words.iter().find(|(k, _)| k == "Description").unwrap().1;
    assert!(
        subtitle.starts_with(
            "llama3-8b: 32 layers, d_model 4096, 32 heads (8 K/V), mlp 14336 swiglu; batch 1, micro-batch 1, causal; projected"
        ),
        "{subtitle}"
    );
    std::fs::remove_dir_all(&cwd).ok();
}

/// With --decode-tokens every point's decode is projected beside its prefill: its TPOT at least
/// the floor of bytes over HBM bandwidth, the strategies ranked by TPOT in best-decode.csv, and
/// where sharding the cache starts to pay (llama3-70b on 16 H100: tp-cp's cache split over its
/// context ranks overtakes tp-pp between 128Ki and 512Ki tokens) in crossovers-decode.csv.
#[test]
fn a_decode_sweep_ranks_by_tpot_and_finds_where_sharding_the_cache_pays() {
    let out = common::temp_root("sweep-decode");
    let o = sweep(&out, &["--preset", "llama3-70b", "--decode-tokens", "128", "--gpus", "16", "--seq-lens", "32Ki,128Ki,512Ki", "--quiet"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("decode of 128 tokens, 16 GPUs of h100-sxm"), "{text}");
    for p in rows(&out.join("sweep.csv")) {
        let (tpot, floor): (f64, f64) = (p["projected_tpot_s"].parse().unwrap(), p["projected_tpot_floor_s"].parse().unwrap());
        assert!(tpot >= floor && floor > 0.0, "{p:?}");
        let mbu: f64 = p["projected_mbu"].parse().unwrap();
        assert!((mbu - floor / tpot).abs() < 1e-3, "{p:?}");
    }
    let best = rows(&out.join("best-decode.csv"));
    assert_eq!(best.len(), 3, "{best:?}");
    assert!(best.iter().all(|b| b["projected_tpot_s"].parse::<f64>().unwrap() > 0.0), "{best:?}");
    let cross = rows(&out.join("crossovers-decode.csv"));
    assert!(
        cross.iter().any(|c| c["faster_below"] == "tp-pp" && c["faster_above"] == "tp-cp" && c["seq_len_below"] == "131072"),
        "{cross:?}\n{text}"
    );
    std::fs::remove_dir_all(&out).ok();
}
