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
