//! `ringbench run` end to end: the results directory, its files' schema (read back with the hdf5
//! crate and with h5dump), the arithmetic of tokens/s and prefill time per token, `reduce`, and the rules
//! that keep results from being lost.

mod common;
use common::{mpirun, temp_root};
use std::path::Path;
use std::process::Command;

/// The done-when launch of the results issue, into `root/<id>`.
fn run_all(root: &Path, id: &str) -> common::Run {
    let out = root.to_str().unwrap();
    mpirun(
        4,
        &[
            "run",
            "--backend",
            "cpu",
            "--preset",
            "tiny",
            "--strategy",
            "all",
            "--tp",
            "2",
            "--pp",
            "2",
            "--ring",
            "4",
            // And the decode steps after each prefill, whose columns and charts are checked too.
            "--decode-tokens",
            "4",
            "--out",
            out,
            "--run-id",
            id,
        ],
    )
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|rec| rec.unwrap().iter().map(String::from).collect()).collect();
    (header, rows)
}

fn col<'a>(header: &[String], row: &'a [String], name: &str) -> &'a str {
    let i = header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    &row[i]
}

fn num(header: &[String], row: &[String], name: &str) -> f64 {
    col(header, row, name).parse().unwrap_or_else(|_| panic!("{name} = {:?} is not a number", col(header, row, name)))
}

fn ringbench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench")).args(args).output().unwrap()
}

/// What `--strategy all` runs on 4 ranks of the tiny model, in order.
const STRATEGIES: [&str; 7] = ["tp-pp", "ring", "allgather", "ulysses", "usp", "tp-cp", "double-ring"];

const SUMMARY_COLUMNS: &[&str] = &[
    "run_id",
    "strategy",
    "sequence",
    "status",
    "invalid_reason",
    "device",
    "timing",
    "iters_measured",
    "emulated",
    "emulated_rank",
    "backend",
    "comm",
    "world",
    "tp",
    "pp",
    "sp",
    "ulysses",
    "ring",
    "cp",
    "windows",
    "window",
    "split",
    "layout",
    "preset",
    "layers",
    "d_model",
    "heads",
    "kv_heads",
    "mlp",
    "mlp_act",
    "seq_len",
    "batch",
    "micro_batch",
    "causal",
    "decode_tokens",
    "train",
    "recompute",
    "seed",
    "warmup",
    "iters",
    "tokens_per_iter",
    "tps",
    "tps_ci95_lo",
    "tps_ci95_hi",
    "prefill_us_per_token",
    "iter_ms_mean",
    "iter_ms_std",
    "iter_ms_cv",
    "iter_ms_min",
    "iter_ms_median",
    "iter_ms_max",
    "iter_ms_ci95_lo",
    "iter_ms_ci95_hi",
    "comm_ms_max",
    "comm_ms_mean",
    "hidden_ms_max",
    "hidden_ms_mean",
    "comm_hidden_fraction",
    "compute_ms_max",
    "compute_ms_mean",
    "sent_mib_per_iter_max",
    "peak_mem_gib_max",
    "peak_mem_gib_mean",
    "peak_device_gib_max",
    "tflops_per_gpu",
    "mfu",
    "gpu_util_pct_mean",
    "gpu_util_pct_max",
    "compute_floor_ms",
    "efficiency_vs_floor",
    "ttft_ms_mean",
    "ttft_ms_ci95_lo",
    "ttft_ms_ci95_hi",
    "tpot_ms_mean",
    "tpot_ms_std",
    "tpot_ms_cv",
    "tpot_ms_min",
    "tpot_ms_median",
    "tpot_ms_max",
    "tpot_ms_ci95_lo",
    "tpot_ms_ci95_hi",
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "decode_tps",
    "decode_tps_per_user",
    "decode_comm_ms_per_step_max",
    "decode_comm_ms_per_step_mean",
    "decode_sent_kib_per_step_max",
    "kv_cache_gib_max",
    "kv_cache_gib_mean",
    "train_forward_ms_max",
    "train_forward_comm_ms_max",
    "train_forward_hidden_ms_max",
    "train_backward_ms_max",
    "train_backward_comm_ms_max",
    "train_backward_hidden_ms_max",
    "grad_reduce_ms_max",
    "grad_reduce_mib_per_step_max",
    "ringbench_version",
    "git_commit",
    "start_utc",
    "end_utc",
];

#[test]
fn a_run_writes_rank_files_and_tables_that_reduce_rebuilds_byte_for_byte() {
    let root = temp_root("results");
    let run = run_all(&root, "both");
    let out = run.all();
    assert_eq!(run.status, Some(0), "{out}");
    let dir = root.join("both");
    for r in 0..4 {
        assert!(dir.join(format!("rank-{r:05}.h5")).is_file(), "rank {r} file missing:\n{out}");
    }
    assert!(out.contains("ring speed-up over tp-pp:"), "{out}");
    // The side-by-side table: one column per strategy run, and each against the fastest.
    let header = out
        .lines()
        .find(|l| l.trim_start().starts_with("tp-pp") && l.trim_end().ends_with("double-ring"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), STRATEGIES, "{out}");
    assert!(out.lines().any(|l| l.starts_with("fastest: ") && l.contains("x its tokens/s at ")), "{out}");

    // summary.csv: one row per strategy run, every column, and the arithmetic of its numbers.
    let (header, rows) = read_csv(&dir.join("summary.csv"));
    assert_eq!(header, SUMMARY_COLUMNS);
    assert_eq!(rows.iter().map(|r| col(&header, r, "strategy")).collect::<Vec<_>>(), STRATEGIES);
    for row in &rows {
        let tokens = num(&header, row, "tokens_per_iter");
        assert_eq!(tokens, 2.0 * 256.0);
        let iter_s = num(&header, row, "iter_ms_mean") / 1e3;
        let (tps, prefill_s_per_token) = (num(&header, row, "tps"), num(&header, row, "prefill_us_per_token") / 1e6);
        // Printed to 3 decimals (tps) and 6 (ms, us): equal up to that rounding.
        assert!((tps - tokens / iter_s).abs() <= 1e-6 * tps + 1e-3, "tps {tps} vs {tokens} / {iter_s}");
        assert!(
            (prefill_s_per_token - iter_s / tokens).abs() <= 1e-6 * prefill_s_per_token + 1e-12,
            "tpot {prefill_s_per_token} vs {iter_s} / {tokens}"
        );
        // The interval, or (few, noisy iterations) none at all, said so by both bounds empty.
        if col(&header, row, "tps_ci95_lo").is_empty() {
            assert_eq!(col(&header, row, "tps_ci95_hi"), "");
        } else {
            let (lo, hi) = (num(&header, row, "tps_ci95_lo"), num(&header, row, "tps_ci95_hi"));
            assert!(0.0 < lo && lo <= tps && tps <= hi && hi.is_finite(), "{lo} <= {tps} <= {hi}");
        }
        if let Ok(lo) = col(&header, row, "iter_ms_ci95_lo").parse::<f64>() {
            assert!(lo >= 0.0, "a time's bound never goes below zero: {lo}");
        }
        let (min, med, max) = (num(&header, row, "iter_ms_min"), num(&header, row, "iter_ms_median"), num(&header, row, "iter_ms_max"));
        assert!(min <= med && med <= max && min > 0.0);
        assert!(num(&header, row, "comm_ms_max") > 0.0 && num(&header, row, "compute_ms_max") > 0.0);
        assert!(num(&header, row, "sent_mib_per_iter_max") > 0.0 && num(&header, row, "peak_mem_gib_max") > 0.0);
        assert_eq!(col(&header, row, "mfu"), "", "no MFU without a known device peak");
        assert_eq!(col(&header, row, "gpu_util_pct_mean"), "", "no GPU, no utilization");
        assert_eq!(col(&header, row, "status"), "complete");
        assert_eq!(col(&header, row, "timing"), "measured", "the CPU backend's timings are measurements");
        assert_eq!((col(&header, row, "emulated"), col(&header, row, "comm")), ("false", "mpi"));
        // MPI on the host moves data only inside its calls: nothing is hidden, and it says so.
        assert_eq!((num(&header, row, "hidden_ms_max"), num(&header, row, "comm_hidden_fraction")), (0.0, 0.0));
    }
    assert!(out.contains("host transport: MPI moves data only inside its calls"), "{out}");

    // ranks.csv: one row per rank and strategy run.
    let (rheader, rrows) = read_csv(&dir.join("ranks.csv"));
    assert_eq!(rrows.len(), 4 * STRATEGIES.len());
    for name in ["rank", "host", "iter_ms_mean", "iter_ms_ci95_hi", "comm_ms_median", "compute_ms_cv", "peak_mem_gib", "tflops"] {
        assert!(rheader.iter().any(|h| h == name), "ranks.csv lacks {name}: {rheader:?}");
    }

    // The rank files, through the crate: one group per strategy run with its per-iteration arrays.
    let file = hdf5::File::open(dir.join("rank-00002.h5")).unwrap();
    assert_eq!(file.member_names().unwrap(), vec!["allgather", "double-ring", "ring", "tp-cp", "tp-pp", "ulysses", "usp"]);
    let g = file.group("ring").unwrap();
    for attr in [
        "config",
        "strategy",
        "run_id",
        "hostname",
        "device",
        "libraries",
        "ringbench_version",
        "git_commit",
        "start_utc",
        "end_utc",
        "status",
    ] {
        assert!(g.attr(attr).is_ok(), "attribute {attr} missing");
    }
    assert_eq!(g.attr("rank").unwrap().read_scalar::<u64>().unwrap(), 2);
    let iter_s = g.dataset("iter_s").unwrap().read_raw::<f64>().unwrap();
    assert_eq!(iter_s.len(), 3);
    assert!(iter_s.iter().all(|&t| t > 0.0));
    assert_eq!(g.dataset("bytes_sent").unwrap().read_raw::<u64>().unwrap().len(), 3);
    assert_eq!(g.dataset("hidden_s").unwrap().read_raw::<f64>().unwrap(), vec![0.0; 3]);
    drop(file);
    // The memory estimate that refuses oversized configs is exactly what each rank allocated.
    for r in 0..4 {
        for run in ringbench::output::rankfile::read(&dir.join(format!("rank-{r:05}.h5"))).unwrap() {
            let est = ringbench::strategy::memory_estimate(&run.config, r, false);
            assert_eq!(
                run.memory.buffers_peak_bytes,
                est.weights + est.activations + est.kv_cache,
                "rank {r} {}",
                run.config.strategy.name()
            );
        }
    }
    // ...and through h5dump, as other tools would see them.
    let dump = Command::new("h5dump")
        .args(["-A", dir.join("rank-00000.h5").to_str().unwrap()])
        .output()
        .expect("h5dump (hdf5-tools) is installed");
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("GROUP \"tp-pp\"") && dump.contains("ATTRIBUTE \"config\"") && dump.contains("\"layout\":\"zigzag\""), "{dump}");

    // reduce rebuilds both tables byte for byte from the rank files alone.
    let (summary, ranks) = (std::fs::read(dir.join("summary.csv")).unwrap(), std::fs::read(dir.join("ranks.csv")).unwrap());
    std::fs::remove_file(dir.join("summary.csv")).unwrap();
    std::fs::remove_file(dir.join("ranks.csv")).unwrap();
    let r = ringbench(&["reduce", dir.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(dir.join("summary.csv")).unwrap(), summary);
    assert_eq!(std::fs::read(dir.join("ranks.csv")).unwrap(), ranks);
    // Run again over identical tables: nothing to change, success.
    assert!(ringbench(&["reduce", dir.to_str().unwrap()]).status.success());

    // summary.json beside them: every summary column, typed, with its unit, and the config.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let (header, rows) = read_csv(&dir.join("summary.csv"));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), rows.len());
    for (run, row) in runs.iter().zip(&rows) {
        for h in &header {
            assert!(run.get(h).is_some(), "summary.json lacks {h}");
        }
        assert_eq!(run["tps"].as_f64().unwrap(), num(&header, row, "tps"));
        assert_eq!(run["config"]["strategy"].as_str().unwrap(), col(&header, row, "strategy"));
    }
    for (column, unit) in [("tps", "tokens/s"), ("iter_ms_mean", "ms"), ("peak_mem_gib_max", "GiB"), ("prefill_us_per_token", "us/token")] {
        assert_eq!(json["units"][column], unit, "{column}");
    }
    // What each chart's subtitle must say, read from the run's own table.
    let row = &rows[0];
    let rows_cfg = (
        format!(
            "tiny: {} layers, d_model {}, {} heads, mlp {}",
            col(&header, row, "layers"),
            col(&header, row, "d_model"),
            col(&header, row, "heads"),
            col(&header, row, "mlp")
        ),
        col(&header, row, "seq_len").to_string(),
        col(&header, row, "batch").to_string(),
        col(&header, row, "micro_batch").to_string(),
        col(&header, row, "device").to_string(),
    );

    // report: PNG charts next to the CSVs.
    let r = ringbench(&["report", dir.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Decode: TTFT is the prefill's time, TPOT's and ITL's figures consistent with each other.
    for row in &rows {
        let (ttft, iter) = (num(&header, row, "ttft_ms_mean"), num(&header, row, "iter_ms_mean"));
        let (tpot, batch) = (num(&header, row, "tpot_ms_mean"), num(&header, row, "batch"));
        let (p50, p90, p99) = (num(&header, row, "itl_ms_p50"), num(&header, row, "itl_ms_p90"), num(&header, row, "itl_ms_p99"));
        assert!(ttft == iter && tpot > 0.0 && p50 > 0.0 && p50 <= p90 && p90 <= p99, "{row:?}");
        let tps = num(&header, row, "decode_tps");
        assert!((tps - batch / (tpot / 1e3)).abs() <= 1e-3 * tps + 1e-3, "decode tokens/s {tps} = batch / TPOT");
        assert!(num(&header, row, "kv_cache_gib_max") > 0.0 && col(&header, row, "decode_tokens") == "4");
    }
    for name in ["tps", "iterations", "memory", "compute_comm", "ttft_tpot", "itl"] {
        let png = std::fs::read(dir.join(format!("{name}.png"))).unwrap_or_else(|e| panic!("{name}.png: {e}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png signature");
        assert_eq!(&png[12..16], b"IHDR");
        let (w, h) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
        assert_eq!((w, h), (1200, 720), "{name}.png size");
        assert!(png.len() > 10_000, "{name}.png has content");
        // The subtitle drawn on it is the run's config, as the chart code received it.
        let text = ringbench::chart::text_chunks(&png);
        let subtitle = &text.iter().find(|(k, _)| k == "Description").unwrap_or_else(|| panic!("{name}.png: no subtitle in {text:?}")).1;
        let cfg = &rows_cfg;
        let want = format!("{}; {} tokens x batch {}, micro-batch {}; backend cpu on {}; measured", cfg.0, cfg.1, cfg.2, cfg.3, cfg.4);
        assert_eq!(subtitle, &want, "{name}.png");
    }
    // Charts are drawn the same way twice: a second report leaves them as they are.
    assert!(ringbench(&["report", dir.to_str().unwrap()]).status.success());

    // An existing run directory is refused before any work, and what it holds is kept.
    let again = run_all(&root, "both");
    assert_eq!(again.status, Some(2), "{}", again.all());
    assert!(again.stderr.contains("run directory") && again.stderr.contains("exists"), "{}", again.all());
    assert_eq!(std::fs::read(dir.join("summary.csv")).unwrap(), summary);

    // Two run directories reduce into one combined table.
    let second = mpirun(2, &["run", "--strategy", "ring", "--out", root.to_str().unwrap(), "--run-id", "ring-only", "--quiet"]);
    assert_eq!(second.status, Some(0), "{}", second.all());
    let combined = root.join("combined");
    let r = ringbench(&["reduce", dir.to_str().unwrap(), root.join("ring-only").to_str().unwrap(), "--out", combined.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (header, rows) = read_csv(&combined.join("summary.csv"));
    let ids: Vec<_> = rows.iter().map(|r| (col(&header, r, "run_id").to_string(), col(&header, r, "strategy").to_string())).collect();
    let mut want: Vec<(String, String)> = STRATEGIES.iter().map(|s| ("both".to_string(), s.to_string())).collect();
    want.push(("ring-only".into(), "ring".into()));
    assert_eq!(ids, want);
    assert_eq!(read_csv(&combined.join("ranks.csv")).1.len(), 4 * STRATEGIES.len() + 2);
    assert!(combined.join("summary.json").is_file());
    // report charts the combined directory from the run directories it names.
    let r = ringbench(&["report", combined.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let tps = std::fs::read(combined.join("tps.png")).unwrap();
    let legend = ringbench::chart::text_chunks(&tps);
    assert!(legend.iter().any(|(k, v)| k == "Description" && v.contains("tiny: 2 layers")), "{legend:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn reduce_refuses_a_damaged_run_directory_naming_the_rank() {
    let root = temp_root("damaged");
    let run = run_all(&root, "full");
    assert_eq!(run.status, Some(0), "{}", run.all());
    let dir = root.join("full");
    for f in ["summary.csv", "ranks.csv"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }

    // A missing rank file.
    let missing = root.join("missing");
    std::fs::create_dir(&missing).unwrap();
    for r in [0, 1, 3] {
        std::fs::copy(dir.join(format!("rank-{r:05}.h5")), missing.join(format!("rank-{r:05}.h5"))).unwrap();
    }
    let r = ringbench(&["reduce", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("rank 2") && err.contains("missing"), "{err}");
    assert!(!missing.join("summary.csv").exists() && !missing.join("ranks.csv").exists());

    // A truncated rank file.
    let truncated = root.join("truncated");
    std::fs::create_dir(&truncated).unwrap();
    for r in 0..4 {
        std::fs::copy(dir.join(format!("rank-{r:05}.h5")), truncated.join(format!("rank-{r:05}.h5"))).unwrap();
    }
    let bytes = std::fs::read(truncated.join("rank-00003.h5")).unwrap();
    std::fs::write(truncated.join("rank-00003.h5"), &bytes[..bytes.len() / 2]).unwrap();
    let r = ringbench(&["reduce", truncated.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("rank 3") && err.contains("cannot read"), "{err}");
    assert!(!truncated.join("summary.csv").exists() && !truncated.join("ranks.csv").exists());

    // The intact directory still reduces.
    assert!(ringbench(&["reduce", dir.to_str().unwrap()]).status.success());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn run_ids_and_output_places_are_checked_before_any_work() {
    let root = temp_root("ids");
    let r = mpirun(2, &["run", "--strategy", "ring", "--out", root.to_str().unwrap(), "--run-id", "../escape"]);
    assert_eq!(r.status, Some(2), "{}", r.all());
    assert!(r.stderr.contains("--run-id \"../escape\""), "{}", r.all());
    // A file where the results root should be.
    let file = root.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let r = mpirun(2, &["run", "--strategy", "ring", "--out", file.to_str().unwrap()]);
    assert_eq!(r.status, Some(2), "{}", r.all());
    assert!(r.stderr.contains("--out"), "{}", r.all());
    std::fs::remove_dir_all(&root).unwrap();
}

/// With grouped K/V heads (split over TP ranks, and replicated where tp exceeds them) and SwiGLU,
/// the memory estimate is still exactly what each rank allocated.
#[test]
fn the_memory_estimate_is_what_gqa_and_swiglu_ranks_allocate() {
    let root = temp_root("results-gqa");
    for (id, split) in [("tp2pp2", ["--tp", "2", "--pp", "2"]), ("tp4", ["--tp", "4", "--pp", "1"])] {
        let mut args = vec!["run", "--preset", "tiny", "--strategy", "all", "--ring", "4", "--kv-heads", "2", "--mlp-act", "swiglu"];
        args.extend(split);
        args.extend(["--out", root.to_str().unwrap(), "--run-id", id, "--quiet"]);
        let run = mpirun(4, &args);
        assert_eq!(run.status, Some(0), "{}", run.all());
        for r in 0..4 {
            for run in ringbench::output::rankfile::read(&root.join(id).join(format!("rank-{r:05}.h5"))).unwrap() {
                let est = ringbench::strategy::memory_estimate(&run.config, r, false);
                assert_eq!(
                    run.memory.buffers_peak_bytes,
                    est.weights + est.activations + est.kv_cache,
                    "{id} rank {r} {}",
                    run.config.strategy.name()
                );
            }
        }
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Front door (issue 27): under mpirun a rank's stdout is a pty even when mpirun's own output goes
/// to a file, so a progress bar would fill the log with its frames; the log has no escape code
/// and no carriage return.
#[test]
fn a_log_written_under_mpirun_has_no_progress_frames() {
    let root = common::temp_root("log-frames");
    let run = common::mpirun(
        2,
        &["run", "--strategy", "ring", "--preset", "small", "--seq-len", "512", "--iters", "10", "--out", root.to_str().unwrap()],
    );
    assert_eq!(run.status, Some(0), "{}", run.all());
    let all = run.all();
    assert!(!all.contains('\u{1b}') && !all.contains('\r'), "{all:?}");
    std::fs::remove_dir_all(&root).ok();
}

/// A training run (issue 30): each step's phases in the rank files and the summary, the
/// gradient all-reduce's bytes as ring states them (every weight in FP32, 2 (n - 1) / n of it
/// per rank), the FLOPs three times the forward's, and the memory estimate exactly what each
/// rank allocated with its activations kept.
#[test]
fn a_training_run_reports_its_phases_gradient_traffic_and_memory() {
    let root = temp_root("results-train");
    let run = mpirun(2, &["run", "--train", "--strategy", "ring", "--preset", "tiny", "--out", root.to_str().unwrap(), "--run-id", "t"]);
    let out = run.all();
    assert_eq!(run.status, Some(0), "{out}");
    assert!(out.contains("training step  forward") && out.contains("gradient all-reduce"), "{out}");
    let dir = root.join("t");
    let (header, rows) = read_csv(&dir.join("summary.csv"));
    let row = &rows[0];
    assert_eq!(col(&header, row, "train"), "true");
    for c in ["train_forward_ms_max", "train_backward_ms_max", "grad_reduce_ms_max"] {
        assert!(num(&header, row, c) > 0.0, "{c}");
    }
    // tiny: 2 layers of d 64 (norms 2 x 64, W_q 64 x 64, W_kv 64 x 128, W_o 64 x 64, W_up 64 x
    // 256, W_down 256 x 64), FP32; a 2-rank ring all-reduce sends 2 (n - 1) / n = all of each.
    let per_layer = 2 * 64 + 64 * 64 + 64 * 128 + 64 * 64 + 64 * 256 + 256 * 64;
    let want_mib = (2 * per_layer * 4) as f64 / (1 << 20) as f64;
    assert!((num(&header, row, "grad_reduce_mib_per_step_max") - want_mib).abs() < 1e-6, "{want_mib}");
    for r in 0..2 {
        let path = dir.join(format!("rank-{r:05}.h5"));
        for run in ringbench::output::rankfile::read(&path).unwrap() {
            assert!(run.iterations.iter().all(|i| i.phases.seconds.iter().all(|&p| p > 0.0)), "rank {r}: {:?}", run.iterations);
            // Ring's forward and backward move K/V, its reduction the gradients: each phase communicates,
            // and no phase's communication exceeds the phase.
            for i in &run.iterations {
                assert!((0..3).all(|k| i.phases.comm_s[k] > 0.0 && i.phases.comm_s[k] <= i.phases.seconds[k]), "rank {r}: {:?}", i.phases);
            }
            let forward = ringbench::metrics::flops::rank_flops(&ringbench::config::RunConfig { train: false, ..run.config.clone() }, r);
            assert_eq!(run.flops.linear, 3.0 * forward.linear);
            let est = ringbench::strategy::memory_estimate(&run.config, r, false);
            assert_eq!(run.memory.buffers_peak_bytes, est.weights + est.activations, "rank {r}");
        }
    }
    std::fs::remove_dir_all(&root).ok();
}
