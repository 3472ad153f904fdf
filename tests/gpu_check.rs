//! scripts/gpu-check.sh ends by itself whatever hangs: with no GPU context every GPU step is
//! skipped with the reason; with steps that hang, each is killed at its limit or at the script's
//! one deadline, the rest are skipped, and the logs and the table are under $OUT either way.
//! A stand-in binary (RINGBENCH_BIN) plays a GPU whose every command hangs.

#[allow(dead_code)] // this file launches no mpirun
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn gpu_check(out: &std::path::Path, bin: &str, deadline_s: u64) -> (String, Duration) {
    let t0 = Instant::now();
    let o = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh"))
        .env("OUT", out)
        .env("RINGBENCH_BIN", bin)
        .env("GPU_CHECK_DEADLINE_S", deadline_s.to_string())
        .output()
        .expect("bash runs");
    (String::from_utf8_lossy(&o.stdout).into_owned(), t0.elapsed())
}

fn table(out: &std::path::Path) -> String {
    std::fs::read_to_string(out.join("table.txt")).expect("table.txt under $OUT")
}

#[test]
fn without_a_gpu_context_every_later_step_is_skipped_with_the_reason() {
    let out = common::temp_root("gpu-check-none");
    let (stdout, took) = gpu_check(&out, env!("CARGO_BIN_EXE_ringbench"), 380);
    assert!(stdout.contains("no context could be created on GPU 0"), "{stdout}");
    let t = table(&out);
    assert!(t.lines().any(|l| l.starts_with("info ") && l.contains("PASS")), "{t}");
    for step in ["selftest", "verify-ring-2-mpi", "bench-attention", "emulated-ring-layer", "peer-layer-flash"] {
        assert!(t.lines().any(|l| l.starts_with(&format!("{step} ")) && l.contains("SKIPPED(no GPU context)")), "{step}: {t}");
    }
    assert!(out.join("info.log").is_file());
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn hanging_steps_are_killed_at_the_deadline_and_the_table_survives() {
    let out = common::temp_root("gpu-check-hang");
    // A GPU that `info` can see and that never finishes anything else.
    let fake = out.join("fake-ringbench");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = info ]; then echo 'GPU 0: Fake, compute capability 9.0, 1.0 GiB'; exit 0; fi\nexec sleep 1000\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let deadline = 22;
    let (stdout, took) = gpu_check(&out, fake.to_str().unwrap(), deadline);
    let t = table(&out);
    assert!(!stdout.contains("no context could be created"), "{stdout}");
    // selftest's own limit (150 s) is cut to what the deadline leaves: 22 s less 10 s of grace,
    // less the second `info` may have taken (bash counts whole seconds).
    let selftest = t.lines().find(|l| l.starts_with("selftest ")).unwrap_or_else(|| panic!("{t}"));
    let limit: u64 =
        selftest.split("TIMEOUT(").nth(1).and_then(|r| r.split("s)").next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{t}"));
    assert!((10..=12).contains(&limit), "{t}");
    assert!(t.lines().any(|l| l.starts_with("emulated-tp-pp-layer ") && l.contains("SKIPPED(deadline)")), "{t}");
    assert!(out.join("selftest.log").is_file());
    // The deadline, the kill's grace and the closing table: well within the 7 minutes.
    assert!(took < Duration::from_secs(deadline + 25), "{took:?}");
}
