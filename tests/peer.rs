//! scripts/torch_peer.py, as far as a machine without PyTorch can check it: it parses its flags,
//! says clearly that it needs PyTorch, and lays the zigzag ring out exactly as ringbench does (the
//! chunks and which rank holds which), so that its per-rank work is the emulated rank's.

use ringbench::config::Layout;
use ringbench::topology::ring_tokens;
use std::process::Command;

fn python(code: &str) -> String {
    let out = Command::new("python3").current_dir(env!("CARGO_MANIFEST_DIR")).args(["-c", code]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_peer_lays_out_the_zigzag_ring_as_ringbench_does() {
    for (seq, ring) in [(100_000usize, 16usize), (1000, 4), (1023, 4), (37, 3), (8, 4)] {
        let got = python(&format!(
            "import sys; sys.path.insert(0, 'scripts'); import torch_peer as t\n\
             c = t.zigzag_chunks({seq}, {ring})\n\
             print(';'.join(','.join(f'{{c[i][0]}}+{{c[i][1]}}' for i in t.rank_chunks({ring}, r)) for r in range({ring})))"
        ));
        let want: Vec<String> = (0..ring)
            .map(|r| {
                ring_tokens(Layout::Zigzag, seq, ring, r)
                    .segments
                    .iter()
                    .map(|s| format!("{}+{}", s.start, s.len))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(got, want.join(";"), "seq {seq}, ring {ring}");
    }
}

#[test]
fn without_pytorch_the_peer_says_so_and_its_flags_parse() {
    let help = Command::new("python3")
        .args(["scripts/torch_peer.py", "layer", "--help"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--ring"));
    let has_torch = Command::new("python3").args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if has_torch {
        eprintln!("SKIPPED: PyTorch is installed here; scripts/gpu-check.sh runs the peer");
        return;
    }
    let run = Command::new("python3").args(["scripts/torch_peer.py", "check"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("torch_peer.py needs PyTorch"));
}

/// The peer's every subcommand on the CPU, where a Python with PyTorch is named by
/// RINGBENCH_TORCH_PYTHON (PyTorch is too big for CI; a developer runs this before a GPU run):
/// its ring attention passes its own check, and `attention` and `layer` run end to end on small
/// shapes (the logic only; nothing measured on a CPU is a figure).
#[test]
fn with_pytorch_on_the_cpu_every_subcommand_runs() {
    let Ok(python) = std::env::var("RINGBENCH_TORCH_PYTHON") else {
        eprintln!("SKIPPED: set RINGBENCH_TORCH_PYTHON to a python3 with PyTorch to run the peer on the CPU");
        return;
    };
    let peer = |args: &str| -> Vec<serde_json::Value> {
        let out = Command::new(&python)
            .arg("scripts/torch_peer.py")
            .args(args.split_whitespace())
            .arg("--json")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("python runs");
        assert!(out.status.success(), "{args}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect()
    };
    for (ring, seq) in [(4, 1000), (3, 37)] {
        let check = peer(&format!("check --cpu --ring {ring} --seq-len {seq}"));
        assert_eq!(check[0]["verdict"], "PASS", "{check:?}");
    }
    let attention = peer("attention --cpu --heads 2 --queries 97 --keys 97 --causal --warmup 0 --iters 2");
    assert!(attention[0]["tflops"].as_f64().unwrap() > 0.0, "{attention:?}");
    let layer = peer("layer --cpu --ring 4 --rank 1 --seq-len 1001 --d-model 256 --heads 2 --mlp 512 --layers 2 --warmup 0 --iters 2");
    // Rank 1 of a zigzag ring of 4 holds chunks 1 and 6 of 8: 125 tokens each.
    assert_eq!(layer[0]["local_tokens"], 250, "{layer:?}");
}
