//! `ringbench plan`: the analytic model from the command line, as text and as JSON.

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
