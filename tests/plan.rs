//! `ringbench plan`: the analytic model from the command line, as text and as JSON.

mod common;
use std::process::Command;

fn plan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("plan").args(args).output().unwrap()
}

#[test]
fn the_paper_plan_prints_the_design_facts_for_both_placements() {
    for args in [
        &["--preset", "paper", "--strategy", "ring", "--ring", "16"][..],
        &["--preset", "paper", "--strategy", "tp-pp", "--tp", "8", "--pp", "2"],
    ] {
        let out = plan(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for want in
            ["3.221e9 parameters", "6.442e9 linear", "physical bound: 8094", "one 16-GPU NVLink domain", "2 nodes x 8 GPUs", "tokens/s"]
        {
            assert!(text.contains(want), "{args:?}: want {want:?} in:\n{text}");
        }
    }
    let ring = String::from_utf8_lossy(&plan(&["--preset", "paper", "--strategy", "ring", "--ring", "16"]).stdout).to_string();
    assert!(ring.contains("ring K/V 102.4 MB per step"), "{ring}");
    let tp = String::from_utf8_lossy(&plan(&["--preset", "paper", "--strategy", "tp-pp", "--tp", "8", "--pp", "2"]).stdout).to_string();
    assert!(tp.contains("TP all-reduce 819.2 MB per sequence"), "{tp}");
}

#[test]
fn json_has_the_documented_keys_and_values() {
    let out = plan(&["--preset", "paper", "--strategy", "ring", "--ring", "16", "--no-causal", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    for key in [
        "params",
        "linear_flops_per_token",
        "attention_flops_per_token",
        "tps_bound",
        "tps_projected",
        "ring_step_bytes",
        "allreduce_bytes",
        "memory_per_rank_bytes",
    ] {
        assert!(v[key].is_number(), "{key} missing or not a number");
    }
    let bound = v["tps_bound"].as_f64().unwrap();
    assert!((bound / 485e3 - 1.0).abs() < 0.01, "non-causal bound {bound}");
    assert!(v["tps_projected"].as_f64().unwrap() < bound);
    assert_eq!(v["ring_step_bytes"].as_f64().unwrap(), 102.4e6);
    // Overrides reach the numbers.
    let out = plan(&[
        "--preset",
        "paper",
        "--strategy",
        "ring",
        "--ring",
        "16",
        "--no-causal",
        "--peak-tflops",
        "494.5",
        "--json",
        "--gpus-per-node",
        "16",
    ]);
    let half: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((half["tps_bound"].as_f64().unwrap() / (bound * 0.5) - 1.0).abs() < 1e-12);
    assert_eq!(half["hardware"]["gpus_per_node"].as_u64(), Some(16));
}

#[test]
fn bad_plan_input_is_one_clear_line() {
    for (args, want) in [
        (&["--preset", "paper", "--strategy", "tp-pp", "--tp", "3", "--pp", "2"][..], "--tp 3: --heads 32 must be divisible"),
        (&["--strategy", "ring", "--ring", "2", "--gemm-efficiency", "1.5"], "--gemm-efficiency 1.5: a fraction of peak cannot exceed 1"),
        (&["--strategy", "ring", "--ring", "2", "--nvlink-gbps=-1"], "--nvlink-gbps -1: must be a positive number"),
        (&["--strategy", "ring", "--ring", "2", "--gpus-per-node", "0"], "--gpus-per-node 0: must be at least 1"),
    ] {
        let out = plan(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
}

/// DESIGN.md's preset table: the parameter counts; GQA's ring step; the 70B and 405B weights a
/// ring replicates, which no GPU holds, with the strategies that would fit named.
#[test]
fn the_presets_match_design_and_plan_says_what_fits() {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = plan(&[args, &["--json"][..]].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("valid JSON")
    };
    for (preset, params) in [("paper", 3.22e9), ("llama3-8b", 6.98e9), ("llama3-70b", 6.85e10), ("llama3-405b", 4.02e11)] {
        let v = json(&["--preset", preset, "--strategy", "ring", "--ring", "16"]);
        let p = v["params"].as_f64().unwrap();
        assert!((p / params - 1.0).abs() < 5e-3, "{preset}: {p:.4e} parameters, DESIGN says {params:.3e}");
    }
    // llama3-8b at 100K tokens on a ring of 16: 6,250 tokens x K and V x 8 heads x 128 x 2 B.
    let v = json(&["--preset", "llama3-8b", "--strategy", "ring", "--ring", "16"]);
    assert_eq!(v["ring_step_bytes"].as_f64().unwrap(), 6250.0 * 2.0 * 1024.0 * 2.0);
    assert_eq!(v["fits"], true);
    for (preset, gb) in [("llama3-70b", 137.0), ("llama3-405b", 803.0)] {
        let v = json(&["--preset", preset, "--strategy", "ring", "--ring", "16"]);
        assert_eq!(v["fits"], false, "{preset}");
        let weights = v["memory"]["weights"].as_f64().unwrap() / 1e9;
        assert!((weights / gb - 1.0).abs() < 0.01, "{preset}: {weights:.1} GB of replicated weights, about {gb} GB expected");
        let instead: Vec<&str> = v["fits_instead"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert!(instead.contains(&"tp-pp tp 8 x pp 2"), "{preset}: {instead:?}");
        assert!(!instead.iter().any(|s| s.starts_with("ring")), "{preset}: {instead:?}");
        let text = String::from_utf8_lossy(&plan(&["--preset", preset, "--strategy", "ring", "--ring", "16"]).stdout).to_string();
        assert!(text.contains("DOES NOT FIT") && text.contains("would fit    ") && text.contains("tp-pp tp 8 x pp 2"), "{text}");
    }
    // A strategy that fits says so and names nothing else.
    let v = json(&["--preset", "llama3-70b", "--strategy", "tp-pp", "--tp", "8", "--pp", "2"]);
    assert_eq!((v["fits"].as_bool(), v["fits_instead"].as_array().map(Vec::len)), (Some(true), Some(0)));
}

/// `plan --strategy all` for the models that need more than one node: every strategy side by
/// side on 8-GPU nodes and on one NVLink domain, with memory, whether it fits, tokens/s and time
/// to first token. A ring's replicated 70B or 405B weights fit no GPU; tp-cp's TP shard does.
#[test]
fn plan_all_compares_the_strategies_for_llama3_70b_and_405b() {
    let text = |args: &[&str]| {
        let out = plan(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let t = text(&["--preset", "llama3-70b", "--strategy", "all", "--ring", "32", "--seq-len", "131072", "--batch", "1"]);
    assert!(t.contains("comparison on 32 GPUs of h100-sxm"), "{t}");
    assert!(t.contains("4 x 8 GPUs") && t.contains("one 32-GPU domain"), "{t}");
    let table = |t: &str| t[t.find("comparison on").unwrap_or_else(|| panic!("no comparison in\n{t}"))..].to_string();
    let row = |name: &str| {
        let c = table(&t);
        c.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} row in\n{c}")).to_string()
    };
    for name in ["ring", "allgather", "ulysses", "usp"] {
        assert!(row(name).contains(" NO "), "{}", row(name));
    }
    assert!(row("usp").contains("ulysses 8 x ring 4"), "{}", row("usp"));
    assert!(row("tp-cp").contains("tp 8 x cp 4") && row("tp-cp").contains(" yes "), "{}", row("tp-cp"));
    assert!(t.contains("fastest that fits on 4 x 8 GPUs: tp-cp (tp 8 x cp 4, zigzag)"), "{t}");
    assert!(t.contains("time to first token"), "{t}");

    // 405B in BF16: TP 8 x CP 16 holds 100 GB of weights per GPU, an H200's 141 GB and not an H100's 80.
    let h200 = text(&[
        "--preset",
        "llama3-405b",
        "--strategy",
        "all",
        "--ring",
        "128",
        "--seq-len",
        "131072",
        "--batch",
        "1",
        "--hardware",
        "h200-sxm",
    ]);
    let tp_cp = table(&h200).lines().find(|l| l.starts_with("tp-cp")).unwrap().to_string();
    assert!(tp_cp.contains("tp 8 x cp 16") && tp_cp.contains(" yes "), "{h200}");
    let h100 = text(&["--preset", "llama3-405b", "--strategy", "all", "--ring", "128", "--seq-len", "131072", "--batch", "1"]);
    assert!(table(&h100).lines().find(|l| l.starts_with("tp-cp")).unwrap().contains(" NO "), "{h100}");
    // A strategy that cannot take the sizes is named with the reason, not dropped silently.
    let odd = text(&["--preset", "llama3-70b", "--strategy", "all", "--ring", "12", "--seq-len", "131072", "--batch", "1"]);
    assert!(odd.contains("tp-pp       not planned: --tp 12: --heads 64 must be divisible"), "{odd}");
}

/// The GPU jobs' own command lines (srun replaced by a stub that records them) ask for sizes that
/// every strategy takes: `plan` with the same flags plans all six, or the one the job names.
#[test]
fn the_gpu_jobs_ask_for_sizes_every_strategy_takes() {
    let root = common::temp_root("jobs");
    let log = root.join("srun.args");
    std::fs::write(root.join("srun"), "#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$SRUN_LOG\"\n").unwrap();
    Command::new("chmod").arg("+x").arg(root.join("srun")).status().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let path = format!("{}:{}", root.display(), std::env::var("PATH").unwrap());
    for (job, nodes) in [("paper-1node-16gpu", 1), ("paper-2node-8gpu", 2), ("cp-nodes-8gpu", 2), ("cp-nodes-8gpu", 4)] {
        for strategy in ["all", "usp", "tp-cp", "tp-pp", "ring"] {
            let _ = std::fs::remove_file(&log);
            let status = Command::new("bash")
                .arg(format!("{repo}/jobs/{job}.sbatch"))
                .env("PATH", &path)
                .env("SRUN_LOG", &log)
                .env("SLURM_SUBMIT_DIR", repo)
                .env("SLURM_JOB_NUM_NODES", nodes.to_string())
                .env("STRATEGY", strategy)
                .env("RINGBENCH", bin)
                .status()
                .unwrap();
            assert!(status.success(), "{job} STRATEGY={strategy}");
            let args = std::fs::read_to_string(&log).unwrap();
            let args: Vec<&str> = args.split('\0').filter(|a| !a.is_empty()).collect();
            let at = args.iter().position(|a| *a == bin).unwrap_or_else(|| panic!("{job}: {args:?}")) + 1;
            assert_eq!(args[at], "run", "{job}: {args:?}");
            // The run's flags, less where it runs and writes.
            let mut flags: Vec<&str> = Vec::new();
            let mut it = args[at + 1..].iter();
            while let Some(&a) = it.next() {
                match a {
                    "--backend" | "--comm" | "--out" => {
                        it.next();
                    }
                    "--quiet" => {}
                    _ => flags.push(a),
                }
            }
            let out = plan(&flags);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{job} STRATEGY={strategy}: plan {flags:?}: {}", String::from_utf8_lossy(&out.stderr));
            let world = if job.starts_with("paper") { 16 } else { 8 * nodes };
            let physical = format!("on {world} GPUs");
            assert!(text.contains(&physical), "{job} STRATEGY={strategy}: {text}");
            if strategy == "all" {
                let table = &text[text.find("comparison on").unwrap()..];
                assert!(!table.contains("not planned"), "{job}: {table}");
                for name in ["tp-pp", "ring", "allgather", "ulysses", "usp", "tp-cp"] {
                    assert!(table.lines().any(|l| l.starts_with(&format!("{name} "))), "{job}: no {name} in {table}");
                }
                assert!(table.contains("ulysses 8 x ring") && table.contains("tp 8 x cp"), "{job}: {table}");
            } else {
                assert!(text.starts_with(&format!("ringbench plan: {strategy} (")), "{job} STRATEGY={strategy}: {text}");
            }
        }
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Front door (issue 27): `plan --strategy all --gpus N` without size flags searches every
/// strategy's splits as the sweep does: each strategy's figure is the sweep's best split for it
/// at that point (llama3-8b on 16 H100s, 128K tokens, batch 1). A plan whose flags leave the
/// world at one GPU by accident is refused.
#[test]
fn plan_all_on_a_number_of_gpus_is_each_strategys_best_split_as_the_sweep_finds_it() {
    let model = ["--preset", "llama3-8b", "--seq-len", "131072", "--batch", "1", "--strategy", "all"];
    let out = plan(&[&model[..], &["--gpus", "16", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let root = common::temp_root("plan-vs-sweep");
    let swept = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["sweep", "--preset", "llama3-8b", "--batch", "1", "--strategy", "all", "--seq-lens", "131072", "--worlds", "16", "--quiet"])
        .arg("--out")
        .arg(root.join("s"))
        .output()
        .unwrap();
    assert!(swept.status.success(), "{}", String::from_utf8_lossy(&swept.stderr));
    let mut table = csv::Reader::from_path(root.join("s").join("sweep.csv")).unwrap();
    let header = table.headers().unwrap().clone();
    let at = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = table.records().map(Result::unwrap).collect();
    assert_eq!(plans.len(), 6, "every multi-rank strategy");
    for p in &plans {
        let name = p["strategy"].as_str().unwrap();
        let best = rows
            .iter()
            .filter(|r| &r[at("strategy")] == name && &r[at("fits")] == "true")
            .map(|r| r[at("projected_tps")].parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        let tps = p["tps_projected"].as_f64().unwrap();
        assert!((tps / best - 1.0).abs() < 1e-6, "{name}: plan {tps}, the sweep's best split {best}");
    }
    // The text names the batch on the comparison's first line.
    let text = plan(&[&model[..], &["--gpus", "16"]].concat());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("comparison on 16 GPUs of h100-sxm, batch 1 x 131072 tokens"), "{text}");
    // No size flag and no --gpus: refused, never "on 1 GPU" silently.
    let lone = plan(&model);
    assert_eq!(lone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&lone.stderr).contains("--gpus: no flag says how many GPUs to plan all on"));
    std::fs::remove_dir_all(&root).ok();
}
