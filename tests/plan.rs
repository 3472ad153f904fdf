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

/// docs/design.md's preset table: the parameter counts; GQA's ring step; the 70B and 405B weights a
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
        for strategy in ["all", "usp", "tp-cp", "tp-pp", "ring", "double-ring"] {
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
                for name in ["tp-pp", "ring", "allgather", "ulysses", "usp", "tp-cp", "double-ring"] {
                    assert!(table.lines().any(|l| l.starts_with(&format!("{name} "))), "{job}: no {name} in {table}");
                }
                assert!(
                    table.contains("ulysses 8 x ring") && table.contains("tp 8 x cp") && table.contains(" x window 8"),
                    "{job}: {table}"
                );
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
        .args(["sweep", "--preset", "llama3-8b", "--batch", "1", "--strategy", "all", "--seq-lens", "131072", "--gpus", "16", "--quiet"])
        .arg("--out")
        .arg(root.join("s"))
        .output()
        .unwrap();
    assert!(swept.status.success(), "{}", String::from_utf8_lossy(&swept.stderr));
    let mut table = csv::Reader::from_path(root.join("s").join("sweep.csv")).unwrap();
    let header = table.headers().unwrap().clone();
    let at = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = table.records().map(Result::unwrap).collect();
    assert_eq!(plans.len(), 7, "every multi-rank strategy");
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

/// Front door (issue 27, item 2): a plain `plan --gpus N` plans every strategy, as `--strategy
/// all` does; the comparison ranks them by tokens/s, and those within the projection's stated
/// uncertainty of the fastest are called a tie, with the one needing the least memory named.
#[test]
fn plan_without_a_strategy_ranks_them_all_and_names_a_tie() {
    let model = ["--preset", "llama3-8b", "--gpus", "16", "--seq-len", "128k", "--batch", "1"];
    let plain = plan(&model);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let all = plan(&[&model[..], &["--strategy", "all"]].concat());
    assert_eq!(plain.stdout, all.stdout, "no --strategy is --strategy all");
    let text = String::from_utf8_lossy(&plain.stdout);
    let table = &text[text.find("comparison on 16 GPUs").unwrap_or_else(|| panic!("{text}"))..];
    assert!(table.starts_with("comparison on 16 GPUs of h100-sxm, batch 1 x 128000 tokens"), "{table}");
    // Ranked: tokens/s on the headline placement falls row by row.
    let tps: Vec<f64> = table
        .lines()
        .filter(|l| l.contains(" tok/s"))
        .map(|l| l.split(" tok/s").next().unwrap().split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    assert_eq!(tps.len(), 7, "{table}");
    assert!(tps.windows(2).all(|w| w[0] >= w[1]), "{tps:?}");
    // The tie: every strategy named in it is within 10% of the fastest, and the least memory is named.
    let tie = table.lines().find(|l| l.contains("a tie within the projection's 10% uncertainty")).unwrap_or_else(|| panic!("{table}"));
    assert!(tie.contains("needs the least memory"), "{tie}");
    let fastest: f64 = table
        .lines()
        .find(|l| l.starts_with("fastest that fits on 2 x 8 GPUs"))
        .unwrap()
        .split(", ")
        .nth(2)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(fastest, tps[0]);
    // Each tied strategy's "(split) tokens/s".
    let tied: Vec<f64> = tie.split(") ").skip(1).map(|s| s.split([',', ' ']).next().unwrap().parse().unwrap()).collect();
    assert!(!tied.is_empty(), "{tie}");
    for v in tied {
        assert!(v >= 0.9 * fastest && v <= fastest, "{v} is no tie with {fastest}: {tie}");
    }
}

/// Front door (issue 27, item 11): the projection's rates depend on the size of the work. A
/// 32Ki-token sequence over 64 ring ranks leaves 512 tokens each: its GEMMs run below the
/// large-shape rate (the H100 curve's 0.856 at 512), which a constant efficiency overstates; each
/// ring step pays NCCL's latency before its bytes.
#[test]
fn small_per_rank_chunks_run_below_the_large_shape_rates() {
    let args = ["--preset", "llama3-8b", "--strategy", "ring", "--ring", "64", "--seq-len", "32Ki", "--batch", "1", "--json"];
    let json = |extra: &[&str]| -> serde_json::Value {
        let out = plan(&[&args[..], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (curve, flat) = (json(&[]), json(&["--gemm-efficiency", "0.78"]));
    let compute = |v: &serde_json::Value| v["projections"][0]["compute_s"].as_f64().unwrap();
    let linear = curve["rank_linear_flops"].as_f64().unwrap();
    let slower = compute(&curve) - compute(&flat);
    // The whole difference is the GEMMs at 0.856 of the rate: linear / (peak 0.78 0.856) - linear / (peak 0.78).
    let want = linear / (989e12 * 0.78) * (1.0 / 0.856 - 1.0);
    assert!((slower / want - 1.0).abs() < 1e-6, "{slower} vs {want}");
    assert_eq!(flat["hardware"]["gemm_shape_curve"].as_array().unwrap().len(), 0, "a given efficiency is one rate");
    // A ring step's transfer: 8.4 us + 6.6 us across nodes, then its bytes at 50 GB/s.
    let step =
        curve["projections"][0]["details"].as_array().unwrap().iter().find(|d| d[0] == "ring step transfer").unwrap()[1].as_f64().unwrap();
    let bytes = curve["ring_step_bytes"].as_f64().unwrap();
    assert!((step - (15.0e-6 + bytes / 50e9)).abs() < 1e-12, "{step}");
}

/// README's projected answer is what `plan` prints today, line for line: the front door quotes no
/// figure the model no longer gives.
#[test]
fn the_readme_example_is_what_plan_prints() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let command = "ringbench plan --preset llama3-8b --gpus 16 --seq-len 128k --batch 1";
    assert!(readme.contains(command), "README no longer shows {command}");
    let block = readme.split("```\n").nth(1).expect("README's example block");
    let out = plan(&command.split_whitespace().skip(2).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let comparison = &text[text.find("comparison on").unwrap()..];
    assert_eq!(block.trim_end(), comparison.trim_end(), "regenerate README's example from `{command}`");
}

/// The double ring on 2 x 8 H100 (issue 29): llama3-8b, batch 1. Its projection and the ring's
/// have the same compute and differ exactly by the exposed transfer times the model gives, computed
/// here from their per-step figures: the ring exposes 15 steps' excess over a step's attention, at
/// the InfiniBand hop it spans; the double ring its 14 inner steps' excess on NVLink and its one
/// cross-node step's excess over a whole inner ring of 8 steps. At 128K both hide all; at 16K the
/// ring waits on InfiniBand at every step, the double ring on NVLink's latency only.
#[test]
fn the_double_ring_hides_what_the_ring_waits_for_across_nodes() {
    let json = |strategy: &str, seq: &str| -> serde_json::Value {
        let out = plan(&[
            "--preset",
            "llama3-8b",
            "--strategy",
            strategy,
            "--ring",
            "16",
            "--seq-len",
            seq,
            "--batch",
            "1",
            "--gpus-per-node",
            "8",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let detail = |v: &serde_json::Value, label: &str| -> f64 {
        v["projections"][0]["details"].as_array().unwrap().iter().find(|d| d[0] == label).unwrap_or_else(|| panic!("{label}"))[1]
            .as_f64()
            .unwrap()
    };
    let pr = |v: &serde_json::Value, key: &str| v["projections"][0][key].as_f64().unwrap();
    for seq in ["128k", "16k"] {
        let (ring, double) = (json("ring", seq), json("double-ring", seq));
        assert_eq!(double["projections"][0]["link"], "ib", "{seq}: the outer ring crosses nodes");
        assert_eq!(pr(&ring, "compute_s"), pr(&double, "compute_s"));
        let c = detail(&ring, "ring step attention");
        assert_eq!(detail(&double, "ring step attention"), c);
        // Per iteration: 32 layers of one sequence.
        let ring_exposed = 32.0 * 15.0 * (detail(&ring, "ring step transfer") - c).max(0.0);
        let (inner, outer) = (detail(&double, "inner ring step transfer"), detail(&double, "outer ring step transfer"));
        let inner_ring = 7.0 * c.max(inner) + c;
        let double_exposed = 32.0 * (2.0 * 7.0 * (inner - c).max(0.0) + (outer - inner_ring).max(0.0));
        assert!((pr(&ring, "exposed_comm_s") - ring_exposed).abs() <= 1e-12 * ring_exposed.max(1.0), "{seq}");
        assert!((pr(&double, "exposed_comm_s") - double_exposed).abs() <= 1e-12 * double_exposed.max(1.0), "{seq}");
        let gap = pr(&ring, "iteration_s") - pr(&double, "iteration_s");
        assert!((gap - (ring_exposed - double_exposed)).abs() <= 1e-9 * pr(&ring, "iteration_s"), "{seq}: {gap}");
        if seq == "16k" {
            // The ring waits on InfiniBand at every step; the double ring only on NCCL's NVLink
            // latency, a tenth of that.
            assert!(
                double_exposed > 0.0 && ring_exposed > 10.0 * double_exposed,
                "{seq}: ring {ring_exposed}, double ring {double_exposed}"
            );
        } else {
            assert_eq!((ring_exposed, double_exposed), (0.0, 0.0), "{seq}");
        }
    }
    // And `plan --gpus 16 --gpus-per-node 8` lists it beside the rest.
    let out = plan(&["--preset", "llama3-8b", "--gpus", "16", "--gpus-per-node", "8", "--seq-len", "128k", "--batch", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("double-ring windows 2 x window 8")), "{text}");
}

/// Decode of llama3-70b on 8 H100 (tp-pp TP 8, a 128Ki-token cache, batch 1): the TPOT floor is
/// the bytes a step reads over the HBM bandwidth, computed here by hand from the model's shapes;
/// the projection is at least that, says so, and the comparison ranks the strategies by TPOT.
#[test]
fn decode_tpot_is_at_least_the_bandwidth_floor_computed_by_hand() {
    let args = ["--preset", "llama3-70b", "--strategy", "tp-pp", "--tp", "8", "--pp", "1", "--seq-len", "128Ki", "--batch", "1"];
    let out = plan(&[&args[..], &["--decode-tokens", "128", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Per layer: W_q|k|v [8192, 8192 + 2 x 1024], W_o [8192, 8192], W_gate|up [8192, 2 x 28672],
    // W_down [28672, 8192], TP 8 ways; two gains of 8192, whole on every rank. 80 layers, BF16.
    let (d, kv, f, layers) = (8192.0f64, 1024.0f64, 28672.0f64, 80.0f64);
    let split = d * (d + 2.0 * kv) + d * d + d * 2.0 * f + f * d;
    let weights = layers * 2.0 * (split / 8.0 + 2.0 * d);
    // The cache: one K/V head of 128 per rank, K and V, 131072 prompt rows and on average half
    // of the 128 appended.
    let cache = layers * 2.0 * 128.0 * 2.0 * (131072.0 + 64.0);
    let floor = (weights + cache) / 3.35e12;
    let d = &v["decode"];
    assert!((d["tpot_floor_s"].as_f64().unwrap() / floor - 1.0).abs() < 1e-9, "floor {} vs {floor}", d["tpot_floor_s"]);
    let tpot = d["tpot_s"].as_f64().unwrap();
    assert!(tpot >= floor, "TPOT {tpot} below the floor {floor}");
    assert!((d["mbu"].as_f64().unwrap() - floor / tpot).abs() < 1e-9);
    assert!((d["tokens_per_s"].as_f64().unwrap() * tpot - 1.0).abs() < 1e-9, "batch 1: tokens/s = 1 / TPOT");
    // The text states the floor, and why nothing is below it.
    let text = String::from_utf8_lossy(&plan(&[&args[..], &["--decode-tokens", "128"]].concat()).stdout).to_string();
    let want = format!("TPOT floor   {:.3} ms (those bytes at 3.35 TB/s", floor * 1e3);
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
    // Every strategy on 8 GPUs, ranked by TPOT.
    let all = plan(&["--preset", "llama3-70b", "--gpus", "8", "--seq-len", "128Ki", "--batch", "1", "--decode-tokens", "128"]);
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success() && text.contains("decode, ranked by TPOT:") && text.contains("lowest TPOT: "), "{text}");
}
