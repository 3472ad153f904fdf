//! What a sweep is made of: its grid, its points (a config and what the model projects for it,
//! and what was measured where it ran), and the figure its analysis ranks by.

use crate::config::{RunConfig, RunRequest};

/// Which figure the analysis (fastest, crossovers, best) ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    Projected,
    Measured,
}

impl Basis {
    pub(super) fn name(self) -> &'static str {
        match self {
            Basis::Projected => "projected",
            Basis::Measured => "measured",
        }
    }
}

/// What the analysis ranks a point by: the prefill's tokens/s, or (with --decode-tokens) the
/// decode's tokens/s, batch / TPOT, so the lowest TPOT ranks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    Prefill,
    Decode,
}

/// The grid a sweep covers: the strategies, model and measurement asked for (without any split
/// or length, which the sweep sets), the lengths, worlds and K/V head counts.
#[derive(Clone, Debug)]
pub struct SweepGrid {
    pub request: RunRequest,
    pub seq_lens: Vec<usize>,
    /// Empty: 8, 16, ..., 1024 (a measured sweep: the launch's world).
    pub worlds: Vec<usize>,
    /// Empty: the model's.
    pub kv_heads_list: Vec<usize>,
}

/// One point of the grid and what the analytic model projects for it (on nodes of the
/// profile's size).
#[derive(Clone, Debug)]
pub struct Point {
    pub cfg: RunConfig,
    pub world: usize,
    pub fits: bool,
    pub memory_bytes: f64,
    pub tps: f64,
    pub ttft_s: f64,
    pub link: String,
    pub exposed_comm_s: f64,
    /// With decode steps: the projected TPOT, its floor (bytes / HBM bandwidth) and MBU.
    pub decode: Option<crate::plan::decode::DecodePlan>,
    /// What `--mode run` measured at the point, where it ran.
    pub measured: Option<Measured>,
}

/// A point's measured figures (from its run directory's summary.csv).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub tps: f64,
    /// Its 95% confidence interval, where one could be computed.
    pub tps_ci95: Option<(f64, f64)>,
    pub iter_s: f64,
    pub peak_mem_gib: f64,
    pub run_dir: String,
    /// The device it ran on, as its rank files name it.
    pub device: String,
    /// With decode steps: TPOT (mean, and its 95% interval) and decode tokens/s.
    pub tpot_s: Option<f64>,
    pub tpot_ci95: Option<(f64, f64)>,
    pub decode_tps: Option<f64>,
}

impl Point {
    /// The figure `basis` ranks by: the projection where the point fits the profile's GPU, or the
    /// measurement where it ran.
    pub(super) fn figure(&self, basis: Basis) -> Option<f64> {
        self.figure_of(basis, Figure::Prefill)
    }

    /// As `figure`, of the prefill's or the decode's tokens/s.
    pub(super) fn figure_of(&self, basis: Basis, f: Figure) -> Option<f64> {
        match (basis, f) {
            (Basis::Projected, Figure::Prefill) => self.fits.then_some(self.tps),
            (Basis::Projected, Figure::Decode) => self.decode.as_ref().filter(|_| self.fits).map(|d| d.tokens_per_s),
            (Basis::Measured, Figure::Prefill) => self.measured.as_ref().map(|m| m.tps),
            (Basis::Measured, Figure::Decode) => self.measured.as_ref().and_then(|m| m.decode_tps),
        }
    }

    pub(super) fn key(&self) -> (usize, usize, usize) {
        (self.world, self.cfg.model.kv_heads, self.cfg.model.seq_len)
    }

    /// The split in words, without the layout ("tp 8 x cp 2").
    pub fn split(&self) -> String {
        self.cfg.describe_split().replace(&format!(", {}", self.cfg.layout.name()), "")
    }
}
