//! What to run: the model, the strategy and its parallel sizes, the measurement; presets; and the
//! validation that turns bad input into one clear line before any work starts.

mod limits;
pub use limits::*;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// One rank, the whole model: the numerical reference.
    Reference,
    /// Megatron tensor parallel (--tp) x pipeline parallel (--pp).
    TpPp,
    /// Sequence parallel with ring attention over --ring ranks.
    Ring,
    /// Context parallel with all-gathered K/V (as Llama 3 was trained) over --ring ranks.
    Allgather,
    /// DeepSpeed-Ulysses: all-to-all from tokens to heads and back, over --ring ranks.
    Ulysses,
    /// Ulysses groups of --ulysses consecutive ranks x a ring of --ring over the groups.
    Usp,
    /// Tensor parallel groups of --tp consecutive ranks x a context ring of --cp.
    TpCp,
    /// LoongTrain's double ring over --ring ranks: inner rings of --window ranks (inside a node),
    /// an outer ring across the windows.
    DoubleRing,
}

impl StrategyKind {
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Reference => "reference",
            StrategyKind::TpPp => "tp-pp",
            StrategyKind::Ring => "ring",
            StrategyKind::Allgather => "allgather",
            StrategyKind::Ulysses => "ulysses",
            StrategyKind::Usp => "usp",
            StrategyKind::TpCp => "tp-cp",
            StrategyKind::DoubleRing => "double-ring",
        }
    }
}

/// What `--strategy` selects: one strategy, or every multi-rank one whose sizes fit the job, in
/// one launch (tp-pp and ring must fit, their sizes being explicit flags, and so must usp and
/// tp-cp where --ulysses or --cp is given; the others run where the model allows them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategySelection {
    One(StrategyKind),
    All,
}

impl StrategySelection {
    pub fn name(self) -> &'static str {
        match self {
            StrategySelection::All => "all",
            StrategySelection::One(kind) => kind.name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// 2P chunks, rank r holds chunks r and 2P-1-r: causal work balanced across the ring.
    Zigzag,
    /// P chunks, rank r holds chunk r: the naive split, for comparison.
    Contiguous,
    /// Token i on rank i mod P (Striped Attention): causal work balanced within a token per rank.
    Striped,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Zigzag => "zigzag",
            Layout::Contiguous => "contiguous",
            Layout::Striped => "striped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The reference workload: 16 layers, d_model 4096, 32 heads, MLP 16384, 100K tokens, batch 128.
    Paper,
    /// Llama 3 8B's blocks: 32 layers, d_model 4096, 32 heads, 8 K/V heads, SwiGLU MLP 14336.
    #[serde(rename = "llama3-8b")]
    Llama3_8b,
    /// Llama 3 70B's blocks: 80 layers, d_model 8192, 64 heads, 8 K/V heads, SwiGLU MLP 28672.
    #[serde(rename = "llama3-70b")]
    Llama3_70b,
    /// Llama 3 405B's blocks: 126 layers, d_model 16384, 128 heads, 8 K/V heads, SwiGLU MLP 53248.
    #[serde(rename = "llama3-405b")]
    Llama3_405b,
    /// A CPU-sized demo: 4 layers, d_model 256, 8 heads, MLP 1024, 2048 tokens, batch 4.
    Small,
    /// For tests and verify: 2 layers, d_model 64, 4 heads, MLP 256, 256 tokens, batch 2.
    Tiny,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Llama3_8b => "llama3-8b",
            Preset::Llama3_70b => "llama3-70b",
            Preset::Llama3_405b => "llama3-405b",
            Preset::Small => "small",
            Preset::Tiny => "tiny",
        }
    }

    pub(crate) fn values(self) -> PresetValues {
        // The Llama blocks (docs/design.md, "Model presets") run the seed's measurement: 100K tokens,
        // batch 128, 10 + 100 iterations; sequence length, batch and iterations are run flags.
        let llama = |layers, d_model, heads, mlp| PresetValues {
            model: ModelConfig { layers, d_model, heads, kv_heads: 8, mlp, mlp_act: MlpAct::Swiglu, seq_len: 100_000, batch: 128 },
            micro_batch: 1,
            warmup: 10,
            iters: 100,
        };
        match self {
            Preset::Paper => {
                PresetValues { model: ModelConfig::dense(16, 4096, 32, 16384, 100_000, 128), micro_batch: 1, warmup: 10, iters: 100 }
            }
            Preset::Llama3_8b => llama(32, 4096, 32, 14336),
            Preset::Llama3_70b => llama(80, 8192, 64, 28672),
            Preset::Llama3_405b => llama(126, 16384, 128, 53248),
            Preset::Small => PresetValues { model: ModelConfig::dense(4, 256, 8, 1024, 2048, 4), micro_batch: 1, warmup: 1, iters: 5 },
            Preset::Tiny => PresetValues { model: ModelConfig::dense(2, 64, 4, 256, 256, 2), micro_batch: 1, warmup: 1, iters: 3 },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// FP32 arithmetic on BF16-rounded host buffers, MPI between ranks.
    Cpu,
    /// One GPU per rank (local rank modulo the visible GPUs): cuBLAS and NVRTC kernels; MPI with
    /// host staging between ranks.
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// How ranks exchange device data (`--comm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommKind {
    /// MPI on host buffers (the CUDA backend stages through the host; several ranks may share a GPU).
    #[default]
    Mpi,
    /// NCCL between GPUs, on a communication stream of its own (CUDA backend; one rank per GPU).
    Nccl,
}

impl CommKind {
    pub fn name(self) -> &'static str {
        match self {
            CommKind::Mpi => "mpi",
            CommKind::Nccl => "nccl",
        }
    }
}

/// What carries a run's communication, which decides how it is timed and whether it can hide
/// under compute. Derived from the config, so the launcher and the reports agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// MPI on host buffers.
    Mpi,
    /// NCCL on a communication stream of its own.
    Nccl,
    /// An emulated rank's device copies, in order with the compute (CPU backend).
    EmulatedInOrder,
    /// An emulated rank's device copies on a communication stream (CUDA backend).
    EmulatedOnStream,
}

impl Transport {
    /// How its communication time, and the part hidden under compute, are measured.
    pub fn timing(self) -> &'static str {
        match self {
            Transport::Mpi => "host transport: MPI moves data only inside its calls, so nothing overlaps",
            Transport::EmulatedInOrder => "emulated copies run in order with the compute on this backend",
            Transport::Nccl | Transport::EmulatedOnStream => "timed by CUDA events on the communication and compute streams",
        }
    }
}

/// A preset's model and measurement, the defaults its flags override.
pub(crate) struct PresetValues {
    pub model: ModelConfig,
    pub micro_batch: usize,
    pub warmup: usize,
    pub iters: usize,
}

/// The MLP's activation (docs/design.md, "Grouped K/V heads and gated MLPs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlpAct {
    /// x W_up, GELU (tanh form), W_down: the seed's dense MLP.
    #[default]
    Gelu,
    /// (silu(x W_gate) * (x W_up)) W_down, with W_up [d, 2 F] = [gate | up].
    Swiglu,
}

impl MlpAct {
    pub fn name(self) -> &'static str {
        match self {
            MlpAct::Gelu => "gelu",
            MlpAct::Swiglu => "swiglu",
        }
    }

    /// Columns of W_up per MLP column: 2 for the gated MLP (gate and up).
    pub fn up_factor(self) -> usize {
        match self {
            MlpAct::Gelu => 1,
            MlpAct::Swiglu => 2,
        }
    }
}

/// The transformer's shape and the work of one iteration (batch sequences of seq_len tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    /// K/V heads (GQA; 1 is MQA; = heads for multi-head attention). 0 only in results written
    /// before the option existed, read as = heads (`normalized`).
    #[serde(default)]
    pub kv_heads: usize,
    pub mlp: usize,
    #[serde(default)]
    pub mlp_act: MlpAct,
    pub seq_len: usize,
    pub batch: usize,
}

impl ModelConfig {
    /// Multi-head attention and a GELU MLP: the seed's model.
    pub fn dense(layers: usize, d_model: usize, heads: usize, mlp: usize, seq_len: usize, batch: usize) -> Self {
        ModelConfig { layers, d_model, heads, kv_heads: heads, mlp, mlp_act: MlpAct::Gelu, seq_len, batch }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Width of K (and of V): kv_heads x head_dim.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Query heads per K/V head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The config as written before kv_heads existed reads as multi-head attention.
    pub fn normalized(mut self) -> Self {
        if self.kv_heads == 0 {
            self.kv_heads = self.heads;
        }
        self
    }
}

/// Everything a rank needs to know to run; identical on every rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "RunConfigRecord", into = "RunConfigRecord")]
pub struct RunConfig {
    pub preset: Preset,
    pub model: ModelConfig,
    pub strategy: StrategyKind,
    /// How the strategy splits its ranks: the sizes its shape has, each named for what it is.
    pub split: Split,
    pub layout: Layout,
    pub micro_batch: usize,
    pub seed: u64,
    pub causal: bool,
    pub backend: BackendKind,
    /// The transport between ranks (older results without it used MPI).
    #[serde(default)]
    pub comm: CommKind,
    pub warmup: usize,
    pub iters: usize,
    /// Set when one process runs the compute of one rank of a larger job (`--emulate-world`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulate: Option<Emulation>,
    /// Decode steps after the prefill (`--decode-tokens`): one new token per sequence each; 0 for
    /// a prefill-only run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub decode_tokens: usize,
    /// A training step (`--train`): the forward, then the backward from a fixed upstream
    /// gradient, then the gradient reduction; false for inference.
    #[serde(default, skip_serializing_if = "is_false")]
    pub train: bool,
    /// With `train`: keep only each layer's input and recompute its forward in the backward
    /// (`--recompute`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recompute: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// A strategy's split of its ranks: one variant per shape, each size named for what it is, so
/// no number means one thing to one strategy and another to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// One rank, the whole model (reference).
    One,
    /// `tp` tensor-parallel ranks x `pp` pipeline stages (tp-pp).
    TpPp { tp: usize, pp: usize },
    /// The sequence over `p` ranks (ring, allgather, ulysses).
    Sp { p: usize },
    /// Ulysses groups of `u` consecutive ranks x a ring of `r` over the groups (usp).
    Usp { u: usize, r: usize },
    /// Tensor-parallel groups of `t` consecutive ranks x a context ring of `c` (tp-cp).
    TpCp { t: usize, c: usize },
    /// The sequence over `p` ranks: inner rings of `w` consecutive ranks (a window), an outer
    /// ring over the p / w windows (double-ring).
    DoubleRing { p: usize, w: usize },
}

impl Split {
    /// The tensor-parallel group's size (tp-pp, tp-cp); 1 without one.
    pub fn tp(self) -> usize {
        match self {
            Split::TpPp { tp, .. } => tp,
            Split::TpCp { t, .. } => t,
            _ => 1,
        }
    }

    /// Pipeline stages (tp-pp); 1 without a pipeline.
    pub fn pp(self) -> usize {
        match self {
            Split::TpPp { pp, .. } => pp,
            _ => 1,
        }
    }

    /// The ranks the sequence is split over by ring, allgather, ulysses and double-ring; 1 elsewhere.
    pub fn sp(self) -> usize {
        match self {
            Split::Sp { p } => p,
            Split::DoubleRing { p, .. } => p,
            _ => 1,
        }
    }

    /// double-ring's window (its inner ring); 1 elsewhere.
    pub fn window(self) -> usize {
        match self {
            Split::DoubleRing { w, .. } => w,
            _ => 1,
        }
    }

    /// usp's Ulysses group size; 1 elsewhere.
    pub fn ulysses(self) -> usize {
        match self {
            Split::Usp { u, .. } => u,
            _ => 1,
        }
    }

    /// usp's ring over its Ulysses groups; 1 elsewhere.
    pub fn ring(self) -> usize {
        match self {
            Split::Usp { r, .. } => r,
            _ => 1,
        }
    }

    /// tp-cp's context ring; 1 elsewhere.
    pub fn cp(self) -> usize {
        match self {
            Split::TpCp { c, .. } => c,
            _ => 1,
        }
    }

    /// The split `kind` takes with the flat sizes of the command line and of the rank files:
    /// tp and pp for tp-pp, ring (P) for ring, allgather and ulysses, ulysses and ring for usp,
    /// tp and cp for tp-cp, ring (P) and window for double-ring.
    pub fn of_sizes(kind: StrategyKind, tp: usize, pp: usize, ring: usize, ulysses: usize, cp: usize, window: usize) -> Split {
        match kind {
            StrategyKind::Reference => Split::One,
            StrategyKind::TpPp => Split::TpPp { tp, pp },
            StrategyKind::Ring | StrategyKind::Allgather | StrategyKind::Ulysses => Split::Sp { p: ring },
            StrategyKind::Usp => Split::Usp { u: ulysses, r: ring },
            StrategyKind::TpCp => Split::TpCp { t: tp, c: cp },
            StrategyKind::DoubleRing => Split::DoubleRing { p: ring, w: window },
        }
    }

    /// The flat sizes (tp, pp, ring, ulysses, cp, window) the rank files store, 1 where the split
    /// has none.
    fn flat(self) -> (usize, usize, usize, usize, usize, usize) {
        let ring = match self {
            Split::Sp { p } => p,
            Split::Usp { r, .. } => r,
            Split::DoubleRing { p, .. } => p,
            _ => 1,
        };
        (self.tp(), self.pp(), ring, self.ulysses(), self.cp(), self.window())
    }
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// The rank files' form of a `RunConfig` (results written by every earlier version read back):
/// the split as flat sizes beside the strategy.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunConfigRecord {
    preset: Preset,
    model: ModelConfig,
    strategy: StrategyKind,
    tp: usize,
    pp: usize,
    ring: usize,
    #[serde(default = "one")]
    ulysses: usize,
    #[serde(default = "one")]
    cp: usize,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    window: usize,
    layout: Layout,
    micro_batch: usize,
    seed: u64,
    causal: bool,
    backend: BackendKind,
    #[serde(default)]
    comm: CommKind,
    warmup: usize,
    iters: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emulate: Option<Emulation>,
    #[serde(default, skip_serializing_if = "is_zero")]
    decode_tokens: usize,
    #[serde(default, skip_serializing_if = "is_false")]
    train: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    recompute: bool,
}

impl From<RunConfigRecord> for RunConfig {
    fn from(r: RunConfigRecord) -> Self {
        RunConfig {
            preset: r.preset,
            model: r.model,
            strategy: r.strategy,
            split: Split::of_sizes(r.strategy, r.tp, r.pp, r.ring, r.ulysses, r.cp, r.window),
            layout: r.layout,
            micro_batch: r.micro_batch,
            seed: r.seed,
            causal: r.causal,
            backend: r.backend,
            comm: r.comm,
            warmup: r.warmup,
            iters: r.iters,
            emulate: r.emulate,
            decode_tokens: r.decode_tokens,
            train: r.train,
            recompute: r.recompute,
        }
    }
}

impl From<RunConfig> for RunConfigRecord {
    fn from(c: RunConfig) -> Self {
        let (tp, pp, ring, ulysses, cp, window) = c.split.flat();
        RunConfigRecord {
            preset: c.preset,
            model: c.model,
            strategy: c.strategy,
            tp,
            pp,
            ring,
            ulysses,
            cp,
            window,
            layout: c.layout,
            micro_batch: c.micro_batch,
            seed: c.seed,
            causal: c.causal,
            backend: c.backend,
            comm: c.comm,
            warmup: c.warmup,
            iters: c.iters,
            emulate: c.emulate,
            decode_tokens: c.decode_tokens,
            train: c.train,
            recompute: c.recompute,
        }
    }
}

/// One process standing in for rank `as_rank` of a `world`-rank job: it runs exactly that rank's
/// compute, and every communication call becomes a device copy of the same size. It measures the
/// per-rank time of a job larger than the machine; it cannot see waits on other ranks (pipeline
/// bubbles, stragglers) nor link speed, so its results are labelled emulated wherever they appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulation {
    pub world: usize,
    pub as_rank: usize,
}

impl Emulation {
    pub fn label(&self) -> String {
        format!("emulated rank {} of {}", self.as_rank, self.world)
    }
}

impl RunConfig {
    /// A preset's config for `strategy` with the given parallel sizes, seed 0, causal, CPU backend
    /// (not validated: callers that take user input go through `RunRequest::resolve`).
    pub fn of_preset(preset: Preset, strategy: StrategyKind, tp: usize, pp: usize, ring: usize) -> RunConfig {
        let p = preset.values();
        RunConfig {
            preset,
            model: p.model,
            strategy,
            split: Split::of_sizes(strategy, tp, pp, ring, 1, 1, 1),
            layout: Layout::Zigzag,
            micro_batch: p.micro_batch,
            seed: 0,
            causal: true,
            backend: BackendKind::Cpu,
            comm: CommKind::Mpi,
            warmup: p.warmup,
            iters: p.iters,
            emulate: None,
            decode_tokens: 0,
            train: false,
            recompute: false,
        }
    }

    pub fn transport(&self) -> Transport {
        match (self.emulate, self.backend, self.comm) {
            (Some(_), BackendKind::Cpu, _) => Transport::EmulatedInOrder,
            (Some(_), BackendKind::Cuda, _) => Transport::EmulatedOnStream,
            (None, _, CommKind::Mpi) => Transport::Mpi,
            (None, _, CommKind::Nccl) => Transport::Nccl,
        }
    }

    /// The rank of the strategy this process runs: its own, or the emulated one.
    pub fn strategy_rank(&self, process_rank: usize) -> usize {
        self.emulate.map_or(process_rank, |e| e.as_rank)
    }

    pub fn micro_batches(&self) -> usize {
        self.model.batch / self.micro_batch
    }

    pub fn tokens_per_iteration(&self) -> usize {
        self.model.batch * self.model.seq_len
    }
}

/// What the flags of `run`, `verify`, `plan` and `sweep` ask for, before any resolution: the
/// preset, the strategies, and every size and measurement flag as given (None where absent:
/// the preset's value, or the strategy's default split). `strategy::resolve` makes configs of it.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// Parallel strategy; `all` runs every one that fits, in the same launch.
    pub strategy: StrategySelection,
    /// Starting values for every model and measurement flag.
    pub preset: Preset,
    /// Tensor-parallel size (tp-pp). Default: world size / --pp.
    pub tp: Option<usize>,
    /// Pipeline stages (tp-pp). Default: 1.
    pub pp: Option<usize>,
    /// Sequence-parallel size: the ranks the sequence is split over (ring, allgather, ulysses);
    /// usp's ring over its Ulysses groups. Default: the world size (usp: world / --ulysses).
    pub ring: Option<usize>,
    /// usp's Ulysses group size (consecutive ranks, inside a node). Default: world / --ring, else
    /// the largest divisor of the world up to 8 that leaves at least two groups and that the
    /// heads allow.
    pub ulysses: Option<usize>,
    /// tp-cp's context-parallel size (a ring of the ranks with the same TP rank). Default: world /
    /// --tp, else world / the largest divisor up to 8 that leaves at least two groups and that the
    /// heads allow.
    pub cp: Option<usize>,
    /// double-ring's window (inner ring, inside a node). Default: the largest divisor of --ring up
    /// to 8 that leaves at least two windows.
    pub window: Option<usize>,
    /// How ring, allgather, usp and tp-cp split each sequence (ulysses always takes contiguous chunks).
    pub layout: Layout,
    pub layers: Option<usize>,
    pub d_model: Option<usize>,
    pub heads: Option<usize>,
    /// K/V heads (grouped-query attention; 1 is multi-query): must divide --heads. Default: the
    /// preset's (= --heads for paper, small and tiny).
    pub kv_heads: Option<usize>,
    /// The MLP's activation. Default: the preset's (gelu; swiglu for the llama3 presets).
    pub mlp_act: Option<MlpAct>,
    /// MLP hidden size.
    pub mlp: Option<usize>,
    /// Tokens per sequence.
    pub seq_len: Option<usize>,
    /// Sequences per iteration.
    pub batch: Option<usize>,
    /// Sequences per micro-batch (pipeline unit; also the unit the ring processes at once).
    pub micro_batch: Option<usize>,
    /// Seed of the weight and input generator.
    pub seed: u64,
    /// Full (bidirectional) attention instead of causal.
    pub no_causal: bool,
    /// Decode steps after the prefill (`--decode-tokens`), as given.
    pub decode_tokens: Option<usize>,
    /// A training step instead of a forward pass (`--train`).
    pub train: bool,
    /// Recompute each layer's forward in the backward (`--recompute`, with --train).
    pub recompute: bool,
    pub backend: BackendKind,
    /// Transport between ranks. Default: nccl with --backend cuda, mpi with --backend cpu.
    pub comm: Option<CommKind>,
    /// Warm-up iterations (not measured).
    pub warmup: Option<usize>,
    /// Measured iterations.
    pub iters: Option<usize>,
    /// Seconds one communication call may take before the watchdog reports it and aborts the job.
    /// Generous: it also bounds how long ranks wait for rank 0's reference in `verify`.
    pub comm_timeout: f64,
}

/// One process standing in for rank `as_rank` of a `world`-rank job, as `--emulate-world` and
/// `--as-rank` ask (resolved into an `Emulation` by `strategy::resolve`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmulationRequest {
    pub world: Option<usize>,
    pub as_rank: Option<usize>,
}
