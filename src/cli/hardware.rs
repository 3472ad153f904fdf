//! `plan`'s and `sweep`'s hardware flags: a profile, any of its numbers overridden, and a run
//! directory to calibrate it from, resolved into `plan::Hardware`.

use crate::calibrate;
use crate::config::ConfigError;
use crate::plan::{Hardware, Profile};
use clap::Args;

/// `plan`'s hardware flags: a profile, and any of its numbers overridden.
#[derive(Args, Clone, Debug)]
pub struct HardwareArgs {
    /// The GPU and links to project onto.
    #[arg(long, value_enum, default_value = "h100-sxm")]
    pub hardware: Profile,
    /// GPUs per node (one NVLink domain). Default: show both one 16-GPU domain and 8-GPU nodes.
    #[arg(long, value_name = "N")]
    pub gpus_per_node: Option<usize>,
    /// Dense BF16 peak of one GPU, TFLOP/s (the profile's by default).
    #[arg(long, value_name = "TFLOPS")]
    pub peak_tflops: Option<f64>,
    /// HBM bandwidth of one GPU, TB/s.
    #[arg(long, value_name = "TB_PER_S")]
    pub hbm_tbps: Option<f64>,
    /// Memory of one GPU, GiB.
    #[arg(long, value_name = "GIB")]
    pub memory_gib: Option<f64>,
    /// NVLink bandwidth per GPU inside a node, GB/s.
    #[arg(long, value_name = "GB_PER_S")]
    pub nvlink_gbps: Option<f64>,
    /// InfiniBand bandwidth per GPU between nodes, GB/s.
    #[arg(long, value_name = "GB_PER_S")]
    pub ib_gbps: Option<f64>,
    /// Fraction of peak the GEMMs reach (0 to 1), whatever their shape (the profile's own is a
    /// curve by shape: `plan` prints it).
    #[arg(long, value_name = "FRACTION")]
    pub gemm_efficiency: Option<f64>,
    /// Fraction of peak attention reaches (0 to 1).
    #[arg(long, value_name = "FRACTION")]
    pub attention_efficiency: Option<f64>,
    /// Take the GEMM and attention efficiencies (and, from a one-host run, the intra-node link
    /// bandwidth) from a run directory's measurements instead of the profile; explicit flags above
    /// still win. The output says which number came from where.
    #[arg(long, value_name = "RUN_DIR")]
    pub calibrate: Option<std::path::PathBuf>,
}

impl HardwareArgs {
    /// The profile, calibrated from --calibrate's run where given, with the explicit overrides,
    /// for `gpus_per_node` GPUs per node.
    pub fn calibrated(&self, gpus_per_node: usize) -> Result<Hardware, ConfigError> {
        // The overrides first: a calibration's efficiencies are measured against the peak in force.
        let base = self.with_flags(self.hardware.hardware(), gpus_per_node)?;
        let Some(dir) = &self.calibrate else { return known(base) };
        let source = match self.peak_tflops {
            Some(v) => format!("--peak-tflops {}", crate::config::flag_number(v)),
            None => format!("{}'s", base.name),
        };
        let (hw, notes) =
            calibrate::calibrate(&base, self.hardware, dir, &source).map_err(|e| ConfigError(format!("{e:#}").replace('\n', " ")))?;
        // Then again, so that every explicit flag wins over what the run measured, and says so.
        known(self.with_flags(Hardware { calibrated: notes, ..hw }, gpus_per_node)?)
    }

    fn with_flags(&self, mut hw: Hardware, gpus_per_node: usize) -> Result<Hardware, ConfigError> {
        hw.gpus_per_node = gpus_per_node;
        let positive = |flag: &str, v: Option<f64>, scale: f64, slot: &mut f64| -> Result<(), ConfigError> {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(ConfigError(format!("{flag} {v}: must be a positive number")));
                }
                if !(v * scale).is_finite() {
                    return Err(ConfigError(format!(
                        "{flag} {}: too large (it overflows once in base units)",
                        crate::config::flag_number(v)
                    )));
                }
                *slot = v * scale;
            }
            Ok(())
        };
        positive("--peak-tflops", self.peak_tflops, 1e12, &mut hw.peak_flops)?;
        positive("--hbm-tbps", self.hbm_tbps, 1e12, &mut hw.hbm_bytes_per_s)?;
        positive("--memory-gib", self.memory_gib, (1u64 << 30) as f64, &mut hw.memory_bytes)?;
        positive("--nvlink-gbps", self.nvlink_gbps, 1e9, &mut hw.nvlink_bytes_per_s)?;
        positive("--ib-gbps", self.ib_gbps, 1e9, &mut hw.ib_bytes_per_s)?;
        positive("--gemm-efficiency", self.gemm_efficiency, 1.0, &mut hw.gemm_efficiency)?;
        if self.gemm_efficiency.is_some() {
            // One efficiency, as asked, for every shape.
            hw.gemm_shape_curve.clear();
        }
        positive("--attention-efficiency", self.attention_efficiency, 1.0, &mut hw.attention_efficiency)?;
        if !hw.calibrated.is_empty() {
            for (flag, given) in [("--gemm-efficiency", self.gemm_efficiency), ("--attention-efficiency", self.attention_efficiency)] {
                if let Some(v) = given {
                    hw.calibrated.push(format!("{flag} {v} given: it replaces the calibration's"));
                }
            }
        }
        for (flag, v) in [("--gemm-efficiency", hw.gemm_efficiency), ("--attention-efficiency", hw.attention_efficiency)] {
            if v > 1.0 {
                return Err(ConfigError(format!("{flag} {v}: a fraction of peak cannot exceed 1")));
            }
        }
        if gpus_per_node == 0 {
            return Err(ConfigError("--gpus-per-node 0: must be at least 1".into()));
        }
        Ok(hw)
    }
}

/// `hw`, if every rate it plans with is known; else the flags that would give the others.
fn known(hw: Hardware) -> Result<Hardware, ConfigError> {
    let missing = hw.unknown_rates();
    if missing.is_empty() {
        return Ok(hw);
    }
    Err(ConfigError(format!("--hardware {}: no profile knows these rates of it; give {}", hw.name, missing.join(", "))))
}
