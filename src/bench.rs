//! `ringbench bench`: one part alone. `attention`: the attention kernel on shapes given by flags,
//! so its speed can be compared with other implementations (scripts/torch_peer.py) on the same
//! card in the same run; FLOPs follow the usual convention: 4 x queries x keys x head_dim x heads
//! per sequence (QK^T and PV, a multiply-add as two), halved for causal attention. `launch`: what
//! one small kernel launch costs the host and the device, the quantity a layer of many small
//! launches pays per op.

use crate::backend::cuda::device::AttentionKernel;
use crate::backend::{Backend, Heads, Span};
use crate::config::{require_at_most, require_positive, BackendKind, ConfigError};
use crate::generator::{Init, Region};
use crate::metrics::{fmt_seconds, Stats};
use crate::timing::{self, Protocol};
use anyhow::Result;
use serde::Serialize;

/// Generator tensor ids of the benchmark's inputs (outside the model's ids).
const BENCH_Q: u64 = 1 << 40;
const BENCH_KV: u64 = (1 << 40) + 1;
const BENCH_DO: u64 = (1 << 40) + 2;

/// What `bench attention` measures (its flags, resolved by the command line).
#[derive(Clone, Debug)]
pub struct AttentionBench {
    pub backend: BackendKind,
    pub heads: usize,
    /// K/V heads (grouped-query attention): must divide --heads. Default: --heads.
    pub kv_heads: Option<usize>,
    pub head_dim: usize,
    /// Query tokens per sequence (one ring rank's block in the paper model: 100,000 / 16).
    pub queries: usize,
    /// Key/value tokens per sequence.
    pub keys: usize,
    /// Sequences, each its own query and key/value block.
    pub batch: usize,
    /// Causal mask: queries and keys cover the same positions (a diagonal block; needs --queries = --keys).
    pub causal: bool,
    /// A decode step's attention (`Backend::attention_decode`): one query per sequence.
    pub decode: bool,
    /// The attention backward (`Backward::attention_backward`) instead of the forward.
    pub backward: bool,
    pub warmup: usize,
    pub iters: usize,
    /// Print the result as JSON.
    pub json: bool,
    /// The CUDA backend's attention kernel (auto: the tensor-core flash kernel, 128 query rows per
    /// block, for head dims 64 and 128; the plain one otherwise).
    pub kernel: AttentionKernel,
}

impl AttentionBench {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[
            ("--heads", self.heads),
            ("--head-dim", self.head_dim),
            ("--queries", self.queries),
            ("--keys", self.keys),
            ("--batch", self.batch),
            ("--iters", self.iters),
        ])?;
        let kv = self.kv_heads();
        require_positive(&[("--kv-heads", kv)])?;
        if self.heads % kv != 0 {
            return Err(ConfigError(format!("--kv-heads {kv}: --heads {} must be a multiple of it", self.heads)));
        }
        for (flag, value, max) in [
            ("--heads", self.heads, 1 << 16),
            ("--head-dim", self.head_dim, 1 << 16),
            ("--queries", self.queries, 1 << 40),
            ("--keys", self.keys, 1 << 40),
            ("--batch", self.batch, 1 << 24),
        ] {
            require_at_most(flag, value, max)?;
        }
        require_at_most("--iters", self.iters, crate::config::MAX_ITERATIONS)?;
        require_at_most("--warmup", self.warmup, crate::config::MAX_ITERATIONS)?;
        if self.backend == BackendKind::Cpu && self.kernel != AttentionKernel::Auto {
            return Err(ConfigError(format!(
                "--kernel {}: a choice among the CUDA backend's attention kernels; --backend cpu has one (leave --kernel out)",
                self.kernel.name()
            )));
        }
        if self.decode && self.queries != 1 {
            return Err(ConfigError(format!("--decode: one new query per sequence, so --queries 1 (given {})", self.queries)));
        }
        if self.causal && self.queries != self.keys {
            return Err(ConfigError(format!(
                "--causal: the benchmark's causal block is a diagonal one, so --queries {} must equal --keys {}",
                self.queries, self.keys
            )));
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// FLOPs of one call by the convention above: the backward's 2.5 x the forward's
    /// (FlashAttention's count: S, dP, dV, dK and dQ, five GEMMs to the forward's two).
    pub fn flops(&self) -> f64 {
        let full = 4.0 * self.queries as f64 * self.keys as f64 * self.head_dim as f64 * self.heads as f64 * self.batch as f64;
        let pass = if self.backward { 2.5 } else { 1.0 };
        if self.causal {
            pass * full / 2.0
        } else {
            pass * full
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AttentionResult {
    pub device: String,
    /// "measured", or "simulated" on the simulated GPU (then no figure here is a GPU's).
    pub timing: &'static str,
    pub kernel: String,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub queries: usize,
    pub keys: usize,
    pub batch: usize,
    pub causal: bool,
    /// The attention backward was timed (FLOPs 2.5 x the forward's).
    pub backward: bool,
    pub flops: f64,
    pub iters: usize,
    pub mean_s: f64,
    /// None for one measured iteration.
    pub ci95_s: Option<(f64, f64)>,
    pub min_s: f64,
    pub tflops: f64,
    /// TFLOP/s of the fastest iteration.
    pub tflops_best: f64,
    /// K/V bytes one call reads (every sequence's cache once), and that per second of the mean
    /// and the fastest call: a decode step's attention is bound by them.
    pub kv_bytes: f64,
    pub gbps: f64,
    pub gbps_best: f64,
}

impl AttentionBench {
    /// Bytes of the benchmark's buffers: Q and K/V in BF16, the FP32 (O, LSE) accumulators.
    pub fn buffer_bytes(&self) -> f64 {
        let (q, kv, w) = ((self.batch * self.queries) as f64, (self.batch * self.keys) as f64, (self.heads * self.head_dim) as f64);
        let kvw = (self.kv_heads() * self.head_dim) as f64;
        let forward = q * w * 2.0 + kv * 2.0 * kvw * 2.0 + q * w * 4.0 + q * self.heads as f64 * 4.0;
        // The backward's: the stored output and dO (BF16), delta, and the FP32 dQ and dK|dV.
        let backward =
            if self.backward { q * w * 2.0 * 2.0 + q * self.heads as f64 * 4.0 + q * w * 4.0 + kv * 2.0 * kvw * 4.0 } else { 0.0 };
        forward + backward
    }

    /// Refuse, before any allocation, buffers that `budget` bytes (the device's memory) cannot hold.
    pub fn check_memory(&self, budget: Option<u64>) -> Result<(), ConfigError> {
        let need = self.buffer_bytes();
        match budget {
            Some(b) if need > b as f64 => Err(ConfigError(format!(
                "--batch {} x --queries {} / --keys {} x --heads {} x --head-dim {}: the buffers need {}, but the device has {} available",
                self.batch,
                self.queries,
                self.keys,
                self.heads,
                self.head_dim,
                crate::metrics::fmt_bytes(need),
                crate::metrics::fmt_bytes(b as f64)
            ))),
            _ => Ok(()),
        }
    }
}

/// `attention`'s timed work for `--backward`: the forward once (untimed) for its LSE, dO and
/// delta, then each sample zeroes dQ and dK|dV (untimed) and runs every sequence's backward.
fn backward_samples<B: Backend>(be: &B, args: &AttentionBench, heads: Heads, (q, kv): (&B::Act, &B::Act)) -> Result<Vec<timing::Timing>> {
    let (w, kvw) = (heads.width(), heads.kv_width());
    let (q_rows, kv_rows) = (args.batch * args.queries, args.batch * args.keys);
    let spans =
        |s: usize| (Span { row0: s * args.queries, len: args.queries, pos0: 0 }, Span { row0: s * args.keys, len: args.keys, pos0: 0 });
    let (mut o, mut lse) = (be.alloc_acc(q_rows, w)?, be.alloc_acc(q_rows, heads.heads)?);
    be.attention_reset(&mut o, &mut lse)?;
    for s in 0..args.batch {
        let (qs, ks) = spans(s);
        be.attention(q, kv, heads, qs, ks, args.causal, &mut o, &mut lse)?;
    }
    let (mut out, mut d_o) = (be.alloc_act(q_rows, w)?, be.alloc_act(q_rows, w)?);
    be.attention_store(&o, &mut out)?;
    drop(o);
    be.fill(&mut d_o, 0, &Region::rows(BENCH_DO, w, 0, q_rows), 0, Init::Uniform)?;
    let mut delta = be.alloc_acc(q_rows, heads.heads)?;
    be.attention_backward_delta(&out, &d_o, heads.heads, &mut delta)?;
    let (dq, dkv) = (std::cell::RefCell::new(be.alloc_acc(q_rows, w)?), std::cell::RefCell::new(be.alloc_acc(kv_rows, 2 * kvw)?));
    timing::samples(
        be,
        Protocol { warmup: args.warmup, iters: args.iters },
        &mut || {
            be.zero_acc(&mut dq.borrow_mut())?;
            be.zero_acc(&mut dkv.borrow_mut())
        },
        &mut || {
            for s in 0..args.batch {
                let (qs, ks) = spans(s);
                be.attention_backward(q, kv, heads, qs, ks, args.causal, &d_o, &lse, &delta, &mut dq.borrow_mut(), &mut dkv.borrow_mut())?;
            }
            Ok(())
        },
        &mut || be.synchronize(),
    )
}

/// Time the attention of every sequence's query block against its key/value block, merged into
/// freshly reset accumulators (with `--backward`, its backward); each iteration ends when the
/// device is done.
pub fn attention<B: Backend>(be: &B, args: &AttentionBench) -> Result<AttentionResult> {
    args.check_memory(be.memory_budget(1))?;
    let heads = Heads { heads: args.heads, kv_heads: args.kv_heads(), head_dim: args.head_dim };
    let (w, kvw) = (heads.width(), heads.kv_width());
    let (q_rows, kv_rows) = (args.batch * args.queries, args.batch * args.keys);
    let mut q = be.alloc_act(q_rows, w)?;
    let mut kv = be.alloc_act(kv_rows, 2 * kvw)?;
    be.fill(&mut q, 0, &Region::rows(BENCH_Q, w, 0, q_rows), 0, Init::Uniform)?;
    be.fill(&mut kv, 0, &Region::rows(BENCH_KV, 2 * kvw, 0, kv_rows), 0, Init::Uniform)?;
    let mut o = be.alloc_acc(q_rows, w)?;
    let mut lse = be.alloc_acc(q_rows, args.heads)?;
    let scratch_rows = if args.decode { crate::backend::decode_scratch_rows(args.batch, heads, args.keys) } else { 0 };
    let scratch = std::cell::RefCell::new(be.alloc_acc(scratch_rows, args.head_dim + 1)?);
    let protocol = Protocol { warmup: args.warmup, iters: args.iters };
    let timings = if args.backward {
        backward_samples(be, args, heads, (&q, &kv))?
    } else {
        let (o, lse) = (std::cell::RefCell::new(&mut o), std::cell::RefCell::new(&mut lse));
        timing::samples(
            be,
            protocol,
            &mut || be.attention_reset(&mut o.borrow_mut(), &mut lse.borrow_mut()),
            &mut || {
                if args.decode {
                    let span = crate::backend::DecodeSpan { q_row0: 0, count: args.batch, seq0: 0, stride: args.keys, len: args.keys };
                    return be.attention_decode(
                        &q,
                        &kv,
                        heads,
                        span,
                        &mut o.borrow_mut(),
                        &mut lse.borrow_mut(),
                        &mut scratch.borrow_mut(),
                    );
                }
                for s in 0..args.batch {
                    let qs = Span { row0: s * args.queries, len: args.queries, pos0: 0 };
                    let ks = Span { row0: s * args.keys, len: args.keys, pos0: 0 };
                    be.attention(&q, &kv, heads, qs, ks, args.causal, &mut o.borrow_mut(), &mut lse.borrow_mut())?;
                }
                Ok(())
            },
            &mut || be.synchronize(),
        )?
    };
    // CUDA events on the GPU; the host's clock on the CPU.
    let times: Vec<f64> = timings.iter().map(|t| t.seconds).collect();
    let st = Stats::of(&times).expect("--iters >= 1");
    let flops = args.flops();
    let kernel = match args.backend {
        BackendKind::Cpu => "cpu (tiled FP32 GEMMs)".to_string(),
        BackendKind::Cuda if args.decode => "decode (cache split over thread blocks, partials merged by LSE)".to_string(),
        BackendKind::Cuda if args.backward => args.kernel.describe_backward(args.head_dim),
        BackendKind::Cuda => args.kernel.describe(args.head_dim),
    };
    let kv_bytes = (kv_rows * 2 * kvw * 2) as f64;
    let device = be.device_name();
    Ok(AttentionResult {
        timing: crate::backend::timing_kind(&device),
        device,
        kernel,
        heads: args.heads,
        kv_heads: args.kv_heads(),
        head_dim: args.head_dim,
        queries: args.queries,
        keys: args.keys,
        batch: args.batch,
        causal: args.causal,
        backward: args.backward,
        flops,
        iters: st.n,
        mean_s: st.mean,
        ci95_s: st.ci95,
        min_s: st.min,
        tflops: flops / st.mean / 1e12,
        tflops_best: flops / st.min / 1e12,
        kv_bytes,
        gbps: kv_bytes / st.mean / 1e9,
        gbps_best: kv_bytes / st.min / 1e9,
    })
}

/// What `bench launch` measures (its flags, resolved by the command line).
#[derive(Clone, Debug)]
pub struct LaunchBench {
    pub backend: BackendKind,
    /// Launches queued back to back per iteration.
    pub launches: usize,
    /// Elements the launched op (a residual add of two buffers) touches.
    pub elements: usize,
    pub warmup: usize,
    pub iters: usize,
    /// Print one JSON object per line.
    pub json: bool,
}

impl LaunchBench {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[("--launches", self.launches), ("--elements", self.elements), ("--iters", self.iters)])?;
        require_at_most("--launches", self.launches, 1_000_000)?;
        require_at_most("--iters", self.iters, crate::config::MAX_ITERATIONS)?;
        require_at_most("--warmup", self.warmup, crate::config::MAX_ITERATIONS)?;
        require_at_most("--elements", self.elements, 1 << 28)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LaunchResult {
    pub device: String,
    /// "measured", or "simulated" on the simulated GPU.
    pub timing: &'static str,
    /// What ordered the op's buffers across streams (the CUDA backend: "timeline events only" or
    /// "cudarc buffer events too").
    pub ordering: String,
    pub launches: usize,
    pub elements: usize,
    pub iters: usize,
    /// Host time to queue one launch (mean over iterations, and the best iteration's).
    pub host_us_per_launch: f64,
    pub host_us_per_launch_min: f64,
    /// Device (or, on the CPU, host) time per op from the first launch to the last one's end.
    pub device_us_per_launch: f64,
    pub device_us_per_launch_min: f64,
}

/// Queue `launches` adds of two small buffers back to back, per iteration: the host's time to queue
/// them, and the device's time to run them (the iteration's timer events), per launch.
pub fn launch<B: Backend>(be: &B, args: &LaunchBench, ordering: &str) -> Result<LaunchResult> {
    let mut x = be.alloc_act(1, args.elements)?;
    let mut y = be.alloc_act(1, args.elements)?;
    be.fill(&mut x, 0, &Region::rows(BENCH_Q, args.elements, 0, 1), 0, Init::Uniform)?;
    be.fill(&mut y, 0, &Region::rows(BENCH_KV, args.elements, 0, 1), 0, Init::Uniform)?;
    let timings = timing::samples(
        be,
        Protocol { warmup: args.warmup, iters: args.iters },
        &mut || Ok(()),
        &mut || (0..args.launches).try_for_each(|_| be.add(&mut x, &y)),
        &mut || be.synchronize(),
    )?;
    let per_launch = |s: f64| s / args.launches as f64 * 1e6;
    let host: Vec<f64> = timings.iter().map(|t| per_launch(t.queued_s)).collect();
    let device: Vec<f64> = timings.iter().map(|t| per_launch(t.seconds)).collect();
    let (h, d) = (Stats::of(&host).expect("--iters >= 1"), Stats::of(&device).expect("--iters >= 1"));
    let device = be.device_name();
    Ok(LaunchResult {
        timing: crate::backend::timing_kind(&device),
        device,
        ordering: ordering.to_string(),
        launches: args.launches,
        elements: args.elements,
        iters: h.n,
        host_us_per_launch: h.mean,
        host_us_per_launch_min: h.min,
        device_us_per_launch: d.mean,
        device_us_per_launch_min: d.min,
    })
}

/// The line that heads a result taken on the simulated GPU (`timing` "simulated"), else nothing.
fn simulated_note(timing: &str) -> &'static str {
    if timing == "simulated" {
        "SIMULATED device (kernels on the CPU): the times below are not measurements of a GPU\n"
    } else {
        ""
    }
}

pub fn render_launch(r: &LaunchResult) -> String {
    format!(
        "{}ringbench bench launch on {} ({}): {} adds of {} elements per iteration, n {}\n  host   {:.2} us to queue one launch (best {:.2})\n  device {:.2} us per launch, first to last (best {:.2})",
        simulated_note(r.timing),
        r.device,
        r.ordering,
        r.launches,
        r.elements,
        r.iters,
        r.host_us_per_launch,
        r.host_us_per_launch_min,
        r.device_us_per_launch,
        r.device_us_per_launch_min
    )
}

pub fn render(r: &AttentionResult) -> String {
    format!(
        "{}ringbench bench attention{} on {}, {} kernel: {} sequence(s) x {} queries x {} keys, {} heads x head dim {}, {}\n  time     mean {}, {}, min {} (n {})\n  rate     {:.3} TFLOP/s mean, {:.3} best ({:.4e} FLOPs per call: {}4 q kv d h{})",
        simulated_note(r.timing),
        if r.backward { " --backward" } else { "" },
        r.device,
        r.kernel,
        r.batch,
        r.queries,
        r.keys,
        r.heads,
        r.head_dim,
        if r.causal { "causal" } else { "non-causal" },
        fmt_seconds(r.mean_s),
        crate::metrics::fmt_ci(r.ci95_s, fmt_seconds),
        fmt_seconds(r.min_s),
        r.iters,
        r.tflops,
        r.tflops_best,
        r.flops,
        if r.backward { "2.5 x " } else { "" },
        if r.causal { ", halved for causal" } else { "" }
    ) + &format!(
        "\n  K/V read {:.1} GB/s mean, {:.1} best ({} per call, every sequence's keys and values once)",
        r.gbps,
        r.gbps_best,
        crate::metrics::fmt_bytes(r.kv_bytes)
    )
}
