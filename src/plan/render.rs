//! `plan`'s console output: one strategy's plan in words, and the comparison of several.

use super::{Plan, Projection};
use crate::config::RunConfig;

/// The plan as the console shows it.
pub fn render(cfg: &RunConfig, p: &Plan) -> String {
    use crate::metrics::{fmt_bytes, fmt_seconds};
    let hw = &p.hardware;
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!("ringbench plan: {}", cfg.describe_work()));
    // Three significant digits whatever the scale (a calibration from a CPU run gives 0.003%).
    let g = |x: f64| if x >= 99.95 { format!("{x:.0}") } else { format!("{}", format!("{x:.3e}").parse::<f64>().unwrap_or(x)) };
    line(format!(
        "hardware: {} ({:.0} TFLOP/s BF16 dense, {:.2} TB/s HBM, {:.1} GiB, NVLink {} GB/s, IB {} GB/s per GPU; GEMM at {}% and attention at {}% of peak)",
        hw.name,
        hw.peak_flops / 1e12,
        hw.hbm_bytes_per_s / 1e12,
        hw.memory_bytes / (1u64 << 30) as f64,
        g(hw.nvlink_bytes_per_s / 1e9),
        g(hw.ib_bytes_per_s / 1e9),
        g(100.0 * hw.gemm_efficiency),
        g(100.0 * hw.attention_efficiency)
    ));
    line(format!("  rates by size: {}", rates_in_words(hw)));
    for c in &hw.calibrated {
        line(format!("  calibrated: {c}"));
    }
    line(format!(
        "model: {:.3e} parameters; per token {:.3e} linear + {:.3e} attention FLOPs{}",
        p.params,
        p.linear_flops_per_token,
        p.attention_flops_per_token,
        if cfg.causal { " (causal: half of 4 S d per layer)" } else { "" }
    ));
    line(format!("per rank ({} ranks; figures for the busiest):", p.world));
    let mem = &p.memory;
    let handoff = if mem.pipeline_buffers > 0.0 {
        format!(" (pipeline hand-offs of {} land in the activations)", fmt_bytes(mem.pipeline_buffers))
    } else {
        String::new()
    };
    let cache = if mem.kv_cache > 0.0 { format!(" + {} decode K/V cache", fmt_bytes(mem.kv_cache)) } else { String::new() };
    line(format!(
        "  memory       {} weights + {} activations per micro-batch{handoff} + {} K/V buffers + {} workspace{cache} = {} of {}: {}",
        fmt_bytes(mem.weights),
        fmt_bytes(mem.activations_per_micro_batch),
        fmt_bytes(mem.kv_buffers),
        fmt_bytes(mem.workspace),
        fmt_bytes(mem.total),
        fmt_bytes(mem.capacity),
        if mem.fits { "fits" } else { "DOES NOT FIT" }
    ));
    if !p.fits {
        line(format!(
            "  would fit    {}",
            if p.fits_instead.is_empty() { "no strategy of this world size: use more GPUs".to_string() } else { p.fits_instead.join(", ") }
        ));
    }
    line(format!("  FLOPs        {:.3e} linear + {:.3e} attention per iteration", p.rank_linear_flops, p.rank_attention_flops));
    if p.traffic.is_empty() {
        line("  traffic      none".into());
    }
    for t in &p.traffic {
        // The lines the seed's readers know, then every kind in the same form.
        let known = match (t.op.as_str(), t.per.as_str()) {
            ("ring step", _) if t.what.starts_with("K/V block") => {
                format!("ring K/V {:.1} MB per step and sequence; ", p.ring_step_bytes / 1e6)
            }
            ("all-reduce", "layer and sequence") if t.what == "row-parallel output" => {
                format!("TP all-reduce {:.1} MB per sequence (2 per layer); ", p.allreduce_bytes / 1e6)
            }
            _ => String::new(),
        };
        line(format!(
            "  traffic      {known}{} ({}): {:.1} MB sent and {:.1} MB received per {}; {} sent per iteration",
            t.op,
            t.what,
            t.sent_per_layer_sequence / 1e6,
            t.received_per_layer_sequence / 1e6,
            t.per,
            fmt_bytes(t.sent_per_iter)
        ));
    }
    line(format!("  compute floor {} per iteration (every FLOP at peak)", fmt_seconds(p.compute_floor_s)));
    line(format!("physical bound: {:.0} tokens/s on {} GPUs (every GPU at peak, no communication)", p.tps_bound, p.world));
    let row = |label: &str, f: &dyn Fn(&Projection) -> String| -> String {
        let mut s = format!("{label:<28}");
        for pr in &p.projections {
            s.push_str(&format!("{:>30}", f(pr)));
        }
        s
    };
    line(String::new());
    line(row("projection", &|pr| {
        if pr.nodes == 1 {
            format!("one {}-GPU NVLink domain", pr.gpus_per_node)
        } else {
            format!("{} nodes x {} GPUs", pr.nodes, pr.gpus_per_node)
        }
    }));
    line(row("  heaviest link", &|pr| format!("{} {:.0} GB/s", pr.link, pr.link_bytes_per_s / 1e9)));
    line(row("  compute", &|pr| fmt_seconds(pr.compute_s)));
    if let Some(first) = p.projections.first() {
        for (label, _) in &first.details {
            line(row(&format!("  {label}"), &|pr| fmt_seconds(pr.detail(label).unwrap_or(0.0))));
        }
    }
    if p.projections.iter().any(|pr| pr.hidden_fraction.is_some()) {
        line(row("  transfer hidden", &|pr| pr.hidden_fraction.map_or("-".into(), |f| format!("{:.0}%", 100.0 * f))));
    }
    line(row("  exposed communication", &|pr| fmt_seconds(pr.exposed_comm_s)));
    if p.projections.iter().any(|pr| pr.pipeline_bubble_s > 0.0) {
        line(row("  pipeline bubble", &|pr| fmt_seconds(pr.pipeline_bubble_s)));
    }
    if p.projections.iter().any(|pr| pr.train.is_some()) {
        let phase = |pr: &Projection, f: fn(&crate::plan::train::TrainProjection) -> f64| {
            pr.train.as_ref().map_or("-".into(), |t| fmt_seconds(f(t)))
        };
        line(row("  forward", &|pr| phase(pr, |t| t.forward_s)));
        line(row("  backward (2x its compute)", &|pr| phase(pr, |t| t.backward_s)));
        line(row("  gradient all-reduce, exposed", &|pr| phase(pr, |t| t.grad_reduce_s)));
        line(row("  training step", &|pr| fmt_seconds(pr.iteration_s)));
        line(row("  training tokens/s", &|pr| format!("{:.0}", pr.tps_projected)));
    } else {
        line(row("  iteration", &|pr| fmt_seconds(pr.iteration_s)));
        line(row("  tokens/s", &|pr| format!("{:.0}", pr.tps_projected)));
        line(row("  prefill time per token", &|pr| fmt_seconds(pr.prefill_s_per_token)));
        line(row("  time to first token", &|pr| fmt_seconds(pr.ttft_s)));
    }
    if let Some(d) = &p.decode {
        let first = p.projections.first().map(|pr| pr.gpus_per_node).unwrap_or(hw.gpus_per_node);
        line(String::new());
        line(format!("decode: {} tokens after the prompt, nodes of {first} GPUs (busiest rank):", d.steps));
        line(format!(
            "  bytes/step   {} weights + {} K/V cache (mean length) read from HBM",
            fmt_bytes(d.weight_bytes_per_step),
            fmt_bytes(d.cache_bytes_per_step)
        ));
        line(format!(
            "  TPOT floor   {} (those bytes at {:.2} TB/s, nothing else: no TPOT below it is possible)",
            fmt_seconds(d.tpot_floor_s),
            hw.hbm_bytes_per_s / 1e12
        ));
        for (op, what, sent, calls) in &d.traffic {
            line(format!("  traffic      {op} ({what}): {} sent per step in {calls:.0} calls", fmt_bytes(*sent)));
        }
        line(format!(
            "  collectives  {} per step (each call's latency and bytes, exposed; a pipeline's fill)",
            fmt_seconds(d.collectives_s)
        ));
        line(format!(
            "  TPOT         {} projected: {:.1} tokens/s ({} sequences), {:.1} tokens/s per user, MBU {:.1}%",
            fmt_seconds(d.tpot_s),
            d.tokens_per_s,
            cfg.model.batch,
            d.tokens_per_s_per_user,
            100.0 * d.mbu
        ));
        line(format!(
            "  K/V cache    {} per rank at full length; the largest batch that fits one GPU: {}",
            fmt_bytes(d.kv_cache_bytes),
            if d.max_batch == 0 { "none (not one sequence)".to_string() } else { d.max_batch.to_string() }
        ));
        line(format!("  TTFT         {} (the prefill of one sequence, above)", fmt_seconds(p.ttft_s)));
    }
    o
}

/// Several plans of one model side by side (`plan --strategy all`): per strategy and split,
/// memory per GPU and whether it fits, then tokens/s and time to first token on each placement.
/// Strategies that do not fit are listed with their projection all the same, marked.
pub fn render_comparison(plans: &[(RunConfig, Plan)], refused: &[(String, String)]) -> String {
    use crate::metrics::{fmt_bytes, fmt_seconds};
    let mut o = String::new();
    let Some((_, first)) = plans.first() else {
        return o;
    };
    let placement = |pr: &Projection| {
        if pr.nodes == 1 {
            format!("one {}-GPU domain", pr.gpus_per_node)
        } else {
            format!("{} x {} GPUs", pr.nodes, pr.gpus_per_node)
        }
    };
    let m = &plans[0].0.model;
    // A training step's second figure is the step itself; a prefill's, its first token.
    let training = plans[0].0.train;
    let (second_label, second): (&str, fn(&Projection) -> f64) =
        if training { ("training step", |pr| pr.iteration_s) } else { ("time to first token", |pr| pr.ttft_s) };
    o.push_str(&format!(
        "\ncomparison on {} GPUs of {}, batch {} x {} tokens ({}tokens/s, {second_label} per placement):\n",
        first.world,
        first.hardware.name,
        m.batch,
        m.seq_len,
        if training { "training " } else { "" }
    ));
    let mut header = format!("{:<12}{:<30}{:>12} {:<5}", "strategy", "split", "memory/GPU", "fits");
    for pr in &first.projections {
        header.push_str(&format!("{:>34}", placement(pr)));
    }
    o.push_str(&header);
    o.push('\n');
    // Ranked: those that fit first, by tokens/s on the headline placement.
    let headline = |p: &Plan| p.projections.first().map_or(0.0, |pr| pr.tps_projected);
    let mut ranked: Vec<&(RunConfig, Plan)> = plans.iter().collect();
    ranked.sort_by(|a, b| b.1.fits.cmp(&a.1.fits).then(headline(&b.1).total_cmp(&headline(&a.1))));
    for (cfg, p) in ranked {
        let split = cfg.describe_split();
        let mut row = format!("{:<12}{:<30}{:>12} {:<5}", p.strategy, split, fmt_bytes(p.memory.total), if p.fits { "yes" } else { "NO" });
        for pr in &p.projections {
            row.push_str(&format!("{:>34}", format!("{:.0} tok/s, {}", pr.tps_projected, fmt_seconds(second(pr)))));
        }
        o.push_str(&row);
        o.push('\n');
    }
    for (name, why) in refused {
        o.push_str(&format!("{name:<12}not planned: {why}\n"));
    }
    if plans.iter().all(|(_, p)| p.decode.is_some()) {
        o.push_str(&decode_comparison(plans));
    }
    for (i, pr) in first.projections.iter().enumerate() {
        let mut fitting: Vec<(&RunConfig, &Plan, &Projection)> =
            plans.iter().filter(|(_, p)| p.fits).filter_map(|(c, p)| p.projections.get(i).map(|pr| (c, p, pr))).collect();
        fitting.sort_by(|a, b| b.2.tps_projected.total_cmp(&a.2.tps_projected));
        let Some(&(c, p, b)) = fitting.first() else {
            o.push_str(&format!("on {}: no strategy fits; use more GPUs\n", placement(pr)));
            continue;
        };
        o.push_str(&format!(
            "fastest that fits on {}: {} ({}), {:.0} tokens/s, {second_label} {}, {} per GPU\n",
            placement(pr),
            c.strategy.name(),
            c.describe_split(),
            b.tps_projected,
            fmt_seconds(second(b)),
            fmt_bytes(p.memory.total)
        ));
        // Within the model's uncertainty of the fastest: a tie, and which of them holds least.
        let tied: Vec<&(&RunConfig, &Plan, &Projection)> =
            fitting[1..].iter().take_while(|t| super::within_uncertainty(b.tps_projected, t.2.tps_projected)).collect();
        if !tied.is_empty() {
            let names: Vec<String> = tied
                .iter()
                .map(|(c2, _, b2)| format!("{} ({}) {:.0}", c2.strategy.name(), c2.describe_split(), b2.tps_projected))
                .collect();
            let fastest = (c, p, b);
            let least = std::iter::once(&fastest).chain(tied.iter().copied()).min_by(|x, y| x.1.memory.total.total_cmp(&y.1.memory.total));
            let least = least.map(|(lc, lp, _)| {
                if lc.strategy == c.strategy {
                    format!("{} itself needs the least memory", c.strategy.name())
                } else {
                    format!(
                        "of these {} needs the least memory, {} per GPU against {}",
                        lc.strategy.name(),
                        fmt_bytes(lp.memory.total),
                        fmt_bytes(p.memory.total)
                    )
                }
            });
            o.push_str(&format!(
                "  a tie within the projection's {:.0}% uncertainty: {} tokens/s; {}\n",
                100.0 * super::PROJECTION_UNCERTAINTY,
                names.join(", "),
                least.unwrap_or_default()
            ));
        }
    }
    o
}

/// The decode of several plans, ranked by TPOT (those that fit first): floor, projection, MBU.
fn decode_comparison(plans: &[(RunConfig, Plan)]) -> String {
    use crate::metrics::{fmt_bytes, fmt_seconds};
    let mut ranked: Vec<&(RunConfig, Plan)> = plans.iter().collect();
    let tpot = |p: &Plan| p.decode.as_ref().map_or(f64::INFINITY, |d| d.tpot_s);
    ranked.sort_by(|a, b| b.1.fits.cmp(&a.1.fits).then(tpot(&a.1).total_cmp(&tpot(&b.1))));
    let mut o = format!(
        "decode, ranked by TPOT:\n{:<12}{:<30}{:>12}{:>12}{:>14}{:>8}{:>14}{:>10}\n",
        "strategy", "split", "TPOT floor", "TPOT", "tokens/s", "MBU", "K/V per GPU", "max batch"
    );
    for (cfg, p) in &ranked {
        let d = p.decode.as_ref().expect("every plan decodes");
        o.push_str(&format!(
            "{:<12}{:<30}{:>12}{:>12}{:>14.1}{:>7.1}%{:>14}{:>10}{}\n",
            p.strategy,
            cfg.describe_split(),
            fmt_seconds(d.tpot_floor_s),
            fmt_seconds(d.tpot_s),
            d.tokens_per_s,
            100.0 * d.mbu,
            fmt_bytes(d.kv_cache_bytes),
            d.max_batch,
            if p.fits { "" } else { "  (does not fit)" }
        ));
    }
    if let Some((c, p)) = ranked.first() {
        let d = p.decode.as_ref().expect("every plan decodes");
        let tied: Vec<String> = ranked[1..]
            .iter()
            .filter(|(_, q)| q.fits && super::within_uncertainty(1.0 / d.tpot_s, 1.0 / tpot(q)))
            .map(|(c2, _)| c2.strategy.name().to_string())
            .collect();
        let tie = if tied.is_empty() { String::new() } else { format!("; within the projection's uncertainty: {}", tied.join(", ")) };
        o.push_str(&format!("lowest TPOT: {} ({}), {}{tie}\n", c.strategy.name(), c.describe_split(), fmt_seconds(d.tpot_s)));
    }
    o
}

/// The size-dependent rates of `hw` in one line: the GEMM shape curve, attention's waves, the
/// latencies per call and hop.
pub fn rates_in_words(hw: &super::Hardware) -> String {
    let gemm = if hw.gemm_shape_curve.is_empty() {
        "GEMMs at one efficiency whatever their shape".to_string()
    } else {
        let pts: Vec<String> = hw.gemm_shape_curve.iter().map(|(d, f)| format!("{f:.3} at {d:.0}")).collect();
        format!(
            "GEMMs at the large-shape efficiency times {} by their smallest dimension (log-interpolated, held beyond; at least their operands' time through HBM)",
            pts.join(", ")
        )
    };
    let waves = if hw.sm_count == 0 {
        "attention not modelled in waves".to_string()
    } else {
        format!("attention in waves of {}-row blocks over {} SMs", super::hardware::ATTENTION_BLOCK_ROWS, hw.sm_count)
    };
    let latency = if hw.call_latency_s == 0.0 && hw.nvlink_hop_latency_s == 0.0 && hw.ib_hop_latency_s == 0.0 {
        "no latency per call".to_string()
    } else {
        format!(
            "each call {:.1} us + {:.1} us per NVLink hop or {:.1} us per network hop (decode's small messages: {:.1} + {:.2} or {:.1} us)",
            hw.call_latency_s * 1e6,
            hw.nvlink_hop_latency_s * 1e6,
            hw.ib_hop_latency_s * 1e6,
            hw.small_call_latency_s * 1e6,
            hw.small_nvlink_hop_latency_s * 1e6,
            hw.small_ib_hop_latency_s * 1e6
        )
    };
    format!("{gemm}; {waves}; {latency}")
}
