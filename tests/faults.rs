//! Nothing hangs, nothing is lost: injected failures end the whole job naming the rank, a stall is
//! caught by the watchdog, SIGTERM keeps what was measured, damaged results are refused.

mod common;
use common::{mpirun, mpirun_with, temp_root};
use ringbench::output::rankfile;

#[test]
fn an_injected_panic_or_error_ends_the_job_naming_the_rank() {
    let root = temp_root("faults");
    for kind in ["panic", "error"] {
        let fault = format!("rank:2,iter:1,kind:{kind}");
        let run = mpirun_with(
            4,
            &["run", "--strategy", "ring", "--out", root.to_str().unwrap(), "--quiet"],
            &[("RINGBENCH_FAULT", &fault)],
            None,
        );
        let out = run.all();
        assert!(run.status.is_some_and(|s| s != 0), "{kind}: exit {:?}\n{out}", run.status);
        assert!(out.contains(&format!("rank 2 on host {}: {kind}", ringbench::console::hostname())), "{kind}:\n{out}");
        assert!(out.contains("injected fault"), "{out}");
        assert!(run.elapsed.as_secs() < 30, "{kind} took {:?}", run.elapsed);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_stalled_rank_is_caught_by_the_watchdog() {
    let root = temp_root("stall");
    let run = mpirun_with(
        4,
        &["run", "--strategy", "tp-pp", "--pp", "2", "--comm-timeout", "2", "--out", root.to_str().unwrap(), "--quiet"],
        &[("RINGBENCH_FAULT", "rank:1,iter:2,kind:stall")],
        None,
    );
    let out = run.all();
    assert!(run.status.is_some_and(|s| s != 0), "exit {:?}\n{out}", run.status);
    assert!(out.contains("watchdog:") && out.contains("has not completed after") && out.contains("--comm-timeout 2 s"), "{out}");
    // The rank that stalled names itself and what it was doing, not only as someone's peer.
    let host = ringbench::console::hostname();
    assert!(
        out.contains(&format!("rank 1 on host {host}: watchdog: this rank has stalled: no communication for"))
            && out.contains("during iteration 2 of tp-pp (measured)"),
        "{out}"
    );
    assert!(run.elapsed.as_secs() < 30, "took {:?}", run.elapsed);
    // Every rank saved what it measured before the abort: the two measured iterations before the stall.
    let dir = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    for r in 0..4 {
        let runs = rankfile::read(&rankfile::rank_file(&dir, r)).unwrap_or_else(|e| panic!("rank {r}: {e:#}\n{out}"));
        assert_eq!(runs[0].status.name(), "interrupted", "rank {r}");
        assert!(!runs[0].iterations.is_empty(), "rank {r}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn sigterm_keeps_the_iterations_done_and_marks_the_run_incomplete() {
    let root = temp_root("sigterm");
    // About 0.5 s an iteration on 2 cores: SIGTERM lands in the middle of the measured iterations.
    let args = [
        "run",
        "--strategy",
        "ring",
        "--preset",
        "small",
        "--seq-len",
        "1024",
        "--iters",
        "200",
        "--out",
        root.to_str().unwrap(),
        "--run-id",
        "cut",
        "--quiet",
    ];
    let run = mpirun_with(4, &args, &[], Some(6));
    let out = run.all();
    assert_ne!(run.status, Some(0), "{out}");
    let dir = root.join("cut");
    let mut done = Vec::new();
    for r in 0..4 {
        let runs = rankfile::read(&rankfile::rank_file(&dir, r)).unwrap_or_else(|e| {
            let listing: Vec<_> =
                std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
            panic!("rank {r}: {e:#}\nin {}: {listing:?}\n{out}", dir.display())
        });
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status.name(), "interrupted", "rank {r}");
        done.push(runs[0].iterations.len());
    }
    assert!(done.iter().all(|&n| n > 0 && n < 200), "iterations kept per rank: {done:?}\n{out}");
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap_or_else(|e| panic!("summary.csv: {e}\n{out}"));
    let row = summary.lines().nth(1).unwrap();
    assert!(row.contains(",incomplete,"), "{summary}");
    // The summary counts the iterations every rank completed.
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let measured = row.split(',').nth(header.iter().position(|h| *h == "iters_measured").unwrap()).unwrap();
    assert_eq!(measured, done.iter().min().unwrap().to_string(), "{summary}");
    assert!(out.contains("interrupted by signal 15"), "{out}");

    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_kill_without_warning_keeps_the_checkpointed_iterations() {
    let root = temp_root("sigkill");
    let guard = common::lock();
    let mut mpirun = common::mpirun_command(2)
        .args(["run", "--strategy", "ring", "--preset", "small", "--seq-len", "1024", "--iters", "200", "--quiet"])
        .args(["--out", root.to_str().unwrap(), "--run-id", "killed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    // SIGKILL every rank (mpirun's children): no handler runs.
    let killed = std::process::Command::new("pkill").args(["-KILL", "-P", &mpirun.id().to_string()]).status().unwrap();
    assert!(killed.success(), "no rank to kill");
    let _ = mpirun.wait();
    drop(guard);
    let dir = root.join("killed");
    for r in 0..2 {
        let runs = rankfile::read(&rankfile::rank_file(&dir, r)).unwrap_or_else(|e| panic!("rank {r}: {e:#}"));
        // The last checkpoint says running; its process is gone, which reduce tells.
        assert_eq!(runs[0].status.name(), "running", "rank {r}");
        assert!(!runs[0].iterations.is_empty(), "rank {r} kept no iteration");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringbench")).args(["reduce", dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(summary.lines().nth(1).unwrap().contains(",incomplete,"), "{summary}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn reduce_refuses_mismatched_rank_files_and_partial_is_marked() {
    let root = temp_root("mismatch");
    for id in ["a", "b"] {
        let r = mpirun(2, &["run", "--strategy", "ring", "--out", root.to_str().unwrap(), "--run-id", id, "--quiet"]);
        assert_eq!(r.status, Some(0), "{}", r.all());
    }
    let reduce = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("reduce").args(args).output().unwrap();
    let (a, b) = (root.join("a"), root.join("b"));
    for d in [&a, &b] {
        for f in ["summary.csv", "ranks.csv"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
    // Rank 1's file from another run: a different run id.
    std::fs::copy(b.join("rank-00001.h5"), a.join("rank-00001.h5")).unwrap();
    let r = reduce(&[a.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("rank 1: run id b differs from rank 0's a"), "{err}");
    assert!(!a.join("summary.csv").exists());

    // --partial leaves the bad rank out and says so, in tables that cannot pass for complete ones.
    let r = reduce(&["--partial", a.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("left out: rank 1"), "{err}");
    assert!(!a.join("summary.csv").exists());
    let partial = std::fs::read_to_string(a.join("summary-partial.csv")).unwrap();
    assert!(partial.lines().nth(1).unwrap().contains(",partial,"), "{partial}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_fault_specs_and_oversized_configs_are_refused_before_any_work() {
    let run = mpirun_with(2, &["run", "--strategy", "ring", "--quiet"], &[("RINGBENCH_FAULT", "rank:1,kind:boom")], None);
    assert_eq!(run.status, Some(2), "{}", run.all());
    assert_eq!(
        run.all().matches("RINGBENCH_FAULT=\"rank:1,kind:boom\": expected rank:K,iter:I,kind:panic|error|stall").count(),
        1,
        "{}",
        run.all()
    );
    let run = mpirun(4, &["run", "--strategy", "ring", "--preset", "paper"]);
    assert_eq!(run.status, Some(2), "{}", run.all());
    assert!(run.all().contains("config too large: the cpu backend needs about"), "{}", run.all());
    assert!(run.elapsed.as_secs() < 20);
}
