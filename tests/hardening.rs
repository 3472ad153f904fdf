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

fn remove_tables(dir: &Path) {
    for f in ["summary.csv", "ranks.csv", "summary.json"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
}

fn run_ok(root: &Path, np: usize, id: &str, extra: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["run", "--strategy", "ring", "--out", root.to_str().unwrap(), "--run-id", id, "--quiet"];
    args.extend(extra);
    let r = mpirun(np, &args);
    assert_eq!(r.status, Some(0), "{}", r.all());
    root.join(id)
}

#[test]
fn planted_nan_inf_negative_times_and_wrong_bytes_are_refused_naming_rank_and_dataset() {
    let root = temp_root("planted");
    // With decode steps, whose datasets reduce checks as it does the prefill's.
    let dir = run_ok(&root, 2, "a", &["--decode-tokens", "3"]);
    remove_tables(&dir);
    let file = rankfile::rank_file(&dir, 1);
    let pristine = std::fs::read(&file).unwrap();
    for (dataset, want) in [
        ("ring/iter_s", "rank 1: rank-00001.h5: dataset ring/iter_s[0] = NaN: a time must be finite and non-negative"),
        ("ring/comm_s", "dataset ring/comm_s[0] = inf"),
        ("ring/compute_s", "dataset ring/compute_s[0] = -0.5"),
        ("ring/bytes_sent", "dataset ring/bytes_sent[0] = 7, but this config moves"),
        ("ring/decode_step_s", "dataset ring/decode_step_s[0, 0] = NaN: a time must be finite"),
        ("ring/decode_bytes_sent", "dataset ring/decode_bytes_sent[0] = 7, but this config's decode moves"),
    ] {
        std::fs::write(&file, &pristine).unwrap();
        {
            let h5 = hdf5::File::open_rw(&file).unwrap();
            let ds = h5.dataset(dataset).unwrap();
            if dataset.ends_with("bytes_sent") {
                let mut v = ds.read_raw::<u64>().unwrap();
                v[0] = 7;
                ds.write_raw(&v).unwrap();
            } else {
                let mut v = ds.read_raw::<f64>().unwrap();
                v[0] = if dataset.ends_with("iter_s") || dataset.ends_with("step_s") {
                    f64::NAN
                } else if dataset.ends_with("comm_s") {
                    f64::INFINITY
                } else {
                    -0.5
                };
                ds.write_raw(&v).unwrap();
            }
        }
        for cmd in ["reduce", "report"] {
            let o = ringbench(&[cmd, dir.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(want), "{cmd} {dataset}: {err}");
        }
        assert!(!dir.join("summary.csv").exists(), "{dataset}: nothing is written");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_result_beyond_the_bound_is_a_marked_row_and_exit_3_not_a_lost_table() {
    let root = temp_root("invalid");
    let dir = run_ok(&root, 2, "a", &[]);
    remove_tables(&dir);
    // A device of 1 FLOP/s: no measured time is possible on it.
    for r in 0..2 {
        let h5 = hdf5::File::open_rw(rankfile::rank_file(&dir, r)).unwrap();
        h5.group("ring").unwrap().new_attr::<f64>().create("device_peak_flops").unwrap().write_scalar(&1.0).unwrap();
    }
    let o = ringbench(&["reduce", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("the ring result is invalid: measured") && err.contains("exceeds the physical bound"), "{err}");
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(summary.lines().nth(1).unwrap().contains(",invalid,measured "), "{summary}");
    // Decode steps faster than an H100 reads the step's bytes: invalid, by the TPOT floor.
    let dir = run_ok(&root, 2, "b", &["--decode-tokens", "2"]);
    remove_tables(&dir);
    for r in 0..2 {
        let h5 = hdf5::File::open_rw(rankfile::rank_file(&dir, r)).unwrap();
        let g = h5.group("ring").unwrap();
        g.attr("device").unwrap().write_scalar(&"NVIDIA H100 80GB HBM3".parse::<hdf5::types::VarLenUnicode>().unwrap()).unwrap();
        let ds = g.dataset("decode_step_s").unwrap();
        let fast = vec![1e-12; ds.read_raw::<f64>().unwrap().len()];
        ds.write_raw(&fast).unwrap();
    }
    let o = ringbench(&["reduce", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("measured TPOT 0.000 ms is below the") && err.contains("at 3.35 TB/s (h100-sxm): a timing bug"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn rank_files_of_two_launches_with_one_run_id_are_not_one_job() {
    let (a, b) = (temp_root("launch-a"), temp_root("launch-b"));
    let (da, db) = (run_ok(&a, 2, "same", &[]), run_ok(&b, 2, "same", &[]));
    remove_tables(&da);
    std::fs::copy(db.join("rank-00001.h5"), da.join("rank-00001.h5")).unwrap();
    let o = ringbench(&["reduce", da.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("rank 1: written by launch") && err.contains("two separate launches that chose the same run id"), "{err}");
    // Hardening round 2, defect 6: a calibration does not sum the two launches as one either.
    let o = ringbench(&["plan", "--strategy", "ring", "--ring", "2", "--calibrate", da.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--calibrate") && err.contains("two separate launches that chose the same run id"), "{err}");
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

/// A 2-rank ring run of `iters` iterations started in `root/id`, returned once both ranks have
/// checkpointed at least one iteration (the caller holds the launch lock).
fn live_run(root: &Path, id: &str, iters: &str) -> (std::process::Child, std::path::PathBuf) {
    let run = common::mpirun_command(2)
        .args(["run", "--strategy", "ring", "--preset", "small", "--seq-len", "512", "--iters", iters, "--quiet"])
        .args(["--out", root.to_str().unwrap(), "--run-id", id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = root.join(id);
    let t0 = std::time::Instant::now();
    while !(0..2).all(|r| rankfile::read(&rankfile::rank_file(&dir, r)).is_ok_and(|runs| !runs[0].iterations.is_empty())) {
        assert!(t0.elapsed().as_secs() < 60, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (run, dir)
}

#[test]
fn reduce_of_a_live_run_is_refused_and_the_runs_own_tables_win() {
    let root = temp_root("live");
    let guard = common::lock();
    let (run, dir) = live_run(&root, "live", "40");
    let o = ringbench(&["reduce", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("says the ring run is still in progress"), "{err}");
    assert!(!dir.join("summary.csv").exists());
    // A look now: the partial tables, their run marked running.
    let o = ringbench(&["reduce", "--partial", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let look = std::fs::read_to_string(dir.join("summary-partial.csv")).unwrap();
    assert!(look.lines().nth(1).unwrap().contains(",running,"), "{look}");
    assert!(!dir.join("summary.csv").exists());
    let out = run.wait_with_output().unwrap();
    drop(guard);
    assert!(out.status.success(), "the run itself must end well: {}", String::from_utf8_lossy(&out.stderr));
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(summary.lines().nth(1).unwrap().contains(",complete,"), "{summary}");
    assert!(!dir.join("summary-partial.csv").exists(), "the look is superseded");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn two_runs_in_one_second_get_their_own_default_run_ids() {
    let root = temp_root("ids");
    // Take the default names of this second and the next few, as runs started just before would
    // (enough seconds that the run below starts inside them on a slow machine too).
    let now = chrono::Utc::now();
    for s in 0..12 {
        let t = now + chrono::Duration::seconds(s);
        std::fs::create_dir_all(root.join(format!("{}-reference", t.format("%Y%m%dT%H%M%SZ")))).unwrap();
    }
    let o = ringbench(&["run", "--strategy", "reference", "--iters", "1", "--warmup", "0", "--out", root.to_str().unwrap(), "--quiet"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{}", out, String::from_utf8_lossy(&o.stderr));
    let made: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("summary.csv").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(made[0].ends_with("-reference-2"), "{made:?}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_fault_that_can_never_strike_and_reduce_of_a_file_are_refused_with_names() {
    for (spec, want) in [
        ("rank:9,iter:0,kind:error", "rank 9 does not exist in a job of 2 ranks"),
        ("rank:1,iter:50,kind:error", "iteration 50 is never reached (warm-up and measured iterations are 0 .. 3)"),
    ] {
        let r = common::mpirun_with(2, &["run", "--strategy", "ring", "--quiet"], &[("RINGBENCH_FAULT", spec)], None);
        assert_eq!(r.status, Some(2), "{spec}: {}", r.all());
        assert_eq!(r.all().matches(want).count(), 1, "{spec}: {}", r.all());
    }
    let file = temp_root("reduce-file").join("rank-00000.h5");
    std::fs::write(&file, b"not a run directory").unwrap();
    let o = ringbench(&["reduce", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("reduce {}: not a run directory", file.display())), "{err}");
}

/// The exit status after SIGTERM is what README says: 128 + 15 from each rank, and 1 from Open
/// MPI's mpirun for a job whose ranks exited so.
#[test]
fn the_exit_status_after_sigterm_is_what_readme_says() {
    let root = temp_root("exit-status");
    let args = ["run", "--strategy", "ring", "--preset", "small", "--seq-len", "1024", "--iters", "200", "--quiet", "--out"];
    let term_after = |mut cmd: Command, secs: u64| -> Option<i32> {
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(secs));
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        child.wait().unwrap().code()
    };
    let mut alone = Command::new(env!("CARGO_BIN_EXE_ringbench"));
    alone.args(args).arg(root.join("alone")).args(["--ring", "1"]);
    assert_eq!(term_after(alone, 2), Some(143));
    let guard = common::lock();
    let mut job = common::mpirun_command(2);
    job.args(args).arg(root.join("job"));
    assert_eq!(term_after(job, 4), Some(1));
    drop(guard);
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defect 8: a link planted at a table's `.partial` name is removed, never
/// written through; its target is untouched and the table lands as a file of its own.
#[test]
fn reduce_never_writes_through_a_link_planted_at_its_partial_file() {
    let root = common::temp_root("partial-link");
    let dir = run_ok(&root, 2, "linked", &[]);
    remove_tables(&dir);
    let target = root.join("precious.txt");
    std::fs::write(&target, "not a table").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("summary.csv.partial")).unwrap();
    let out = ringbench(&["reduce", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a table");
    let meta = std::fs::symlink_metadata(dir.join("summary.csv")).unwrap();
    assert!(meta.file_type().is_file() && !dir.join("summary.csv.partial").exists());
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defects 12 and 13: a second look at an incomplete run (`reduce --partial`)
/// replaces the first look's tables instead of failing on them; a FIFO at a rank file's name is
/// refused at once, named, instead of hanging the reader.
#[test]
fn a_second_partial_look_replaces_the_first_and_a_fifo_rank_file_is_refused() {
    let root = common::temp_root("looks");
    let dir = run_ok(&root, 2, "looked", &[]);
    remove_tables(&dir);
    let (r0, r1, aside) = (dir.join("rank-00000.h5"), dir.join("rank-00001.h5"), root.join("aside.h5"));
    std::fs::rename(&r1, &aside).unwrap();
    let first = ringbench(&["reduce", "--partial", dir.to_str().unwrap()]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let look = std::fs::read(dir.join("ranks-partial.csv")).unwrap();
    // The other rank's file now, and not this one's: a different look.
    std::fs::rename(&aside, &r1).unwrap();
    std::fs::rename(&r0, &aside).unwrap();
    let second = ringbench(&["reduce", "--partial", dir.to_str().unwrap()]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_ne!(std::fs::read(dir.join("ranks-partial.csv")).unwrap(), look, "the latest look replaced the first");
    // A FIFO where rank 0's file belongs.
    let made = std::process::Command::new("mkfifo").arg(&r0).status().unwrap();
    assert!(made.success());
    let t0 = std::time::Instant::now();
    let o = ringbench(&["reduce", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("rank-00000.h5 is not a regular file"), "{err}");
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    std::fs::remove_dir_all(&root).ok();
}

/// Sets attribute `name` of every rank's `ring` group with `f`.
fn plant_attr(dir: &Path, ranks: usize, f: impl Fn(&hdf5::Group)) {
    for r in 0..ranks {
        let h5 = hdf5::File::open_rw(rankfile::rank_file(dir, r)).unwrap();
        f(&h5.group("ring").unwrap());
    }
}

/// Hardening round 2, defects 14 and 6: finite values no run can have written are refused by
/// `reduce` as the non-finite ones are, naming rank, file and value; and `--calibrate` reads a run
/// through the same checks (a planted NaN, a link faster than any, a wrapped byte count).
#[test]
fn implausible_finite_values_are_refused_by_reduce_and_by_calibrate() {
    use hdf5::types::VarLenUnicode;
    let root = temp_root("implausible");
    let dir = run_ok(&root, 2, "a", &[]);
    remove_tables(&dir);
    let pristine: Vec<Vec<u8>> = (0..2).map(|r| std::fs::read(rankfile::rank_file(&dir, r)).unwrap()).collect();
    let restore = || (0..2).for_each(|r| std::fs::write(rankfile::rank_file(&dir, r), &pristine[r]).unwrap());
    let dataset = |name: &'static str, v: f64| {
        move |g: &hdf5::Group| {
            let ds = g.dataset(name).unwrap();
            let mut x = ds.read_raw::<f64>().unwrap();
            x[0] = v;
            ds.write_raw(&x).unwrap();
        }
    };
    let cases: Vec<(Box<dyn Fn(&hdf5::Group)>, &str)> = vec![
        (Box::new(dataset("iter_s", 1e300)), "dataset ring/iter_s[0] = 1e300 s: longer than any run can take"),
        (Box::new(dataset("hidden_s", 1e-3)), "dataset ring/hidden_s[0] = 0.001: the MPI transport moves data only inside its calls"),
        (Box::new(|g: &hdf5::Group| g.attr("linear_flops").unwrap().write_scalar(&f64::NAN).unwrap()), "ring/flops_linear = NaN"),
        (Box::new(|g: &hdf5::Group| g.attr("peak_buffers_bytes").unwrap().write_scalar(&u64::MAX).unwrap()), "more than any device holds"),
        (
            Box::new(|g: &hdf5::Group| g.attr("end_utc").unwrap().write_scalar(&"yesterday".parse::<VarLenUnicode>().unwrap()).unwrap()),
            "ring/end_utc = \"yesterday\": not a time",
        ),
        (
            Box::new(|g: &hdf5::Group| {
                let a = g.attr("config").unwrap();
                let config = a.read_scalar::<VarLenUnicode>().unwrap().as_str().replace("\"iters\":3", "\"iters\":9");
                a.write_scalar(&config.parse::<VarLenUnicode>().unwrap()).unwrap();
            }),
            "the ring run is marked complete with 3 of its 9 measured iterations",
        ),
    ];
    for (plant, want) in &cases {
        restore();
        plant_attr(&dir, 2, plant);
        let o = ringbench(&["reduce", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "want {want:?} in {err}");
        assert!(!dir.join("summary.csv").exists(), "{want}: nothing is written");
    }
    // --calibrate reads through the same checks: a planted NaN, and a wrapped byte count.
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--strategy", "ring", "--ring", "2", "--calibrate", dir.to_str().unwrap()];
        args.extend_from_slice(common::CPU_PROFILE);
        args.extend_from_slice(extra);
        ringbench(&args)
    };
    for (plant, want) in [
        (Box::new(dataset("comm_s", f64::NAN)) as Box<dyn Fn(&hdf5::Group)>, "dataset ring/comm_s[0] = NaN"),
        (
            Box::new(|g: &hdf5::Group| {
                let ds = g.dataset("bytes_sent").unwrap();
                let mut x = ds.read_raw::<u64>().unwrap();
                x[0] = u64::MAX;
                ds.write_raw(&x).unwrap();
            }),
            "dataset ring/bytes_sent[0] = 18446744073709551615, but this config moves",
        ),
    ] {
        restore();
        plant_attr(&dir, 2, &plant);
        let o = plan(&[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("--calibrate") && err.contains(want), "want {want:?} in {err}");
    }
    // A communication time too short for the bytes moved: faster than any link.
    restore();
    plant_attr(&dir, 2, |g: &hdf5::Group| {
        let ds = g.dataset("comm_s").unwrap();
        let x = ds.read_raw::<f64>().unwrap();
        ds.write_raw(&vec![1e-300; x.len()]).unwrap();
    });
    let err = String::from_utf8_lossy(&plan(&[]).stderr).into_owned();
    assert!(err.contains("faster than any link, so no measurement"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defect 5: --peak-tflops applies before calibrating, so the calibrated
/// projection is the same whatever peak it is stated against; a peak below what the run measured
/// is refused naming that flag.
#[test]
fn calibrate_measures_against_the_peak_in_force() {
    let root = temp_root("peak");
    let dir = run_ok(&root, 2, "a", &[]);
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--strategy", "ring", "--ring", "2", "--calibrate", dir.to_str().unwrap(), "--json"];
        args.extend_from_slice(&common::CPU_PROFILE[..2]);
        args.extend_from_slice(&common::CPU_PROFILE[4..]);
        args.extend_from_slice(extra);
        ringbench(&args)
    };
    let json = |o: std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (base, tenth) = (json(plan(&["--peak-tflops", "989"])), json(plan(&["--peak-tflops", "98.9"])));
    let eff = |v: &serde_json::Value| v["hardware"]["gemm_efficiency"].as_f64().unwrap();
    assert!((eff(&tenth) / eff(&base) - 10.0).abs() < 1e-9, "{} vs {}", eff(&tenth), eff(&base));
    let tps = |v: &serde_json::Value| v["tps_projected"].as_f64().unwrap();
    assert!((tps(&tenth) / tps(&base) - 1.0).abs() < 1e-9, "{} vs {}", tps(&tenth), tps(&base));
    let o = plan(&["--peak-tflops", "0.001"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("above the peak of 1.0000e-3 it is measured against (--peak-tflops 0.001)"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defect 16: one measured iteration has no interval, and says so (the
/// console, and empty bounds in summary.csv) instead of an interval of zero width.
#[test]
fn an_interval_that_cannot_be_computed_is_reported_as_such() {
    let root = temp_root("one-iteration");
    let r = mpirun(2, &["run", "--strategy", "ring", "--iters", "1", "--out", root.to_str().unwrap(), "--run-id", "one"]);
    assert_eq!(r.status, Some(0), "{}", r.all());
    assert!(r.stdout.contains("95% CI not computable"), "{}", r.stdout);
    let mut table = csv::Reader::from_path(root.join("one").join("summary.csv")).unwrap();
    let header = table.headers().unwrap().clone();
    let row = table.records().next().unwrap().unwrap();
    for name in ["iter_ms_ci95_lo", "iter_ms_ci95_hi", "tps_ci95_lo", "tps_ci95_hi"] {
        assert_eq!(&row[header.iter().position(|h| h == name).unwrap()], "", "{name}");
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defect 9: a reader that stops reading (`| head -1`) ends nothing: `sweep`,
/// a long `plan`, `verify` and `run` go on quietly (no panic, exit 0) and a run saves all it
/// measured.
#[test]
fn a_closed_stdout_ends_no_command_and_loses_nothing() {
    let root = temp_root("closed-stdout");
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let out = root.to_str().unwrap();
    for cmd in [
        format!("{bin} sweep --strategy all --preset llama3-8b --seq-lens 8192,16384 --gpus 8,16 --quiet --out {out}/sweep"),
        format!("{bin} plan --strategy all --preset llama3-8b --tp 8 --ring 8"),
        format!("{bin} verify --strategy reference"),
        format!("{bin} run --strategy reference --out {out} --run-id closed"),
    ] {
        let o = Command::new("bash").args(["-c", &format!("set -o pipefail; {cmd} | head -1 > /dev/null")]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !err.contains("panicked"), "{cmd}: {:?}\n{err}", o.status);
    }
    let runs = rankfile::read(&rankfile::rank_file(&root.join("closed"), 0)).unwrap();
    assert_eq!(runs[0].status, ringbench::output::status::RunStatus::Complete);
    assert_eq!(runs[0].iterations.len(), runs[0].config.iters, "every measured iteration saved");
    std::fs::remove_dir_all(&root).ok();
}

/// Hardening round 2, defect 15: after one rank is killed outright (SIGKILL), the others' account
/// of what they saved names `*-partial.csv` only where such tables were written.
#[test]
fn after_a_sigkill_the_account_names_only_the_tables_written() {
    let root = temp_root("sigkill");
    let guard = common::lock();
    let (run, dir) = live_run(&root, "killed", "200");
    let pid = rankfile::read(&rankfile::rank_file(&dir, 1)).unwrap()[0].pid;
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let out = run.wait_with_output().unwrap();
    drop(guard);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let partial = dir.join("summary-partial.csv").exists();
    assert_eq!(err.contains("*-partial.csv"), partial, "said partial: {}, wrote partial: {partial}\n{err}", err.contains("*-partial.csv"));
    std::fs::remove_dir_all(&root).ok();
}
