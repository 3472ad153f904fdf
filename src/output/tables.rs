//! The tables `reduce` writes: summary.csv (a row per strategy run) and ranks.csv (a row per
//! rank and run), every column named with its unit.

use super::rankfile::RankRun;
use super::summary::{mean, Measured, StrategySummary};
use crate::config::RunConfig;
use crate::metrics::Stats;
use anyhow::Result;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// The parallel sizes every strategy's spec names (tp, pp, sp), each a column, empty where a
/// strategy does not take it; then its whole split in words, and its layout where it has one.
fn parallel_columns(cfg: &RunConfig) -> Vec<(&'static str, String)> {
    let mine = crate::strategy::spec(cfg.strategy);
    let values: Vec<(&str, usize)> = mine.size_names.iter().copied().zip((mine.sizes)(cfg)).collect();
    let mut names: Vec<&'static str> = Vec::new();
    for s in crate::strategy::SPECS {
        for n in s.size_names {
            if !names.contains(n) {
                names.push(n);
            }
        }
    }
    let mut cols: Vec<(&'static str, String)> =
        names.into_iter().map(|n| (n, values.iter().find(|(v, _)| *v == n).map(|(_, x)| x.to_string()).unwrap_or_default())).collect();
    cols.push(("split", cfg.describe_split()));
    cols.push(("layout", if mine.uses_layout { cfg.layout.name().to_string() } else { String::new() }));
    cols
}

fn model_columns(cfg: &RunConfig) -> Vec<(&'static str, String)> {
    let m = &cfg.model;
    let mut cols = vec![
        ("emulated", cfg.emulate.is_some().to_string()),
        ("emulated_rank", cfg.emulate.map(|e| e.as_rank.to_string()).unwrap_or_default()),
        ("backend", cfg.backend.name().to_string()),
        ("comm", cfg.comm.name().to_string()),
        ("world", cfg.world().to_string()),
    ];
    cols.extend(parallel_columns(cfg));
    cols.extend([
        ("preset", cfg.preset.name().to_string()),
        ("layers", m.layers.to_string()),
        ("d_model", m.d_model.to_string()),
        ("heads", m.heads.to_string()),
        ("kv_heads", m.kv_heads.to_string()),
        ("mlp", m.mlp.to_string()),
        ("mlp_act", m.mlp_act.name().to_string()),
        ("seq_len", m.seq_len.to_string()),
        ("batch", m.batch.to_string()),
        ("micro_batch", cfg.micro_batch.to_string()),
        ("causal", cfg.causal.to_string()),
        ("decode_tokens", cfg.decode_tokens.to_string()),
        ("train", cfg.train.to_string()),
        ("recompute", cfg.recompute.to_string()),
        ("seed", cfg.seed.to_string()),
        ("warmup", cfg.warmup.to_string()),
        ("iters", cfg.iters.to_string()),
    ]);
    cols
}

fn stats_columns(prefix: &'static str, s: &Stats, scale: f64) -> Vec<(String, String)> {
    let f = |v: f64| format!("{:.6}", v * scale);
    vec![
        (format!("{prefix}_mean"), f(s.mean)),
        (format!("{prefix}_std"), f(s.std)),
        (format!("{prefix}_cv"), format!("{:.6}", s.cv())),
        (format!("{prefix}_min"), f(s.min)),
        (format!("{prefix}_median"), f(s.median)),
        (format!("{prefix}_max"), f(s.max)),
        (format!("{prefix}_ci95_lo"), s.ci95.map(|c| f(c.0)).unwrap_or_default()),
        (format!("{prefix}_ci95_hi"), s.ci95.map(|c| f(c.1)).unwrap_or_default()),
    ]
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// A table as (header, rows), from rows given as (column, value) pairs in one place.
pub(crate) type Table = (Vec<String>, Vec<Vec<String>>);

fn table(rows: Vec<Vec<(String, String)>>) -> Table {
    let header = rows.first().map(|r| r.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    (header, rows.into_iter().map(|r| r.into_iter().map(|(_, v)| v).collect()).collect())
}

fn own(cols: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    cols.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn measured_columns(m: &Measured) -> Vec<(String, String)> {
    let mut row = own(vec![
        ("tps", format!("{:.3}", m.tps)),
        ("tps_ci95_lo", m.tps_ci95.map(|c| format!("{:.3}", c.0)).unwrap_or_default()),
        ("tps_ci95_hi", m.tps_ci95.map(|c| format!("{:.3}", c.1)).unwrap_or_default()),
        ("prefill_us_per_token", format!("{:.6}", m.prefill_s_per_token * 1e6)),
    ]);
    row.extend(stats_columns("iter_ms", &m.iter, 1e3));
    row.extend(own(vec![
        ("comm_ms_max", format!("{:.6}", m.comm_s.0 * 1e3)),
        ("comm_ms_mean", format!("{:.6}", m.comm_s.1 * 1e3)),
        ("hidden_ms_max", format!("{:.6}", m.hidden_s.0 * 1e3)),
        ("hidden_ms_mean", format!("{:.6}", m.hidden_s.1 * 1e3)),
        ("comm_hidden_fraction", opt(m.hidden_fraction, 6)),
        ("compute_ms_max", format!("{:.6}", m.compute_s.0 * 1e3)),
        ("compute_ms_mean", format!("{:.6}", m.compute_s.1 * 1e3)),
        ("sent_mib_per_iter_max", format!("{:.6}", m.sent_per_iter_max / MIB)),
        ("peak_mem_gib_max", format!("{:.6}", m.peak_buffers.0 / GIB)),
        ("peak_mem_gib_mean", format!("{:.6}", m.peak_buffers.1 / GIB)),
        ("peak_device_gib_max", opt(m.peak_device_max.map(|b| b / GIB), 6)),
        ("tflops_per_gpu", format!("{:.6}", m.tflops_per_gpu)),
        ("mfu", opt(m.mfu, 6)),
        ("gpu_util_pct_mean", opt(m.gpu_util.map(|u| u.0), 3)),
        ("gpu_util_pct_max", opt(m.gpu_util.map(|u| u.1), 3)),
        ("compute_floor_ms", opt(m.compute_floor_s.map(|f| f * 1e3), 6)),
        ("efficiency_vs_floor", opt(m.efficiency_vs_floor, 6)),
    ]));
    row.extend(decode_columns(m));
    row.extend(train_columns(m));
    row
}

/// A training step's phases (docs/output.md): the slowest rank's mean of each; blank for a
/// forward pass (iter_ms is then the forward alone, and with --train the whole step).
fn train_columns(m: &Measured) -> Vec<(String, String)> {
    let t = m.train.as_ref();
    let ms = |v: Option<f64>| opt(v.map(|x| x * 1e3), 6);
    own(vec![
        ("train_forward_ms_max", ms(t.map(|t| t.forward_s))),
        ("train_forward_comm_ms_max", ms(t.map(|t| t.comm_s[0]))),
        ("train_forward_hidden_ms_max", ms(t.map(|t| t.hidden_s[0]))),
        ("train_backward_ms_max", ms(t.map(|t| t.backward_s))),
        ("train_backward_comm_ms_max", ms(t.map(|t| t.comm_s[1]))),
        ("train_backward_hidden_ms_max", ms(t.map(|t| t.hidden_s[1]))),
        ("grad_reduce_ms_max", ms(t.map(|t| t.grad_reduce_s))),
        ("grad_reduce_mib_per_step_max", opt(t.map(|t| t.grad_reduce_bytes / MIB), 6)),
    ])
}

/// The decode figures (docs/output.md): TTFT is the prefill's time; blank without decode steps.
fn decode_columns(m: &Measured) -> Vec<(String, String)> {
    let d = m.decode.as_ref();
    let ms = |v: Option<f64>| opt(v.map(|x| x * 1e3), 6);
    let mut row = own(vec![
        ("ttft_ms_mean", ms(d.map(|_| m.iter.mean))),
        ("ttft_ms_ci95_lo", ms(d.and(m.iter.ci95).map(|c| c.0))),
        ("ttft_ms_ci95_hi", ms(d.and(m.iter.ci95).map(|c| c.1))),
    ]);
    let blank = Stats::of(&[1.0]).expect("one value");
    let tpot = stats_columns("tpot_ms", d.map_or(&blank, |d| &d.tpot), 1e3);
    row.extend(tpot.into_iter().map(|(k, v)| (k, if d.is_some() { v } else { String::new() })));
    row.extend(own(vec![
        ("itl_ms_p50", ms(d.map(|d| d.itl.0))),
        ("itl_ms_p90", ms(d.map(|d| d.itl.1))),
        ("itl_ms_p99", ms(d.map(|d| d.itl.2))),
        ("decode_tps", opt(d.map(|d| d.tokens_per_s), 3)),
        ("decode_tps_per_user", opt(d.map(|d| d.tokens_per_s_per_user), 3)),
        ("decode_comm_ms_per_step_max", ms(d.map(|d| d.comm_s.0))),
        ("decode_comm_ms_per_step_mean", ms(d.map(|d| d.comm_s.1))),
        ("decode_sent_kib_per_step_max", opt(d.map(|d| d.sent_per_step_max / 1024.0), 6)),
        ("kv_cache_gib_max", opt(d.map(|d| d.kv_cache.0 / GIB), 6)),
        ("kv_cache_gib_mean", opt(d.map(|d| d.kv_cache.1 / GIB), 6)),
    ]));
    row
}

pub fn summary_table(summaries: &[StrategySummary]) -> Table {
    // The columns of a run with measurements, blank for a run without (same names either way).
    let blank = Measured {
        iter: Stats::of(&[1.0]).expect("one value"),
        tps: 0.0,
        tps_ci95: None,
        prefill_s_per_token: 0.0,
        comm_s: (0.0, 0.0),
        hidden_s: (0.0, 0.0),
        hidden_fraction: None,
        compute_s: (0.0, 0.0),
        sent_per_iter_max: 0.0,
        peak_buffers: (0.0, 0.0),
        peak_device_max: None,
        tflops_per_gpu: 0.0,
        mfu: None,
        gpu_util: None,
        compute_floor_s: None,
        efficiency_vs_floor: None,
        decode: None,
        train: None,
    };
    table(
        summaries
            .iter()
            .map(|s| {
                let f = &s.first;
                let mut row = own(vec![
                    ("run_id", f.run_id.clone()),
                    ("strategy", s.config.strategy.name().to_string()),
                    ("sequence", f.sequence.to_string()),
                    ("status", s.status.to_string()),
                    ("invalid_reason", s.invalid_reason.clone().unwrap_or_default()),
                    ("device", f.device.clone()),
                    ("timing", crate::backend::timing_kind(&f.device).to_string()),
                    ("iters_measured", s.measured.as_ref().map_or(0, |m| m.iter.n).to_string()),
                ]);
                row.extend(own(model_columns(&s.config)));
                row.push(("tokens_per_iter".into(), s.config.tokens_per_iteration().to_string()));
                match &s.measured {
                    Some(m) => row.extend(measured_columns(m)),
                    None => row.extend(measured_columns(&blank).into_iter().map(|(k, _)| (k, String::new()))),
                }
                row.extend(own(vec![
                    ("ringbench_version", f.version.clone()),
                    ("git_commit", f.git_commit.clone()),
                    ("start_utc", f.start_utc.clone()),
                    ("end_utc", f.end_utc.clone()),
                ]));
                row
            })
            .collect(),
    )
}

pub fn ranks_table(runs: &[RankRun]) -> Table {
    table(
        runs.iter()
            .map(|r| {
                let mut row = own(vec![
                    ("run_id", r.run_id.clone()),
                    ("strategy", r.config.strategy.name().to_string()),
                    ("sequence", r.sequence.to_string()),
                    ("rank", r.rank.to_string()),
                    ("emulated", r.config.emulate.is_some().to_string()),
                    ("local_rank", r.local_rank.to_string()),
                    ("host", r.host.clone()),
                    ("device", r.device.clone()),
                    ("timing", crate::backend::timing_kind(&r.device).to_string()),
                    ("status", r.status.to_string()),
                    ("iters_done", r.iterations.len().to_string()),
                ]);
                let series = |f: fn(&crate::metrics::IterationRecord) -> f64| -> Vec<f64> { r.iterations.iter().map(f).collect() };
                for (prefix, values) in [
                    ("iter_ms", series(|i| i.total_s)),
                    ("comm_ms", series(|i| i.comm_s)),
                    ("hidden_ms", series(|i| i.hidden_s)),
                    ("compute_ms", series(|i| i.compute_s)),
                ] {
                    if let Some(s) = Stats::of(&values) {
                        row.extend(stats_columns(prefix, &s, 1e3));
                    }
                }
                let per_iter = |f: fn(&crate::metrics::IterationRecord) -> f64| mean(r.iterations.iter().map(f));
                let iter_mean = per_iter(|i| i.total_s);
                row.extend(own(vec![
                    ("sent_mib_per_iter", format!("{:.6}", per_iter(|i| i.bytes_sent as f64) / MIB)),
                    ("received_mib_per_iter", format!("{:.6}", per_iter(|i| i.bytes_received as f64) / MIB)),
                    ("peak_mem_gib", format!("{:.6}", r.memory.buffers_peak_bytes as f64 / GIB)),
                    ("peak_device_gib", opt(r.memory.device_peak_bytes.map(|b| b as f64 / GIB), 6)),
                    ("linear_tflop_per_iter", format!("{:.9}", r.flops.linear / 1e12)),
                    ("attention_tflop_per_iter", format!("{:.9}", r.flops.attention / 1e12)),
                    ("counted_linear_tflop_per_iter", opt(r.counted_flops.map(|c| c.linear / 1e12), 9)),
                    ("counted_attention_tflop_per_iter", opt(r.counted_flops.map(|c| c.attention / 1e12), 9)),
                    ("gpu_util_pct_mean", opt(r.gpu_util.map(|u| u.mean), 3)),
                    ("gpu_util_pct_max", opt(r.gpu_util.map(|u| u.max), 3)),
                    ("tflops", if r.iterations.is_empty() { String::new() } else { format!("{:.6}", r.flops.total() / iter_mean / 1e12) }),
                ]));
                // The decode steps of an iteration on this rank (blank without decode).
                let decoded = !r.decode.is_empty();
                let per_decode = |f: fn(&crate::metrics::DecodeRecord) -> f64| decoded.then(|| mean(r.decode.iter().map(f)));
                let steps = r.config.decode_tokens.max(1) as f64;
                let step_ms = per_decode(|d| d.step_s.iter().sum::<f64>() / d.step_s.len().max(1) as f64).map(|s| s * 1e3);
                row.extend(own(vec![
                    ("decode_step_ms_mean", opt(step_ms, 6)),
                    ("decode_sent_kib_per_iter", opt(per_decode(|d| d.bytes_sent as f64 / 1024.0), 6)),
                    ("decode_received_kib_per_iter", opt(per_decode(|d| d.bytes_received as f64 / 1024.0), 6)),
                    ("decode_comm_ms_per_step", opt(per_decode(|d| d.comm_s.iter().sum::<f64>()).map(|s| s / steps * 1e3), 6)),
                    ("kv_cache_gib", opt(r.kv_cache_bytes.map(|b| b as f64 / GIB), 6)),
                ]));
                row
            })
            .collect(),
    )
}

pub(crate) fn csv_bytes((header, rows): &Table) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// The unit of a summary column, by its name: `None` for a column that is a name, a flag or a
/// count of things without a unit. Every column the summary has is listed (a test holds it).
pub fn column_unit(column: &str) -> Option<&'static str> {
    let stat = |prefix: &str| column.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('_'));
    match column {
        "tps" | "tps_ci95_lo" | "tps_ci95_hi" => Some("tokens/s"),
        "prefill_us_per_token" => Some("us/token"),
        "iter_ms_cv" | "tpot_ms_cv" => Some("fraction"),
        c if stat("ttft_ms") || stat("tpot_ms") || c.starts_with("itl_ms") || c.starts_with("decode_comm_ms") => Some("ms"),
        "decode_tps" | "decode_tps_per_user" => Some("tokens/s"),
        c if c.contains("_kib") => Some("KiB"),
        "decode_tokens" => Some("tokens"),
        c if stat("iter_ms") || c.starts_with("comm_ms") || c.starts_with("hidden_ms") || c.starts_with("compute_ms") => Some("ms"),
        "compute_floor_ms" => Some("ms"),
        c if c.starts_with("train_") || c.starts_with("grad_reduce_ms") => Some("ms"),
        c if c.contains("_gib") => Some("GiB"),
        c if c.contains("_mib") => Some("MiB"),
        "tflops_per_gpu" => Some("TFLOP/s"),
        "mfu" | "comm_hidden_fraction" | "efficiency_vs_floor" => Some("fraction"),
        c if c.starts_with("gpu_util_pct") => Some("%"),
        "seq_len" | "tokens_per_iter" => Some("tokens"),
        "batch" | "micro_batch" => Some("sequences"),
        "layers" | "d_model" | "heads" | "kv_heads" | "mlp" | "warmup" | "iters" | "iters_measured" => Some("count"),
        "world" | "tp" | "pp" | "sp" | "ulysses" | "ring" | "cp" | "windows" | "window" => Some("ranks"),
        _ => None,
    }
}

/// summary.json: the summary table for programs (as nccl-tests' -J or `vllm bench --save-result`
/// give): each run's columns as numbers, booleans or strings (null where blank), its config
/// whole, and each column's unit.
pub fn summary_json(summaries: &[StrategySummary]) -> Result<Vec<u8>> {
    let (header, rows) = summary_table(summaries);
    let value = |v: &str| -> serde_json::Value {
        if v.is_empty() {
            serde_json::Value::Null
        } else if let Ok(b) = v.parse::<bool>() {
            b.into()
        } else if let Ok(i) = v.parse::<i64>() {
            i.into()
        } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
            f.into()
        } else {
            v.into()
        }
    };
    let runs: Vec<serde_json::Value> = rows
        .iter()
        .zip(summaries)
        .map(|(row, s)| {
            let mut o = serde_json::Map::new();
            for (k, v) in header.iter().zip(row) {
                // The run's strings stay strings (a run id of digits is still a name).
                let typed = if column_unit(k).is_some() || matches!(k.as_str(), "emulated" | "causal") {
                    value(v)
                } else if v.is_empty() {
                    serde_json::Value::Null
                } else {
                    v.clone().into()
                };
                o.insert(k.clone(), typed);
            }
            o.insert("config".into(), serde_json::to_value(&s.config).expect("a config serialises"));
            serde_json::Value::Object(o)
        })
        .collect();
    let units: serde_json::Map<String, serde_json::Value> =
        header.iter().filter_map(|h| column_unit(h).map(|u| (h.clone(), u.into()))).collect();
    let doc = serde_json::json!({
        "format": "ringbench summary, version 1",
        "units": units,
        "runs": runs,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    Ok(bytes)
}
