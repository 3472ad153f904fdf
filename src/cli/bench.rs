//! `bench`'s flags, resolved into `bench::AttentionBench` and `bench::LaunchBench`.

use crate::backend::cuda::device::AttentionKernel;
use crate::bench::{AttentionBench, LaunchBench};
use crate::config::BackendKind;
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct AttentionArgs {
    /// Where the kernel runs.
    #[arg(long, value_enum, default_value = "cuda")]
    pub backend: BackendKind,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    /// K/V heads (grouped-query attention): must divide --heads. Default: --heads.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Columns per head.
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// Query tokens per sequence (one ring rank's block in the paper model: 100,000 / 16).
    #[arg(long, default_value_t = 6250)]
    pub queries: usize,
    /// Key/value tokens per sequence.
    #[arg(long, default_value_t = 6250)]
    pub keys: usize,
    /// Sequences, each its own query and key/value block.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Causal mask: queries and keys cover the same positions (a diagonal block; needs --queries = --keys).
    #[arg(long)]
    pub causal: bool,
    /// A decode step's attention: each sequence's one new query (--queries 1) against its --keys
    /// cached rows, through the decode kernel (the cache split over thread blocks); reports the
    /// K/V bytes read per second.
    #[arg(long, conflicts_with_all = ["causal", "kernel"])]
    pub decode: bool,
    /// The attention backward instead (a training step's: dQ, dK, dV from dO, the forward's LSE
    /// and delta, which are computed once before timing); FLOPs counted as FlashAttention counts
    /// them, 2.5 x the forward's (five GEMMs to its two).
    #[arg(long, conflicts_with = "decode")]
    pub backward: bool,
    /// Warm-up calls (not timed).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed calls.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The CUDA backend's attention kernel (auto: the tensor-core flash kernel, 128 query rows per
    /// block, for head dims 64 and 128; the plain one otherwise).
    #[arg(long, value_enum, default_value = "auto")]
    pub kernel: AttentionKernel,
}

impl AttentionArgs {
    pub fn bench(&self) -> AttentionBench {
        AttentionBench {
            backend: self.backend,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            queries: self.queries,
            keys: self.keys,
            batch: self.batch,
            causal: self.causal,
            decode: self.decode,
            backward: self.backward,
            warmup: self.warmup,
            iters: self.iters,
            json: self.json,
            kernel: self.kernel,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Where the launches run.
    #[arg(long, value_enum, default_value = "cuda")]
    pub backend: BackendKind,
    /// Launches queued back to back per iteration.
    #[arg(long, default_value_t = 2000)]
    pub launches: usize,
    /// Elements the launched op (a residual add of two buffers) touches.
    #[arg(long, default_value_t = 1024)]
    pub elements: usize,
    /// Warm-up iterations (not timed).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl LaunchArgs {
    pub fn bench(&self) -> LaunchBench {
        LaunchBench {
            backend: self.backend,
            launches: self.launches,
            elements: self.elements,
            warmup: self.warmup,
            iters: self.iters,
            json: self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::bench::{attention, launch};
    use crate::config::ConfigError;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AttentionArgs,
    }

    fn args(flags: &str) -> AttentionBench {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.split_whitespace())).unwrap().args.bench()
    }

    #[test]
    fn flops_follow_the_convention() {
        let a = args("--heads 32 --head-dim 128 --queries 6250 --keys 6250");
        assert_eq!(a.flops(), 4.0 * 6250.0 * 6250.0 * 128.0 * 32.0);
        let c = args("--heads 32 --head-dim 128 --queries 6250 --keys 6250 --causal --batch 2");
        assert_eq!(c.flops(), a.flops());
    }

    #[test]
    fn bad_shapes_name_their_flag() {
        assert!(args("--heads 0").validate().unwrap_err().0.contains("--heads 0"));
        assert!(args("--iters 1000000000").validate().unwrap_err().0.contains("--iters 1000000000: at most 1000000"));
        // 1e8 queries of 32 x 128 need about 100 GB: refused before any allocation, with the figures.
        let huge = args("--backend cpu --queries 100000000 --keys 6250");
        huge.validate().unwrap();
        let e = huge.check_memory(Some(24 << 30)).unwrap_err().0;
        assert!(e.contains("--queries 100000000") && e.contains("the buffers need") && e.contains("available"), "{e}");
        let e = attention(&CpuBackend::new(), &args("--backend cpu --queries 100000000 --keys 6250")).unwrap_err();
        assert!(e.downcast_ref::<ConfigError>().is_some(), "{e:#}");
        assert!(args("--causal --queries 10 --keys 12").validate().unwrap_err().0.contains("--queries 10 must equal --keys 12"));
    }

    #[derive(Parser)]
    struct LaunchCli {
        #[command(flatten)]
        args: LaunchArgs,
    }

    #[test]
    fn launch_costs_are_per_launch_and_limits_are_named() {
        let a = LaunchCli::try_parse_from([
            "bench",
            "--backend",
            "cpu",
            "--launches",
            "50",
            "--elements",
            "64",
            "--warmup",
            "0",
            "--iters",
            "3",
        ])
        .unwrap()
        .args
        .bench();
        a.validate().unwrap();
        let r = launch(&CpuBackend::new(), &a, "cpu").unwrap();
        assert_eq!((r.iters, r.launches, r.elements), (3, 50, 64));
        assert!(r.host_us_per_launch > 0.0 && r.host_us_per_launch_min <= r.host_us_per_launch);
        assert!(r.device_us_per_launch >= r.host_us_per_launch_min, "the run includes the queueing on the CPU");
        let big = LaunchCli::try_parse_from(["bench", "--launches", "2000000"]).unwrap().args.bench();
        assert!(big.validate().unwrap_err().0.contains("--launches 2000000"));
    }

    #[test]
    fn the_cpu_backend_runs_it_and_the_rate_is_flops_over_time() {
        let a = args("--backend cpu --heads 2 --head-dim 16 --queries 33 --keys 33 --causal --warmup 0 --iters 2");
        let r = attention(&CpuBackend::new(), &a).unwrap();
        assert_eq!(r.iters, 2);
        assert!((r.tflops - r.flops / r.mean_s / 1e12).abs() <= 1e-12 * r.tflops.max(1.0));
        assert!(r.min_s <= r.mean_s && r.tflops_best >= r.tflops);
        // The backward: 2.5 x the forward's FLOPs, its buffers counted, --decode refused with it.
        let b = args("--backend cpu --heads 2 --head-dim 16 --queries 33 --keys 33 --causal --warmup 0 --iters 2 --backward");
        let rb = attention(&CpuBackend::new(), &b).unwrap();
        assert!(rb.backward && (rb.flops - 2.5 * r.flops).abs() < 1e-6, "{} vs {}", rb.flops, r.flops);
        assert!(b.buffer_bytes() > a.buffer_bytes());
        assert!(Cli::try_parse_from(["bench", "--backward", "--decode"]).is_err());
    }
}
