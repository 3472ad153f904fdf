//! Every CUDA kernel compiles with NVRTC for each checked architecture, and ptxas reports no
//! local-memory spills for the hot ones. Needs no GPU: NVRTC, the CUDA headers and ptxas come
//! from NVIDIA's wheels (scripts/cuda-tools.sh). Where they are absent the test says so and
//! passes, unless RINGBENCH_REQUIRE_KERNEL_CHECK=1 (CI and scripts/test.sh set it) makes it fail.

use ringbench::backend::cuda::kernels::{compile, include_dirs, nvrtc_available, refusal, Resources, CHECKED_ARCHS, SOURCES};
use std::process::Command;

fn required() -> bool {
    std::env::var("RINGBENCH_REQUIRE_KERNEL_CHECK").is_ok_and(|v| v == "1")
}

/// (function, spill stores, spill loads, registers) for each function ptxas -v reports, called
/// device functions (math library slow paths) included.
fn ptxas_report(stderr: &str) -> Vec<(String, u64, u64, u64)> {
    let mut out: Vec<(String, u64, u64, u64)> = Vec::new();
    for line in stderr.lines() {
        if let Some(name) = line.split("Function properties for ").nth(1) {
            out.push((name.trim().to_string(), 0, 0, 0));
        } else if line.contains("bytes spill stores") {
            // "N bytes stack frame, S bytes spill stores, L bytes spill loads"
            let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
            if let (Some(last), [_, stores, loads, ..]) = (out.last_mut(), nums.as_slice()) {
                (last.1, last.2) = (*stores, *loads);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            if let (Some(last), Some(regs)) = (out.last_mut(), rest.split(' ').next().and_then(|w| w.parse().ok())) {
                last.3 = regs;
            }
        }
    }
    out
}

#[test]
fn every_kernel_compiles_for_each_architecture_without_spills() {
    let include = include_dirs(None);
    let ptxas = std::env::var("RINGBENCH_PTXAS").ok();
    if !nvrtc_available() || include.is_empty() || ptxas.is_none() {
        let missing = format!(
            "NVRTC {}, CUDA headers {}, ptxas {}",
            if nvrtc_available() { "found" } else { "missing" },
            if include.is_empty() { "missing" } else { "found" },
            if ptxas.is_some() { "found" } else { "missing (RINGBENCH_PTXAS)" }
        );
        assert!(!required(), "the kernel check is required but cannot run: {missing}; run `eval \"$(bash scripts/cuda-tools.sh)\"` first");
        eprintln!("SKIPPED: kernel compile check: {missing}; `eval \"$(bash scripts/cuda-tools.sh)\"` provides them");
        return;
    }
    let ptxas = ptxas.unwrap();
    let dir = std::env::temp_dir().join(format!("ringbench-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for k in SOURCES {
        for &arch in CHECKED_ARCHS.iter().filter(|a| k.builds_for(a)) {
            let compiled = compile(k, arch, &include).unwrap_or_else(|e| panic!("{e:#}"));
            // The machine code the backend loads first: an ELF image for this exact architecture.
            let cubin = compiled.cubin.unwrap_or_else(|| panic!("{} for {arch}: NVRTC gave no CUBIN", k.file));
            assert!(cubin.starts_with(b"\x7fELF"), "{} for {arch}: the CUBIN is not an ELF image", k.file);
            // NVRTC compiles these sources without a word; anything it says is a new toolkit's
            // first warning, and `info` and `selftest` print it on the GPU machine.
            assert!(compiled.log.is_empty(), "{} for {arch}: NVRTC says:\n{}", k.file, compiled.log);
            let ptx = compiled.ptx;
            for e in k.entries {
                assert!(ptx.contains(&format!(".entry {e}(")), "{} for {arch}: no entry {e}", k.file);
            }
            let path = dir.join(format!("{}-{arch}.ptx", k.file));
            std::fs::write(&path, &ptx).unwrap();
            let out = Command::new(&ptxas)
                .args([&format!("-arch={arch}"), "-v", path.to_str().unwrap(), "-o", "/dev/null"])
                .output()
                .expect("ptxas runs");
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{} for {arch}: ptxas failed:\n{log}", k.file);
            // A warning can hide a silent loss: "setmaxnreg ignored", a wgmma serialized.
            assert!(!log.contains("warning"), "{} for {arch}: ptxas warns:\n{log}", k.file);
            let report: Vec<_> = ptxas_report(&log).into_iter().filter(|(f, ..)| k.entries.contains(&f.as_str())).collect();
            assert_eq!(report.len(), k.entries.len(), "{} for {arch}: one report per entry:\n{log}", k.file);
            for (f, stores, loads, regs) in report {
                println!("{arch} {f}: {regs} registers, {stores} B spill stores, {loads} B spill loads");
                if k.hot {
                    assert!(stores == 0 && loads == 0, "{arch} {f} spills to local memory ({stores} B stores, {loads} B loads)");
                }
                // The load-time check the backend makes with the driver's count, on ptxas's.
                let r = Resources { registers: regs as u32, local_bytes: (stores + loads) as u32 };
                assert_eq!(refusal(&f, r), None, "{arch} {f} as ptxas built it would be refused at load");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
