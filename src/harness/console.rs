//! What a run shows on the console: its progress (on a terminal only), each strategy's account
//! and every measured strategy side by side.

use crate::config::StrategyKind;
use crate::metrics::{fmt_bytes, fmt_ci, fmt_seconds};
use crate::output::reduce::{Measured, StrategySummary};
use crate::output::summary::DecodeMeasured;

pub(super) fn progress_bar(total: usize, label: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = terminal_bar(total, "{prefix:>6} [{bar:30}] {pos}/{len} iterations ({msg}), ETA {eta}", quiet);
    bar.set_prefix(label.to_string());
    bar
}

/// A progress bar of `total` steps drawn as `template` on stdout where it is a terminal (hidden
/// when `quiet` or where it is not): mpirun hands a rank's stdout a terminal when it has one, its
/// stderr a pipe.
pub(crate) fn terminal_bar(total: usize, template: &str, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    // Under mpirun or srun a rank's stdout is a pty whatever the launcher's own output is (a log
    // file, a pipe): a bar's frames would land in the log. There, a bar only where asked for.
    let launched = crate::launch::rank_from_env().is_some() && std::env::var("RINGBENCH_PROGRESS").as_deref() != Ok("bar");
    let target = if quiet || launched || !std::io::stdout().is_terminal() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stdout()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total as u64), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The console's account of each strategy run, then the side-by-side comparison.
pub fn print_summaries(summaries: &[StrategySummary]) {
    if let Some(s) = summaries.iter().find(|s| crate::backend::is_simulated_device(&s.first.device)) {
        crate::outln!(
            "SIMULATED: {} runs the kernels on the CPU; every timing below is the stand-in's, not a measurement of a GPU",
            s.first.device
        );
    }
    for s in summaries {
        match s.config.emulate {
            // The job's figures below assume every rank takes as long as the emulated one.
            Some(e) => crate::outln!(
                "{} ({}, EMULATED rank {} of {}; communication as device copies, no waiting on other ranks):",
                s.config.strategy.name(),
                s.status,
                e.as_rank,
                e.world
            ),
            None => crate::outln!("{} ({}):", s.config.strategy.name(), s.status),
        }
        let Some(m) = &s.measured else {
            crate::outln!("  no measured iterations");
            continue;
        };
        let it = &m.iter;
        crate::outln!(
            "  iteration      mean {}, {}, cv {:.1}%, min {}, median {}, max {} (n {})",
            fmt_seconds(it.mean),
            fmt_ci(it.ci95, fmt_seconds),
            100.0 * it.cv(),
            fmt_seconds(it.min),
            fmt_seconds(it.median),
            fmt_seconds(it.max),
            it.n
        );
        crate::outln!("  tokens/s       {:.1}, {}", m.tps, fmt_ci(m.tps_ci95, |v| format!("{v:.1}")));
        match &m.train {
            Some(t) => {
                crate::outln!(
                    "  training step  forward {}, backward {}, gradient all-reduce {} (slowest rank's mean each; {} FP32 per rank per step)",
                    fmt_seconds(t.forward_s),
                    fmt_seconds(t.backward_s),
                    fmt_seconds(t.grad_reduce_s),
                    fmt_bytes(t.grad_reduce_bytes)
                );
                crate::outln!(
                    "  step comm      forward {} exposed / {} hidden, backward {} / {}, gradient all-reduce {} / {}",
                    fmt_seconds(t.comm_s[0]),
                    fmt_seconds(t.hidden_s[0]),
                    fmt_seconds(t.comm_s[1]),
                    fmt_seconds(t.hidden_s[1]),
                    fmt_seconds(t.comm_s[2]),
                    fmt_seconds(t.hidden_s[2])
                );
            }
            None => crate::outln!(
                "  prefill/token  {} (prefill time per token: iteration time / {} tokens)",
                fmt_seconds(m.prefill_s_per_token),
                s.config.tokens_per_iteration()
            ),
        }
        crate::outln!(
            "  per rank       communication {} max / {} mean exposed, compute {} max / {} mean, sent {}/iter max",
            fmt_seconds(m.comm_s.0),
            fmt_seconds(m.comm_s.1),
            fmt_seconds(m.compute_s.0),
            fmt_seconds(m.compute_s.1),
            fmt_bytes(m.sent_per_iter_max)
        );
        crate::outln!("  hidden comm    {}", hidden_line(s, m));
        let device = m.peak_device_max.map(|b| format!(", process/device peak {} max", fmt_bytes(b))).unwrap_or_default();
        crate::outln!("  peak memory    buffers {} max / {} mean{device}", fmt_bytes(m.peak_buffers.0), fmt_bytes(m.peak_buffers.1));
        let mfu = m.mfu.map(|x| format!("MFU {:.1}%", 100.0 * x)).unwrap_or_else(|| "MFU n/a (device peak unknown)".into());
        let util = m.gpu_util.map(|(mean, max)| format!(", GPU utilization {mean:.1}% mean / {max:.0}% max (NVML)")).unwrap_or_default();
        crate::outln!("  compute        {:.4} TFLOP/s per rank, {mfu}{util}", m.tflops_per_gpu);
        if let Some(d) = &m.decode {
            print_decode(s, m, d);
        }
    }
    print_comparison(summaries);
}

/// A strategy run's decode figures, by the serving benchmarks' definitions.
fn print_decode(s: &StrategySummary, m: &Measured, d: &DecodeMeasured) {
    crate::outln!(
        "  TTFT           {}, {} (the prefill of the prompt: the iteration above)",
        fmt_seconds(m.iter.mean),
        fmt_ci(m.iter.ci95, fmt_seconds)
    );
    crate::outln!(
        "  TPOT           mean {}, {}, cv {:.1}% over {} requests of {} steps; ITL p50 {}, p90 {}, p99 {}",
        fmt_seconds(d.tpot.mean),
        fmt_ci(d.tpot.ci95, fmt_seconds),
        100.0 * d.tpot.cv(),
        d.tpot.n,
        d.steps,
        fmt_seconds(d.itl.0),
        fmt_seconds(d.itl.1),
        fmt_seconds(d.itl.2)
    );
    crate::outln!(
        "  decode         {:.1} tokens/s ({} sequences), {:.2} tokens/s per user; per step per rank: communication {} max exposed, sent {} max",
        d.tokens_per_s,
        s.config.model.batch,
        d.tokens_per_s_per_user,
        fmt_seconds(d.comm_s.0),
        fmt_bytes(d.sent_per_step_max)
    );
    crate::outln!("  K/V cache      {} max / {} mean per rank", fmt_bytes(d.kv_cache.0), fmt_bytes(d.kv_cache.1));
}

/// Every measured strategy run side by side, one column each in run order, and each one's
/// tokens/s and memory against the fastest's.
fn print_comparison(summaries: &[StrategySummary]) {
    let measured: Vec<(&StrategySummary, &Measured)> = summaries.iter().filter_map(|s| s.measured.as_ref().map(|m| (s, m))).collect();
    if measured.len() < 2 {
        return;
    }
    let w = 18;
    let row = |name: &str, cell: &dyn Fn(&Measured) -> String| {
        let cells: String = measured.iter().map(|(_, m)| format!("{:>w$}", cell(m))).collect();
        crate::outln!("{name:<24}{cells}");
    };
    let names: String = measured.iter().map(|(s, _)| format!("{:>w$}", s.config.strategy.name())).collect();
    crate::outln!();
    crate::outln!("{:<24}{names}", "");
    row("tokens/s", &|m| format!("{:.1}", m.tps));
    let per_token = if measured.iter().all(|(_, m)| m.train.is_some()) { "step time per token" } else { "prefill time per token" };
    row(per_token, &|m| fmt_seconds(m.prefill_s_per_token));
    row("iteration (mean)", &|m| fmt_seconds(m.iter.mean));
    row("peak memory (max rank)", &|m| fmt_bytes(m.peak_buffers.0));
    row("exposed comm (max)", &|m| fmt_seconds(m.comm_s.0));
    row("hidden comm (max)", &|m| fmt_seconds(m.hidden_s.0));
    row("communication hidden", &|m| m.hidden_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(|| "-".into()));
    row("sent per iteration", &|m| fmt_bytes(m.sent_per_iter_max));
    let decoded = measured.iter().all(|(_, m)| m.decode.is_some());
    if decoded {
        let dec = |m: &Measured| m.decode.clone().expect("every run decoded");
        row("TTFT (prefill)", &|m| fmt_seconds(m.iter.mean));
        row("TPOT (mean)", &|m| fmt_seconds(dec(m).tpot.mean));
        row("ITL p99", &|m| fmt_seconds(dec(m).itl.2));
        row("decode tokens/s", &|m| format!("{:.1}", dec(m).tokens_per_s));
        row("K/V cache (max rank)", &|m| fmt_bytes(dec(m).kv_cache.0));
        row("decode sent per step", &|m| fmt_bytes(dec(m).sent_per_step_max));
    }
    if measured.iter().all(|(_, m)| m.train.is_some()) {
        let phase = |m: &Measured, k: usize| m.train.as_ref().map_or(f64::NAN, |t| [t.forward_s, t.backward_s, t.grad_reduce_s][k]);
        row("forward (max rank)", &|m| fmt_seconds(phase(m, 0)));
        row("backward (max rank)", &|m| fmt_seconds(phase(m, 1)));
        row("gradient all-reduce", &|m| fmt_seconds(phase(m, 2)));
        row("gradients sent per step", &|m| fmt_bytes(m.train.as_ref().map_or(0.0, |t| t.grad_reduce_bytes)));
    }
    if summaries.iter().any(|s| s.config.emulate.is_some()) {
        crate::outln!("(emulated: one rank's work each, not a measured job)");
    }
    let (fastest, best) = measured.iter().max_by(|a, b| a.1.tps.total_cmp(&b.1.tps)).expect("two or more");
    let others: Vec<String> = measured
        .iter()
        .filter(|(s, _)| !std::ptr::eq(*s, *fastest))
        .map(|(s, m)| {
            format!(
                "{} {:.2}x its tokens/s at {:.2}x its memory",
                s.config.strategy.name(),
                m.tps / best.tps,
                m.peak_buffers.0 / best.peak_buffers.0
            )
        })
        .collect();
    crate::outln!("fastest: {}; {}", fastest.config.strategy.name(), others.join(", "));
    if decoded {
        let tpot = |m: &Measured| m.decode.as_ref().map_or(f64::NAN, |d| d.tpot.mean);
        let (quickest, q) = measured.iter().min_by(|a, b| tpot(a.1).total_cmp(&tpot(b.1))).expect("two or more");
        let others: Vec<String> = measured
            .iter()
            .filter(|(s, _)| !std::ptr::eq(*s, *quickest))
            .map(|(s, m)| format!("{} {:.2}x its TPOT", s.config.strategy.name(), tpot(m) / tpot(q)))
            .collect();
        crate::outln!("lowest TPOT: {}; {}", quickest.config.strategy.name(), others.join(", "));
    }
    let find = |k: StrategyKind| measured.iter().find(|(s, _)| s.config.strategy == k).map(|(_, m)| *m);
    if let (Some(tp), Some(ring)) = (find(StrategyKind::TpPp), find(StrategyKind::Ring)) {
        // The seed's question, answered in its own terms.
        crate::outln!(
            "ring speed-up over tp-pp: {:.2}x; ring memory / tp-pp memory: {:.2}x",
            ring.tps / tp.tps,
            ring.peak_buffers.0 / tp.peak_buffers.0
        );
    }
}

/// How much communication ran under compute, in words.
fn hidden_line(s: &StrategySummary, m: &Measured) -> String {
    let Some(f) = m.hidden_fraction else { return "no communication".into() };
    let why = s.config.transport().timing();
    format!(
        "{:.1}% of communication time ran under compute, {} max / {} mean per rank ({why})",
        100.0 * f,
        fmt_seconds(m.hidden_s.0),
        fmt_seconds(m.hidden_s.1)
    )
}
