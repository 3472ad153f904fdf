//! On a machine without a GPU (CI), everything CUDA says so clearly instead of panicking.

mod common;
use common::mpirun;
use std::process::Command;

fn has_gpu() -> bool {
    ringbench::backend::cuda::device::driver_available()
}

#[test]
fn info_selftest_and_the_cuda_backend_say_there_is_no_gpu() {
    if has_gpu() {
        eprintln!("SKIPPED: this machine has a CUDA driver; scripts/gpu-check.sh covers it");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let info = Command::new(bin).arg("info").output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success() && text.contains("CUDA driver: not found (libcuda.so)"), "{text}");
    assert!(text.contains("NVRTC:") && text.contains("cuBLAS:"), "{text}");

    let st = Command::new(bin).arg("selftest").output().unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{err}");
    assert!(err.contains("no GPU: the CUDA driver (libcuda.so) is not installed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let bench = Command::new(bin).args(["bench", "attention", "--backend", "cuda"]).output().unwrap();
    let err = String::from_utf8_lossy(&bench.stderr);
    assert_eq!(bench.status.code(), Some(2), "{err}");
    assert!(err.contains("--backend cuda: no GPU"), "{err}");

    let run = mpirun(2, &["run", "--backend", "cuda", "--strategy", "ring"]);
    let out = run.all();
    assert_eq!(run.status, Some(2), "{out}");
    for r in 0..2 {
        assert!(out.contains(&format!("rank {r} on host {}: --backend cuda: no GPU", ringbench::console::hostname())), "{out}");
    }
    assert!(!out.contains("panicked"), "{out}");
}
