//! The attention kernels' own CUDA sources (flash and plain), compiled with g++ against the SIMT
//! stand-in in tests/simt (threads for GPU threads, barriers for warp collectives, the PTX ISA's fragment
//! layouts for ldmatrix and mma.sync, cp.async copies landing late or early) and run against FP64 softmax
//! attention, so CI checks the kernels' indexing, masking, online softmax and merge without a GPU.
//! What it cannot check (timing, the real instructions' rounding) is left to `selftest` on a GPU.

use std::path::Path;
use std::process::Command;

#[test]
fn the_attention_kernel_sources_match_fp64_attention_on_the_simt_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::temp_dir().join(format!("ringbench-attention-simt-{}", std::process::id()));
    let build = Command::new("g++")
        .args(["-std=c++20", "-O2", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-I"])
        .arg(root.join("tests/simt"))
        .arg(root.join("tests/simt/attention_check.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("g++ is installed (scripts/install-deps.sh)");
    let log = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "g++ failed:\n{log}");
    assert!(!log.contains("warning"), "the kernel compiles without warnings:\n{log}");
    // Deferred copies show reads before a wait; eager ones show overwrites before a barrier.
    for mode in ["deferred", "eager"] {
        let run = Command::new(&exe).env("SIMT_COPY", mode).output().unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        println!("cp.async copies {mode}:\n{out}");
        assert!(run.status.success() && out.contains("attention kernels on the SIMT emulation: PASS"), "{mode}:\n{out}");
        // Five flash cases at both block shapes, three plain ones, and the verdict.
        assert_eq!(out.matches(": PASS").count(), 14, "{mode}:\n{out}");
    }
    let _ = std::fs::remove_file(&exe);
}
