//! What a run measures and how it is summarised: per-iteration records, the FLOP model, and the
//! statistics every timed quantity is reported with.

pub mod flops;
pub mod gpu_util;

use statrs::distribution::{ContinuousCDF, StudentsT};

/// One iteration's GEMMs and attention calls, each timed on the device (`Backend::set_op_timing`),
/// with the FLOPs the backend counted in them: the rates `plan --calibrate` takes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpProfile {
    pub linear_s: f64,
    pub attention_s: f64,
    pub linear_flops: f64,
    pub attention_flops: f64,
}

/// One measured iteration on one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IterationRecord {
    /// From the barrier that starts the iteration to this rank's end of the forward pass.
    pub total_s: f64,
    /// Communication time not hidden under compute: time blocked in communication calls (host
    /// transports), or the compute stream's waits for transfers (device-timed transports).
    pub comm_s: f64,
    /// Transfer time that ran under compute (0 where the transport cannot overlap).
    pub hidden_s: f64,
    /// total_s - comm_s.
    pub compute_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A training step's phases on this rank (zeros for a forward pass).
    pub phases: PhaseRecord,
}

/// A training step's phases on one rank: forward, backward, gradient reduction, each's seconds
/// and of them the communication not hidden under compute and the communication hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseRecord {
    pub seconds: [f64; 3],
    pub comm_s: [f64; 3],
    pub hidden_s: [f64; 3],
}

/// One measured iteration's decode steps on one rank (docs/design.md, "Decode").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodeRecord {
    /// Each step's time on this rank, from its start to the end of its work on the device; the
    /// job's step is the slowest rank's (its inter-token latency).
    pub step_s: Vec<f64>,
    /// Each step's communication not hidden under compute.
    pub comm_s: Vec<f64>,
    /// Bytes this rank sent and received over all the steps.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The q-quantile (0 to 1) of a sample, linearly interpolated between order statistics (numpy's
/// default); None for an empty sample.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64))
}

/// Summary of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    pub std: f64,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// 95% confidence interval of the mean (Student t, n - 1 degrees of freedom), its lower bound
    /// never below zero for a quantity that cannot be negative (times, bytes); None for one
    /// value, which has no spread to estimate.
    pub ci95: Option<(f64, f64)>,
}

impl Stats {
    /// None for an empty sample.
    pub fn of(xs: &[f64]) -> Option<Stats> {
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let std = var.sqrt();
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) };
        let ci95 = (n > 1).then(|| {
            let half = t_975(n - 1) * std / (n as f64).sqrt();
            let lo = if sorted[0] >= 0.0 { (mean - half).max(0.0) } else { mean - half };
            (lo, mean + half)
        });
        Some(Stats { n, mean, std, min: sorted[0], median, max: sorted[n - 1], ci95 })
    }

    /// Coefficient of variation, std / mean (0 when the mean is 0).
    pub fn cv(&self) -> f64 {
        if self.mean == 0.0 {
            0.0
        } else {
            self.std / self.mean
        }
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95% interval).
pub fn t_975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64).expect("df >= 1 is a valid Student t").inverse_cdf(0.975)
}

/// A 95% interval in words, or why there is none (one value, or a tokens/s interval whose time
/// interval reaches zero: too few or too noisy iterations for an upper bound).
pub fn fmt_ci(ci: Option<(f64, f64)>, f: impl Fn(f64) -> String) -> String {
    match ci {
        Some((lo, hi)) => format!("95% CI [{}, {}]", f(lo), f(hi)),
        None => "95% CI not computable (too few or too noisy iterations)".to_string(),
    }
}

/// A duration with a unit that keeps 3-4 significant digits readable: "12.3 ms", "4.56 us".
pub fn fmt_seconds(s: f64) -> String {
    let (v, unit) = match s.abs() {
        x if x >= 1.0 => (s, "s"),
        x if x >= 1e-3 => (s * 1e3, "ms"),
        x if x >= 1e-6 => (s * 1e6, "us"),
        _ => (s * 1e9, "ns"),
    };
    format!("{v:.3} {unit}")
}

/// A byte count in binary units with 3 decimals: "812.000 KiB", "6.400 GiB".
pub fn fmt_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.3} {}", units[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_small_sample() {
        let s = Stats::of(&[6.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.median, s.max), (4, 3.0, 1.0, 2.5, 6.0));
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.cv() - s.std / 3.0).abs() < 1e-15);
        // t(0.975, 3) = 3.182446 (tables); half width = t s / sqrt(n).
        let half = 3.182446 * s.std / 2.0;
        let ci = s.ci95.unwrap();
        // 3 - half is below zero here: a time's bound stops at zero.
        assert!(ci.0 == (3.0 - half).max(0.0) && (ci.1 - (3.0 + half)).abs() < 1e-5, "{ci:?}");
        let tight = Stats::of(&[3.0, 3.1, 2.9, 3.0]).unwrap().ci95.unwrap();
        assert!(tight.0 > 2.8 && tight.1 < 3.2, "{tight:?}");
        // One value has no interval; a spread reaching below zero stops at zero for times.
        let one = Stats::of(&[2.5]).unwrap();
        assert_eq!((one.std, one.median, one.ci95), (0.0, 2.5, None));
        let wide = Stats::of(&[10.0, 1e-3, 1e-3]).unwrap();
        assert_eq!(wide.ci95.unwrap().0, 0.0);
        assert!(Stats::of(&[-1.0, 5.0]).unwrap().ci95.unwrap().0 < -1.0, "a signed quantity keeps its bound");
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics_as_numpy_does() {
        // numpy.percentile([1, 2, 3, 4, 10], [50, 90, 99]) = [3.0, 7.6, 9.76].
        let xs = [4.0, 1.0, 10.0, 3.0, 2.0];
        for (q, want) in [(0.5, 3.0), (0.9, 7.6), (0.99, 9.76), (0.0, 1.0), (1.0, 10.0)] {
            assert!((quantile(&xs, q).unwrap() - want).abs() < 1e-12, "q {q}");
        }
        assert_eq!(quantile(&[2.5], 0.99), Some(2.5));
        assert!(quantile(&[], 0.5).is_none());
    }

    #[test]
    fn student_t_quantiles_match_the_tables() {
        for (df, want) in [(1, 12.706205), (2, 4.302653), (9, 2.262157), (99, 1.984217)] {
            assert!((t_975(df) - want).abs() < 1e-5, "df {df}: {}", t_975(df));
        }
    }

    #[test]
    fn bytes_pick_their_unit() {
        assert_eq!(fmt_bytes(512.0), "512.000 B");
        assert_eq!(fmt_bytes(1536.0), "1.500 KiB");
        assert_eq!(fmt_bytes(6.4e9), "5.960 GiB");
    }

    #[test]
    fn seconds_pick_their_unit() {
        assert_eq!(fmt_seconds(1.5), "1.500 s");
        assert_eq!(fmt_seconds(0.0123), "12.300 ms");
        assert_eq!(fmt_seconds(4.56e-6), "4.560 us");
        assert_eq!(fmt_seconds(7.0e-9), "7.000 ns");
    }
}
