//! The hardware profiles `plan` projects onto: one GPU's peak, memory and links, and the rates
//! by size its work runs at (the curves `rates` applies), each with where its numbers came from.

use serde::Serialize;

/// The H100's GEMM rate by the smallest dimension of the GEMM, as a fraction of the profile's
/// large-shape efficiency (0.78 of peak): cuBLAS BF16 on the H100 SXM (2026-11-26; the table in docs/commands.md, "plan"),
/// 100000x4096x512 at 660 TFLOP/s (0.667 of peak, 0.856 of 0.78) and 100000x1536x4096 at 803
/// (above 0.78: taken as 1); every measured shape with all dimensions 1536 or more ran at
/// 763-803. Interpolated in log2 of the dimension; held beyond both ends (nothing below 512 was
/// measured: there the HBM roofline decides a skinny GEMM's time).
pub const H100_GEMM_SHAPE_CURVE: [(f64, f64); 2] = [(512.0, 0.856), (1536.0, 1.0)];

/// Rows of queries one attention block takes (the flash kernels' 128-row tile).
pub const ATTENTION_BLOCK_ROWS: usize = 128;

/// NCCL's own latency model (src/graph/tuning.cc, Ring algorithm, Simple protocol): a base
/// latency per call and a latency per hop, NVLink and network.
pub const NCCL_BASE_LATENCY_S: f64 = 8.4e-6;
pub const NCCL_NVLINK_HOP_LATENCY_S: f64 = 5.7e-6;
pub const NCCL_NET_HOP_LATENCY_S: f64 = 6.6e-6;

/// The same model for the small messages of decode, which NCCL sends with its LL protocol (Ring
/// LL in tuning.cc's table: a base of 3.6 us, 0.47 us per NVLink hop, 2.7 us per network hop).
pub const NCCL_LL_BASE_LATENCY_S: f64 = 3.6e-6;
pub const NCCL_LL_NVLINK_HOP_LATENCY_S: f64 = 0.47e-6;
pub const NCCL_LL_NET_HOP_LATENCY_S: f64 = 2.7e-6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// NVIDIA H100 SXM 80GB: 989 TFLOP/s BF16 dense, 3.35 TB/s, NVLink 450 GB/s, IB 50 GB/s per GPU.
    H100Sxm,
    /// NVIDIA A100 SXM 80GB: 312 TFLOP/s BF16 dense, 2.04 TB/s, NVLink 300 GB/s, IB 25 GB/s per GPU.
    A100Sxm,
    /// NVIDIA H200 SXM 141GB: 989 TFLOP/s BF16 dense, 4.8 TB/s, NVLink 450 GB/s, IB 50 GB/s per GPU
    /// (the H100's compute and links with more and faster memory).
    H200Sxm,
    /// This host's CPU, for plans calibrated from CPU runs: no rate of it is known in advance, so
    /// each comes from `--calibrate` or a flag.
    Cpu,
}

/// One GPU model and its links.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hardware {
    pub name: String,
    /// Dense BF16 FLOP/s of one GPU.
    pub peak_flops: f64,
    pub hbm_bytes_per_s: f64,
    pub memory_bytes: f64,
    /// NVLink bandwidth per GPU, per direction.
    pub nvlink_bytes_per_s: f64,
    /// Inter-node bandwidth per GPU, per direction.
    pub ib_bytes_per_s: f64,
    /// GPUs in one NVLink domain (one node).
    pub gpus_per_node: usize,
    /// Fraction of peak that GEMMs and attention reach (measured on the reference card:
    /// cuBLAS 770-800 TFLOP/s, cuDNN attention 536-592 TFLOP/s; see docs/commands.md, "plan").
    pub gemm_efficiency: f64,
    pub attention_efficiency: f64,
    /// The GEMM rate by the smallest dimension of a GEMM, as a fraction of `gemm_efficiency`:
    /// (dimension, fraction) points, interpolated in log2 (`rates::gemm_shape_factor`); empty
    /// where the efficiency is one number for every shape (given, or calibrated).
    pub gemm_shape_curve: Vec<(f64, f64)>,
    /// SMs that attention blocks fill in waves (0: not modelled).
    pub sm_count: usize,
    /// Before its bytes, each call between GPUs waits this much, plus a hop latency per step of
    /// its algorithm on its link (`NCCL_*`).
    pub call_latency_s: f64,
    pub nvlink_hop_latency_s: f64,
    pub ib_hop_latency_s: f64,
    /// The same for the small messages of a decode step (NCCL's LL protocol): per call, per
    /// NVLink hop, per network hop.
    pub small_call_latency_s: f64,
    pub small_nvlink_hop_latency_s: f64,
    pub small_ib_hop_latency_s: f64,
    /// Where `--calibrate` took numbers from measured runs: a line per number.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calibrated: Vec<String>,
}

impl Profile {
    /// The GPU profiles (whose bounds apply to a measured run on that GPU).
    pub const GPUS: [Profile; 3] = [Profile::H100Sxm, Profile::A100Sxm, Profile::H200Sxm];

    /// The name `--hardware` takes and the plans print.
    pub fn name(self) -> &'static str {
        match self {
            Profile::H100Sxm => "h100-sxm",
            Profile::A100Sxm => "a100-sxm",
            Profile::H200Sxm => "h200-sxm",
            Profile::Cpu => "cpu",
        }
    }

    /// Whether a run on `device` (as its rank files name it) ran on this profile's hardware: the
    /// GPU's model for the GPU profiles (not its PCIe or NVL forms, whose peaks differ), the CPU
    /// backend for `cpu`.
    pub fn matches_device(self, device: &str) -> bool {
        let d = device.to_ascii_uppercase();
        let other_form = d.contains("PCIE") || d.contains("NVL") || d.contains("GH200");
        match self {
            Profile::H100Sxm => d.contains("H100") && !other_form,
            Profile::H200Sxm => d.contains("H200") && !other_form,
            Profile::A100Sxm => d.contains("A100") && !other_form,
            Profile::Cpu => device.starts_with("cpu"),
        }
    }

    pub fn hardware(self) -> Hardware {
        match self {
            Profile::H100Sxm => Hardware {
                name: Profile::H100Sxm.name().into(),
                peak_flops: 989e12,
                hbm_bytes_per_s: 3.35e12,
                memory_bytes: 80e9,
                nvlink_bytes_per_s: 450e9,
                ib_bytes_per_s: 50e9,
                gpus_per_node: 8,
                gemm_efficiency: 0.78,
                attention_efficiency: 0.55,
                gemm_shape_curve: H100_GEMM_SHAPE_CURVE.to_vec(),
                sm_count: 132,
                call_latency_s: NCCL_BASE_LATENCY_S,
                nvlink_hop_latency_s: NCCL_NVLINK_HOP_LATENCY_S,
                ib_hop_latency_s: NCCL_NET_HOP_LATENCY_S,
                small_call_latency_s: NCCL_LL_BASE_LATENCY_S,
                small_nvlink_hop_latency_s: NCCL_LL_NVLINK_HOP_LATENCY_S,
                small_ib_hop_latency_s: NCCL_LL_NET_HOP_LATENCY_S,
                calibrated: Vec::new(),
            },
            // The H100's GEMM shape curve and NCCL's latencies, assumed (no A100 was measured here).
            Profile::A100Sxm => Hardware {
                name: Profile::A100Sxm.name().into(),
                peak_flops: 312e12,
                hbm_bytes_per_s: 2.039e12,
                nvlink_bytes_per_s: 300e9,
                ib_bytes_per_s: 25e9,
                gemm_efficiency: 0.80,
                attention_efficiency: 0.60,
                sm_count: 108,
                ..Profile::H100Sxm.hardware()
            },
            // The H100's efficiencies, assumed: the same SMs at the same clocks (none measured here).
            Profile::H200Sxm => Hardware {
                name: Profile::H200Sxm.name().into(),
                memory_bytes: 141e9,
                hbm_bytes_per_s: 4.8e12,
                ..Profile::H100Sxm.hardware()
            },
            // Unknown until calibrated or given (NaN: `unknown_rates` names them).
            Profile::Cpu => Hardware {
                name: Profile::Cpu.name().into(),
                peak_flops: f64::NAN,
                hbm_bytes_per_s: f64::NAN,
                memory_bytes: f64::NAN,
                nvlink_bytes_per_s: f64::NAN,
                ib_bytes_per_s: f64::NAN,
                gpus_per_node: 8,
                gemm_efficiency: f64::NAN,
                attention_efficiency: f64::NAN,
                // One rate for every shape, no waves, no latency beyond what the calibrated link
                // rate includes: nothing of a CPU's is modelled in more detail.
                gemm_shape_curve: Vec::new(),
                sm_count: 0,
                call_latency_s: 0.0,
                nvlink_hop_latency_s: 0.0,
                ib_hop_latency_s: 0.0,
                small_call_latency_s: 0.0,
                small_nvlink_hop_latency_s: 0.0,
                small_ib_hop_latency_s: 0.0,
                calibrated: Vec::new(),
            },
        }
    }
}

impl Hardware {
    /// The flags that would give the rates this hardware does not know (a `cpu` profile's, before
    /// calibration and flags).
    pub fn unknown_rates(&self) -> Vec<&'static str> {
        [
            ("--peak-tflops", self.peak_flops),
            ("--hbm-tbps", self.hbm_bytes_per_s),
            ("--memory-gib", self.memory_bytes),
            ("--nvlink-gbps (or --calibrate from a multi-rank run on one host)", self.nvlink_bytes_per_s),
            ("--ib-gbps", self.ib_bytes_per_s),
            ("--gemm-efficiency (or --calibrate)", self.gemm_efficiency),
            ("--attention-efficiency (or --calibrate)", self.attention_efficiency),
        ]
        .iter()
        .filter(|(_, v)| v.is_nan())
        .map(|(f, _)| *f)
        .collect()
    }
}
