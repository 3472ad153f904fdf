//! Timing statistics and the console's number formatting.

/// Summary of a sample of durations in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// None for an empty sample. `std` is the sample standard deviation (n - 1), 0 for one value.
    pub fn of(xs: &[f64]) -> Option<Stats> {
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Some(Stats {
            n,
            mean,
            std: var.sqrt(),
            min: xs.iter().cloned().fold(f64::INFINITY, f64::min),
            max: xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_small_sample() {
        let s = Stats::of(&[1.0, 2.0, 3.0, 6.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (4, 3.0, 1.0, 6.0));
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stats::of(&[2.5]).unwrap().std, 0.0);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn seconds_pick_their_unit() {
        assert_eq!(fmt_seconds(1.5), "1.500 s");
        assert_eq!(fmt_seconds(0.0123), "12.300 ms");
        assert_eq!(fmt_seconds(4.56e-6), "4.560 us");
        assert_eq!(fmt_seconds(7.0e-9), "7.000 ns");
    }
}
