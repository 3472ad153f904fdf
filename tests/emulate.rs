//! `run --emulate-world P --as-rank K`: one process does exactly rank K's work of a P-rank job.
//! Checked against a real P-rank launch of the same config: every emulated rank sends and receives
//! the bytes the real rank did, issues the same FLOPs (as the backend counts them, and as the FLOP
//! model says), and holds the same buffers (tp-pp: plus the
//! one scratch buffer its copies go through); and the results say "emulated" wherever they appear.

mod common;
use common::{mpirun, mpirun_with, temp_root};
use std::collections::HashMap;
use std::path::Path;

/// ranks.csv as (strategy, rank) -> column -> value.
fn ranks(dir: &Path) -> HashMap<(String, String), HashMap<String, String>> {
    let mut r = csv::Reader::from_path(dir.join("ranks.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            let row: HashMap<String, String> = header.iter().cloned().zip(rec.unwrap().iter().map(String::from)).collect();
            ((row["strategy"].clone(), row["rank"].clone()), row)
        })
        .collect()
}

const JOB: [&str; 14] =
    ["run", "--preset", "tiny", "--strategy", "all", "--tp", "2", "--pp", "2", "--ring", "4", "--decode-tokens", "3", "--quiet"];

#[test]
fn each_emulated_rank_does_exactly_the_real_ranks_work() {
    let root = temp_root("emulate");
    let out = root.to_str().unwrap();
    let real = mpirun(4, &[&JOB[..], &["--out", out, "--run-id", "real"]].concat());
    assert_eq!(real.status, Some(0), "{}", real.all());
    let real_ranks = ranks(&root.join("real"));
    // tp-pp's emulated copies go through one micro-batch of activations: 256 tokens x 64 x BF16;
    // tp-cp's (tp 2 x cp 2) through its context position's: 128 tokens.
    let gib = |tokens: usize| (tokens * 64 * 2) as f64 / (1u64 << 30) as f64;
    for k in 0..4 {
        let id = format!("emulated-{k}");
        let run = mpirun(1, &[&JOB[..], &["--out", out, "--run-id", &id, "--emulate-world", "4", "--as-rank", &k.to_string()]].concat());
        assert_eq!(run.status, Some(0), "{}", run.all());
        let stdout = &run.stdout;
        assert!(stdout.contains(&format!("one process, emulated rank {k} of 4")), "{stdout}");
        assert!(stdout.contains(&format!("tp-pp (complete, EMULATED rank {k} of 4")), "{stdout}");
        assert!(stdout.contains("(emulated: one rank's work each, not a measured job)"), "{stdout}");
        let dir = root.join(&id);
        let files: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(files.contains(&format!("rank-{k:05}.h5")) && files.iter().filter(|f| f.ends_with(".h5")).count() == 1, "{files:?}");
        let emulated = ranks(&dir);
        for strategy in ["tp-pp", "ring", "allgather", "ulysses", "usp", "tp-cp"] {
            let key = (strategy.to_string(), k.to_string());
            let (e, r) = (&emulated[&key], &real_ranks[&key]);
            assert_eq!(e["emulated"], "true");
            assert_eq!(r["emulated"], "false");
            // Measured on both sides: the bytes the metered communicator moved, and the FLOPs of
            // the ops the backend was asked to run.
            for column in [
                "sent_mib_per_iter",
                "received_mib_per_iter",
                "counted_linear_tflop_per_iter",
                "counted_attention_tflop_per_iter",
                "decode_sent_kib_per_iter",
                "decode_received_kib_per_iter",
                "kv_cache_gib",
            ] {
                assert!(!e[column].is_empty() && e[column] == r[column], "{strategy} rank {k}: {column}: {} vs {}", e[column], r[column]);
            }
            // And what ran is what the FLOP model, from the config alone, says this rank does.
            for (counted, model) in [
                ("counted_linear_tflop_per_iter", "linear_tflop_per_iter"),
                ("counted_attention_tflop_per_iter", "attention_tflop_per_iter"),
            ] {
                let (c, m): (f64, f64) = (r[counted].parse().unwrap(), r[model].parse().unwrap());
                assert!(m > 0.0 && (c / m - 1.0).abs() < 1e-6, "{strategy} rank {k}: {counted} {c} vs the model's {m}");
            }
            let extra = match strategy {
                "tp-pp" => gib(256),
                "tp-cp" => gib(128),
                _ => 0.0,
            };
            let (pe, pr): (f64, f64) = (e["peak_mem_gib"].parse().unwrap(), r["peak_mem_gib"].parse().unwrap());
            assert!((pe - pr - extra).abs() < 1e-6, "{strategy} rank {k}: peak {pe} GiB emulated vs {pr} GiB real (+ {extra} scratch)");
        }
        let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        let mut lines = summary.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let (ie, ir, iw) = (
            header.iter().position(|h| *h == "emulated").unwrap(),
            header.iter().position(|h| *h == "emulated_rank").unwrap(),
            header.iter().position(|h| *h == "world").unwrap(),
        );
        for line in lines {
            let row: Vec<&str> = line.split(',').collect();
            assert_eq!((row[ie], row[ir], row[iw]), ("true", k.to_string().as_str(), "4"), "{line}");
        }
        // The offline reducer reads an emulated run's single rank file and writes the same tables.
        let reduced = std::process::Command::new(env!("CARGO_BIN_EXE_ringbench")).args(["reduce", dir.to_str().unwrap()]).output().unwrap();
        assert!(reduced.status.success(), "{}", String::from_utf8_lossy(&reduced.stderr));
        assert!(String::from_utf8_lossy(&reduced.stdout).contains("EMULATED"));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_emulation_flags_are_refused_before_any_work() {
    let root = temp_root("emulate-bad");
    let out = root.to_str().unwrap();
    let cases: [(usize, &[&str], &str); 4] = [
        (1, &["--emulate-world", "4", "--as-rank", "4"], "--as-rank 4: must be below --emulate-world 4"),
        (1, &["--emulate-world", "0", "--as-rank", "0"], "--emulate-world 0: must be at least 1"),
        (2, &["--emulate-world", "4", "--as-rank", "1"], "the job has 2 processes (launch it with -np 1)"),
        (1, &["--emulate-world", "4"], "--as-rank <K>"),
    ];
    for (np, flags, want) in cases {
        let run = mpirun(np, &[&["run", "--strategy", "ring", "--out", out], flags].concat());
        assert_ne!(run.status, Some(0), "{flags:?}");
        assert!(run.stderr.contains(want), "{flags:?}: want {want:?} in\n{}", run.stderr);
    }
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert!(left.is_empty(), "no run directory for refused input: {left:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sigterm_keeps_an_emulated_ranks_iterations_under_its_own_rank() {
    let root = temp_root("emulate-sigterm");
    let out = root.to_str().unwrap();
    let args = [
        "run",
        "--strategy",
        "ring",
        "--preset",
        "small",
        "--iters",
        "200",
        "--emulate-world",
        "4",
        "--as-rank",
        "2",
        "--out",
        out,
        "--run-id",
        "cut",
        "--quiet",
    ];
    let run = mpirun_with(1, &args, &[], Some(4));
    let all = run.all();
    assert_ne!(run.status, Some(0), "{all}");
    let dir = root.join("cut");
    let runs = ringbench::output::rankfile::read(&dir.join("rank-00002.h5")).unwrap_or_else(|e| panic!("{e:#}\n{all}"));
    assert_eq!(runs[0].status.name(), "interrupted");
    assert!(!runs[0].iterations.is_empty() && runs[0].iterations.len() < 200, "{all}");
    // The one file is the whole emulated run: complete tables, not partial ones.
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap_or_else(|e| panic!("summary.csv: {e}\n{all}"));
    assert!(summary.lines().nth(1).unwrap().contains(",incomplete,"), "{summary}");
    assert!(all.contains("interrupted by signal 15") && !all.contains("missing"), "{all}");
    let _ = std::fs::remove_dir_all(&root);
}
