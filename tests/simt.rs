//! The CUDA kernels' own sources, compiled with g++ against the SIMT stand-in in tests/simt
//! (threads for GPU threads, barriers for warp collectives, the PTX ISA's fragment layouts for
//! ldmatrix and mma.sync, cp.async copies landing late or early) and run on the CPU, so CI checks
//! their indexing, masking, reductions and merges without a GPU: the attention kernels against
//! FP64 attention, the generator against DESIGN.md's test vectors, the element-wise kernels
//! against their formulas. What this cannot check (the real instructions' rounding and speed, the
//! backend's launch arguments) is left to `selftest` on a GPU.

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

#[test]
fn the_attention_kernel_sources_match_fp64_attention_on_the_simt_emulation() {
    let exe = build("attention_check");
    // Deferred copies show reads before a wait; eager ones show overwrites before a barrier.
    // Five flash cases at both block shapes, and three plain ones.
    for mode in ["deferred", "eager"] {
        run(&exe, &[("SIMT_COPY", mode)], "attention kernels on the SIMT emulation", 13);
    }
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn the_generator_and_elementwise_kernel_sources_match_design_on_the_simt_emulation() {
    let exe = build("elementwise_check");
    run(&exe, &[], "element-wise kernels on the SIMT emulation", 8);
    let _ = std::fs::remove_file(&exe);
}
