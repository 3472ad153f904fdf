//! Full disks, damaged results, live runs and separate launches: each ends in a clear error or a
//! correct result, and nothing already written is lost.

mod common;
use common::{mpirun, temp_root};
use ringbench::output::rankfile;
use std::path::Path;
use std::process::Command;

fn ringbench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).args(args).output().unwrap()
}

/// A tmpfs of `size` mounted at a new directory for the closure's length (root only, as CI runs).
fn with_tmpfs(name: &str, size: &str, f: impl FnOnce(&Path)) {
    let dir = temp_root(name);
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir).status();
    if !mounted.is_ok_and(|s| s.success()) {
        assert!(std::env::var("CI").is_err(), "CI runs as root and must be able to mount a tmpfs for the full-disk test");
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?): the full-disk test needs one");
        return;
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&dir)));
    Command::new("umount").arg(&dir).status().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_full_disk_is_an_error_naming_rank_file_and_cause_and_the_last_good_file_is_kept() {
    for size in ["8k", "48k"] {
        with_tmpfs(&format!("full-{size}"), size, |out| {
            let o = ringbench(&[
                "run",
                "--preset",
                "tiny",
                "--strategy",
                "reference",
                "--iters",
                "3000",
                "--out",
                out.to_str().unwrap(),
                "--run-id",
                "a",
                "--quiet",
            ]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{size}: {err}");
            let file = out.join("a").join("rank-00000.h5");
            assert!(
                err.contains(&format!("rank 0: writing its results file {} failed: No space left on device", file.display())),
                "{size}: {err}"
            );
            assert!(!out.join("a").join("rank-00000.h5.partial").exists(), "{size}: the damaged copy is removed");
            // Whatever is on disk is the last complete checkpoint, readable, never a damaged file.
            if file.exists() {
                let runs = rankfile::read(&file).unwrap_or_else(|e| panic!("{size}: the kept file is damaged: {e:#}"));
                assert!(!runs[0].iterations.is_empty(), "{size}");
            }
        });
    }
}
