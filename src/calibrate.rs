//! `--calibrate RUN_DIR` (`plan`, `sweep`): the analytic model's rates taken from what a run
//! measured instead of the profile's defaults. The GEMM and attention efficiencies are the FLOPs
//! over the seconds of the ops timed one by one in each rank's last warm-up iteration (an
//! emulated rank on one GPU measures a large job's ranks this way), relative to the profile's
//! peak; the intra-node link bandwidth is the bytes over the communication time of a real run
//! whose ranks shared one host (waits included: an effective bandwidth). Each number says where
//! it came from.

use crate::output::rankfile::RankRun;
use crate::plan::{Hardware, Profile};
use anyhow::{bail, Result};
use std::path::Path;

/// Every strategy run of `dir`'s rank files, read through `reduce`'s loading and checks (complete,
/// consistent, plausible: the same rank files `reduce` would take).
fn runs(dir: &Path) -> Result<Vec<RankRun>> {
    if !dir.is_dir() {
        bail!("--calibrate {}: not a run directory", dir.display());
    }
    let any =
        std::fs::read_dir(dir)?.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("rank-") && n.ends_with(".h5")));
    if !any {
        bail!("--calibrate {}: no rank files (rank-NNNNN.h5) there", dir.display());
    }
    let (runs, _) = crate::output::reduce::load(dir, false).map_err(|e| anyhow::anyhow!("--calibrate {}: {e:#}", dir.display()))?;
    Ok(runs)
}

/// Faster than any link between GPUs (10 TB/s): a figure above it is no measurement.
const MAX_LINK_BYTES_PER_S: f64 = 1e13;

/// `hw` with the rates `dir`'s runs measured, and a line per number saying where it came from.
/// `peak_source` says where `hw`'s peak came from, for the refusal of a peak below a measurement.
pub fn calibrate(hw: &Hardware, profile: Profile, dir: &Path, peak_source: &str) -> Result<(Hardware, Vec<String>)> {
    let runs = runs(dir)?;
    if let Some(r) = runs.iter().find(|r| crate::backend::is_simulated_device(&r.device)) {
        bail!("--calibrate {}: it ran on {}: its times are the stand-in's, no GPU's", dir.display(), r.device);
    }
    // Rates measured on one device say nothing of another's.
    if let Some(r) = runs.iter().find(|r| !profile.matches_device(&r.device)) {
        bail!(
            "--calibrate {}: it ran on {}, not on the hardware profile's {}: its rates would be taken for another device's (give --hardware {} for {})",
            dir.display(),
            r.device,
            profile.name(),
            if r.device.starts_with("cpu") { "cpu" } else { "the profile of that GPU" },
            if r.device.starts_with("cpu") { "a CPU run" } else { "it" }
        );
    }
    if !hw.peak_flops.is_finite() {
        bail!(
            "--calibrate {}: the {} profile knows no peak to measure efficiencies against; give --peak-tflops",
            dir.display(),
            profile.name()
        );
    }
    let mut out = hw.clone();
    let mut notes = Vec::new();
    let profiles: Vec<_> = runs.iter().filter_map(|r| r.op_profile).collect();
    if profiles.is_empty() {
        bail!(
            "--calibrate {}: its rank files hold no op profile (each strategy run times its ops in its last warm-up iteration: run with --warmup 1 or more)",
            dir.display()
        );
    }
    let sum = |f: fn(&crate::metrics::OpProfile) -> f64| profiles.iter().map(f).sum::<f64>();
    let mut flat_gemm = false;
    for (what, flops, secs, slot) in [
        ("GEMM", sum(|p| p.linear_flops), sum(|p| p.linear_s), &mut out.gemm_efficiency),
        ("attention", sum(|p| p.attention_flops), sum(|p| p.attention_s), &mut out.attention_efficiency),
    ] {
        if !(secs > 0.0 && flops > 0.0) {
            notes.push(format!("{what} efficiency {:.3}: the profile's ({} measured no {what} time)", *slot, dir.display()));
            continue;
        }
        let rate = flops / secs;
        let efficiency = rate / hw.peak_flops;
        if efficiency > 1.0 {
            bail!(
                "--calibrate {}: its {what} ran at {:.4e} TFLOP/s, above the peak of {:.4e} it is measured against ({}): a peak must be at least what was measured",
                dir.display(),
                rate / 1e12,
                hw.peak_flops / 1e12,
                peak_source
            );
        }
        *slot = efficiency;
        if what == "GEMM" {
            // Measured at the run's own shapes: one rate, no curve.
            flat_gemm = true;
        }
        notes.push(format!(
            "{what} efficiency {efficiency:.3e}: measured in {} ({:.4e} FLOPs in {:.4e} s over {} rank runs, {:.4e} FLOP/s; the profile's peak {:.4e})",
            dir.display(),
            flops,
            secs,
            profiles.len(),
            rate,
            hw.peak_flops
        ));
    }
    // Links: only a real run whose ranks share one host measured one kind of link.
    let real: Vec<&RankRun> = runs.iter().filter(|r| r.config.emulate.is_none() && r.config.world() > 1).collect();
    let hosts: std::collections::BTreeSet<&str> = real.iter().map(|r| r.host.as_str()).collect();
    let (bytes, secs) = real
        .iter()
        .flat_map(|r| r.iterations.iter())
        .fold((0u64, 0.0f64), |(b, s), i| (b.saturating_add(i.bytes_sent.max(i.bytes_received)), s + i.comm_s + i.hidden_s));
    match hosts.len() {
        0 => notes.push(format!(
            "NVLink {:.0} GB/s and InfiniBand {:.0} GB/s: the profile's ({} holds no multi-rank run that was not emulated)",
            hw.nvlink_bytes_per_s / 1e9,
            hw.ib_bytes_per_s / 1e9,
            dir.display()
        )),
        1 if bytes > 0 && secs > 0.0 => {
            if bytes as f64 / secs > MAX_LINK_BYTES_PER_S {
                bail!(
                    "--calibrate {}: its runs moved {bytes} bytes in {secs:e} s of communication, {:.3e} B/s: faster than any link, so no measurement",
                    dir.display(),
                    bytes as f64 / secs
                );
            }
            out.nvlink_bytes_per_s = bytes as f64 / secs;
            // An effective rate: each call's latency is inside it already.
            (out.call_latency_s, out.nvlink_hop_latency_s) = (0.0, 0.0);
            (out.small_call_latency_s, out.small_nvlink_hop_latency_s) = (0.0, 0.0);
            notes.push(format!(
                "intra-node link {:.4e} B/s: measured in {} on one host ({bytes} bytes in {secs:.4e} s of communication, waits included); InfiniBand {:.0} GB/s: not measured (the profile's or --ib-gbps)",
                out.nvlink_bytes_per_s,
                dir.display(),
                hw.ib_bytes_per_s / 1e9
            ));
        }
        1 => notes.push(format!("NVLink and InfiniBand: the profile's ({}'s runs moved no bytes)", dir.display())),
        n => notes.push(format!(
            "NVLink {:.0} GB/s and InfiniBand {:.0} GB/s: the profile's ({}'s ranks spanned {n} hosts, so its traffic mixes both links)",
            hw.nvlink_bytes_per_s / 1e9,
            hw.ib_bytes_per_s / 1e9,
            dir.display()
        )),
    }
    if flat_gemm {
        out.gemm_shape_curve.clear();
    }
    Ok((out, notes))
}
