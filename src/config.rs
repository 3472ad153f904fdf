//! What to run: the model, the strategy and its parallel sizes, the measurement; presets; and the
//! validation that turns bad input into one clear line before any work starts.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
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
        }
    }
}

/// What `--strategy` selects: one strategy, or every one whose sizes fit the job, in one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyChoice {
    Reference,
    TpPp,
    Ring,
    Allgather,
    Ulysses,
    Usp,
    TpCp,
    /// Every multi-rank strategy whose sizes fit the world (tp-pp, ring, allgather, ulysses, usp,
    /// tp-cp), on the same model; tp-pp and ring must fit (their sizes are explicit flags), and so
    /// must usp and tp-cp where --ulysses or --cp is given; the others run where the model allows
    /// them (ulysses needs the ranks to divide the heads).
    All,
}

impl StrategyChoice {
    /// The choice of `kind` alone.
    pub fn of(kind: StrategyKind) -> Self {
        match kind {
            StrategyKind::Reference => StrategyChoice::Reference,
            StrategyKind::TpPp => StrategyChoice::TpPp,
            StrategyKind::Ring => StrategyChoice::Ring,
            StrategyKind::Allgather => StrategyChoice::Allgather,
            StrategyKind::Ulysses => StrategyChoice::Ulysses,
            StrategyKind::Usp => StrategyChoice::Usp,
            StrategyKind::TpCp => StrategyChoice::TpCp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StrategyChoice::All => "all",
            one => one.strategies()[0].name(),
        }
    }

    /// The strategy runs, in launch order.
    pub fn strategies(self) -> Vec<StrategyKind> {
        match self {
            StrategyChoice::Reference => vec![StrategyKind::Reference],
            StrategyChoice::TpPp => vec![StrategyKind::TpPp],
            StrategyChoice::Ring => vec![StrategyKind::Ring],
            StrategyChoice::Allgather => vec![StrategyKind::Allgather],
            StrategyChoice::Ulysses => vec![StrategyKind::Ulysses],
            StrategyChoice::Usp => vec![StrategyKind::Usp],
            StrategyChoice::TpCp => vec![StrategyKind::TpCp],
            StrategyChoice::All => crate::strategy::SPECS.iter().map(|s| s.kind).filter(|&k| k != StrategyKind::Reference).collect(),
        }
    }

    /// Whether `all` runs `kind`, resolved as `resolved`. tp-pp and ring always (a config that
    /// does not validate refuses the launch); usp and tp-cp, given their flag, likewise; the
    /// others where they validate, and usp and tp-cp by default only where their split is two
    /// dimensional (with one size 1 they repeat ulysses, ring or tp-pp's work).
    pub fn runs_in_all(kind: StrategyKind, flags: &SizeFlags, resolved: &Result<RunConfig, ConfigError>) -> bool {
        let explicit = match kind {
            StrategyKind::TpPp | StrategyKind::Ring => true,
            StrategyKind::Usp => flags.ulysses.is_some(),
            StrategyKind::TpCp => flags.cp.is_some(),
            _ => false,
        };
        let two_d = |c: &RunConfig| match kind {
            StrategyKind::Usp => c.ulysses > 1 && c.ring > 1,
            StrategyKind::TpCp => c.tp > 1 && c.cp > 1,
            _ => true,
        };
        explicit || resolved.as_ref().is_ok_and(two_d)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The reference workload: 16 layers, d_model 4096, 32 heads, MLP 16384, 100K tokens, batch 128.
    Paper,
    /// Llama 3 8B's blocks: 32 layers, d_model 4096, 32 heads, 8 K/V heads, SwiGLU MLP 14336.
    #[value(name = "llama3-8b")]
    #[serde(rename = "llama3-8b")]
    Llama3_8b,
    /// Llama 3 70B's blocks: 80 layers, d_model 8192, 64 heads, 8 K/V heads, SwiGLU MLP 28672.
    #[value(name = "llama3-70b")]
    #[serde(rename = "llama3-70b")]
    Llama3_70b,
    /// Llama 3 405B's blocks: 126 layers, d_model 16384, 128 heads, 8 K/V heads, SwiGLU MLP 53248.
    #[value(name = "llama3-405b")]
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

    fn values(self) -> PresetValues {
        // The Llama blocks (DESIGN.md, "Model presets") run the seed's measurement: 100K tokens,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
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

struct PresetValues {
    model: ModelConfig,
    micro_batch: usize,
    warmup: usize,
    iters: usize,
}

/// The MLP's activation (DESIGN.md, "Grouped K/V heads and gated MLPs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
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
pub struct RunConfig {
    pub preset: Preset,
    pub model: ModelConfig,
    pub strategy: StrategyKind,
    pub tp: usize,
    pub pp: usize,
    pub ring: usize,
    /// usp's Ulysses group size (its ring over the groups is `ring`); 1 elsewhere.
    #[serde(default = "one")]
    pub ulysses: usize,
    /// tp-cp's context-parallel size (its TP size is `tp`); 1 elsewhere.
    #[serde(default = "one")]
    pub cp: usize,
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
}

fn one() -> usize {
    1
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
    /// (not validated: callers that take user input go through `ConfigArgs::resolve`).
    pub fn of_preset(preset: Preset, strategy: StrategyKind, tp: usize, pp: usize, ring: usize) -> RunConfig {
        let p = preset.values();
        RunConfig {
            preset,
            model: p.model,
            strategy,
            tp,
            pp,
            ring,
            ulysses: 1,
            cp: 1,
            layout: Layout::Zigzag,
            micro_batch: p.micro_batch,
            seed: 0,
            causal: true,
            backend: BackendKind::Cpu,
            comm: CommKind::Mpi,
            warmup: p.warmup,
            iters: p.iters,
            emulate: None,
        }
    }

    /// Ranks the strategy occupies.
    pub fn world(&self) -> usize {
        (crate::strategy::spec(self.strategy).world)(self)
    }

    pub fn transport(&self) -> Transport {
        match (self.emulate, self.backend, self.comm) {
            (Some(_), BackendKind::Cpu, _) => Transport::EmulatedInOrder,
            (Some(_), BackendKind::Cuda, _) => Transport::EmulatedOnStream,
            (None, _, CommKind::Mpi) => Transport::Mpi,
            (None, _, CommKind::Nccl) => Transport::Nccl,
        }
    }

    /// The ranks whose files make a run of this config whole: every rank of the world, or the
    /// emulated rank alone (one process's file, named after the rank it stood in for).
    pub fn rank_files(&self) -> Vec<usize> {
        match self.emulate {
            Some(e) => vec![e.as_rank],
            None => (0..self.world()).collect(),
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

    /// One line naming the strategy, its parallel layout and the work, for the console.
    pub fn describe(&self) -> String {
        let emulated = self.emulate.map(|e| format!(", {} (communication replaced by device copies)", e.label())).unwrap_or_default();
        format!("{}, seed {}, {} backend, {}{emulated}", self.describe_work(), self.seed, self.backend.name(), self.comm.name())
    }

    /// The strategy's parallel sizes and layout, as its spec states them: "tp 2 x pp 2",
    /// "sp 4, zigzag", "1 rank".
    pub fn describe_split(&self) -> String {
        let spec = crate::strategy::spec(self.strategy);
        let sizes: Vec<String> = spec.size_names.iter().zip((spec.sizes)(self)).map(|(n, v)| format!("{n} {v}")).collect();
        let mut s = if sizes.is_empty() { "1 rank".to_string() } else { sizes.join(" x ") };
        if spec.uses_layout {
            s.push_str(&format!(", {}", self.layout.name()));
        }
        s
    }

    /// The strategy, its parallel layout and the model's work, without where it runs.
    pub fn describe_work(&self) -> String {
        let m = &self.model;
        let par = self.describe_split();
        // The seed's model reads as before; GQA and the gated MLP say so.
        let kv = if m.kv_heads == m.heads { String::new() } else { format!(" ({} K/V)", m.kv_heads) };
        let act = if m.mlp_act == MlpAct::Gelu { String::new() } else { format!(" {}", m.mlp_act.name()) };
        format!(
            "{} ({par}), {} preset: {} layers, d_model {}, {} heads{kv}, mlp {}{act}, {} x {} tokens, micro-batch {}, {}",
            self.strategy.name(),
            self.preset.name(),
            m.layers,
            m.d_model,
            m.heads,
            m.mlp,
            m.batch,
            m.seq_len,
            self.micro_batch,
            if self.causal { "causal" } else { "non-causal" },
        )
    }
}

/// Bad input: one line naming the flag, what was given and what is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

macro_rules! bad {
    ($($arg:tt)*) => { return Err(ConfigError(format!($($arg)*))) };
}

/// The flags shared by `run` and `verify`. Model and measurement flags default to the preset's
/// values; an explicit flag overrides the preset.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Parallel strategy; `all` runs every one that fits, in the same launch.
    #[arg(long, value_enum)]
    pub strategy: StrategyChoice,
    /// Starting values for every model and measurement flag.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Tensor-parallel size (tp-pp). Default: world size / --pp.
    #[arg(long, value_name = "N")]
    pub tp: Option<usize>,
    /// Pipeline stages (tp-pp). Default: 1.
    #[arg(long, value_name = "N")]
    pub pp: Option<usize>,
    /// Sequence-parallel size: the ranks the sequence is split over (ring, allgather, ulysses);
    /// usp's ring over its Ulysses groups. Default: the world size (usp: world / --ulysses).
    #[arg(long, value_name = "N")]
    pub ring: Option<usize>,
    /// usp's Ulysses group size (consecutive ranks, inside a node). Default: world / --ring, else
    /// the largest divisor of the world up to 8 that leaves at least two groups and that the
    /// heads allow.
    #[arg(long, value_name = "N")]
    pub ulysses: Option<usize>,
    /// tp-cp's context-parallel size (a ring of the ranks with the same TP rank). Default: world /
    /// --tp, else world / the largest divisor up to 8 that leaves at least two groups and that the
    /// heads allow.
    #[arg(long, value_name = "N")]
    pub cp: Option<usize>,
    /// How ring, allgather, usp and tp-cp split each sequence (ulysses always takes contiguous chunks).
    #[arg(long, value_enum, default_value = "zigzag")]
    pub layout: Layout,
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    #[arg(long, value_name = "N")]
    pub d_model: Option<usize>,
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// K/V heads (grouped-query attention; 1 is multi-query): must divide --heads. Default: the
    /// preset's (= --heads for paper, small and tiny).
    #[arg(long, value_name = "N")]
    pub kv_heads: Option<usize>,
    /// The MLP's activation. Default: the preset's (gelu; swiglu for the llama3 presets).
    #[arg(long, value_enum)]
    pub mlp_act: Option<MlpAct>,
    /// MLP hidden size.
    #[arg(long, value_name = "N")]
    pub mlp: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, value_name = "N")]
    pub seq_len: Option<usize>,
    /// Sequences per iteration.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Sequences per micro-batch (pipeline unit; also the unit the ring processes at once).
    #[arg(long, value_name = "N")]
    pub micro_batch: Option<usize>,
    /// Seed of the weight and input generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Full (bidirectional) attention instead of causal.
    #[arg(long)]
    pub no_causal: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Transport between ranks. Default: nccl with --backend cuda, mpi with --backend cpu.
    #[arg(long, value_enum)]
    pub comm: Option<CommKind>,
    /// Warm-up iterations (not measured).
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// Measured iterations.
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,
    /// Seconds one communication call may take before the watchdog reports it and aborts the job.
    /// Generous: it also bounds how long ranks wait for rank 0's reference in `verify`.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800.0)]
    pub comm_timeout: f64,
}

impl ConfigArgs {
    /// The world size the parallel flags describe, for commands that run without MPI (`plan`):
    /// the ring's size, tp x pp, ulysses x ring, tp x cp.
    pub fn implied_world(&self) -> usize {
        let or1 = |v: Option<usize>| v.unwrap_or(1);
        match self.strategy {
            StrategyChoice::Reference => 1,
            StrategyChoice::Ring | StrategyChoice::Allgather | StrategyChoice::Ulysses => or1(self.ring),
            StrategyChoice::Usp => or1(self.ulysses) * or1(self.ring),
            StrategyChoice::TpCp => or1(self.tp) * or1(self.cp),
            StrategyChoice::TpPp | StrategyChoice::All => match (self.tp, self.pp, self.ring) {
                (None, None, Some(r)) => r,
                (tp, pp, _) => tp.unwrap_or(1) * pp.unwrap_or(1),
            },
        }
    }

    /// The parallel-size flags as given.
    pub fn size_flags(&self) -> SizeFlags {
        SizeFlags {
            tp: self.tp,
            pp: self.pp,
            ring: self.ring,
            ulysses: self.ulysses,
            cp: self.cp,
            all: self.strategy == StrategyChoice::All,
        }
    }

    /// Resolve the preset and the flags into validated configs, one per strategy run, for a job
    /// of `world` ranks.
    pub fn resolve(&self, world: usize) -> Result<Vec<RunConfig>, ConfigError> {
        let flags = self.size_flags();
        self.resolve_each(world)?
            .into_iter()
            .filter(|(kind, r)| !flags.all || StrategyChoice::runs_in_all(*kind, &flags, r))
            .map(|(_, r)| r)
            .collect()
    }

    /// Every strategy `--strategy` names, resolved for a job of `world` ranks, with its verdict
    /// (`plan --strategy all` shows those that do not validate beside those that do). The error
    /// is the flags' own, common to every strategy.
    #[allow(clippy::type_complexity)]
    pub fn resolve_each(&self, world: usize) -> Result<Vec<(StrategyKind, Result<RunConfig, ConfigError>)>, ConfigError> {
        let p = self.preset.values();
        let heads = self.heads.unwrap_or(p.model.heads);
        let model = ModelConfig {
            layers: self.layers.unwrap_or(p.model.layers),
            d_model: self.d_model.unwrap_or(p.model.d_model),
            heads,
            // A preset's multi-head attention follows --heads; its GQA keeps its K/V heads.
            kv_heads: self.kv_heads.unwrap_or(if p.model.kv_heads == p.model.heads { heads } else { p.model.kv_heads }),
            mlp: self.mlp.unwrap_or(p.model.mlp),
            mlp_act: self.mlp_act.unwrap_or(p.model.mlp_act),
            seq_len: self.seq_len.unwrap_or(p.model.seq_len),
            batch: self.batch.unwrap_or(p.model.batch),
        };
        if !(self.comm_timeout.is_finite() && self.comm_timeout > 0.0) {
            return Err(ConfigError(format!("--comm-timeout {}: must be a positive number of seconds", self.comm_timeout)));
        }
        if self.comm_timeout > MAX_COMM_TIMEOUT_S {
            return Err(ConfigError(format!(
                "--comm-timeout {}: at most {MAX_COMM_TIMEOUT_S} seconds (about 11 days) is accepted",
                self.comm_timeout
            )));
        }
        let comm = match (self.backend, self.comm) {
            (BackendKind::Cpu, Some(CommKind::Nccl)) => {
                return Err(ConfigError("--comm nccl: NCCL moves GPU buffers; it needs --backend cuda".into()))
            }
            (BackendKind::Cpu, _) => CommKind::Mpi,
            (BackendKind::Cuda, chosen) => chosen.unwrap_or(CommKind::Nccl),
        };
        let flags = self.size_flags();
        let resolved: Vec<(StrategyKind, Result<RunConfig, ConfigError>)> = self
            .strategy
            .strategies()
            .into_iter()
            .map(|strategy| {
                let mut cfg = RunConfig {
                    preset: self.preset,
                    model,
                    strategy,
                    tp: 1,
                    pp: 1,
                    ring: 1,
                    ulysses: 1,
                    cp: 1,
                    layout: self.layout,
                    micro_batch: self.micro_batch.unwrap_or(p.micro_batch),
                    seed: self.seed,
                    causal: !self.no_causal,
                    backend: self.backend,
                    comm,
                    warmup: self.warmup.unwrap_or(p.warmup),
                    iters: self.iters.unwrap_or(p.iters),
                    emulate: None,
                };
                (crate::strategy::spec(strategy).resolve_sizes)(&mut cfg, &flags, world);
                (strategy, validate(&cfg, world).map(|()| cfg))
            })
            .collect();
        Ok(resolved)
    }
}

/// The parallel-size flags as given (None where absent), for each strategy's spec to take its
/// sizes from (`strategy::Spec::resolve_sizes`), with its own defaults for the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeFlags {
    pub tp: Option<usize>,
    pub pp: Option<usize>,
    pub ring: Option<usize>,
    pub ulysses: Option<usize>,
    pub cp: Option<usize>,
    /// Under `--strategy all`, where --tp and --ring are tp-pp's and ring's, not the 2-D ones'.
    pub all: bool,
}

impl SizeFlags {
    /// The split of a `world`-rank job with inner size `inner`, as each strategy names it (tp x
    /// pp, ulysses x ring, tp x cp); the outer size follows, and a strategy without an inner
    /// size (ring, allgather, ulysses) takes the world.
    pub fn split(inner: usize, world: usize) -> Self {
        SizeFlags { tp: Some(inner), pp: Some(world / inner), ulysses: Some(inner), ..Default::default() }
    }
}

/// `run`'s flags for emulating one rank of a larger job on this one process.
#[derive(Args, Clone, Debug, Default)]
pub struct EmulateArgs {
    /// Emulate a job of P ranks: this single process runs the compute of --as-rank K only, with
    /// communication replaced by device copies of the same sizes (results labelled emulated).
    #[arg(long, value_name = "P", requires = "as_rank")]
    pub emulate_world: Option<usize>,
    /// The rank of the emulated job whose work this process runs (0 .. P-1).
    #[arg(long, value_name = "K", requires = "emulate_world")]
    pub as_rank: Option<usize>,
}

impl EmulateArgs {
    /// The configs to run for a launch of `processes` processes: as `args` resolves them on the
    /// emulated world, each marked emulated; or, without emulation, as on the real world.
    pub fn resolve(&self, args: &ConfigArgs, processes: usize) -> Result<Vec<RunConfig>, ConfigError> {
        let (Some(world), Some(as_rank)) = (self.emulate_world, self.as_rank) else {
            return args.resolve(processes);
        };
        if world == 0 {
            bad!("--emulate-world 0: must be at least 1");
        }
        if as_rank >= world {
            bad!("--as-rank {as_rank}: must be below --emulate-world {world} (ranks 0 .. {})", world - 1);
        }
        if processes != 1 {
            bad!("--emulate-world runs one rank's work in one process, but the job has {processes} processes (launch it with -np 1)");
        }
        let mut cfgs = args.resolve(world)?;
        for cfg in &mut cfgs {
            cfg.emulate = Some(Emulation { world, as_rank });
        }
        Ok(cfgs)
    }
}

/// The first of `flags` (name, value) that is 0, as the error that names it.
pub fn require_positive(flags: &[(&str, usize)]) -> Result<(), ConfigError> {
    match flags.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => Err(ConfigError(format!("{flag} 0: must be at least 1"))),
        None => Ok(()),
    }
}

/// A flag above the most ringbench accepts, refused before any allocation or directory exists,
/// with the limit named (a value that large is a typo, or would only fail later, mid-run).
pub fn require_at_most(flag: &str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError(format!("{flag} {value}: at most {max} is accepted")));
    }
    Ok(())
}

/// The longest --comm-timeout accepted (a larger one would not fit a timer, and means "never").
pub const MAX_COMM_TIMEOUT_S: f64 = 1e6;

/// The most iterations of either kind: each measured one is kept in memory and in the rank file,
/// and a million even of 1 ms iterations is a quarter of an hour.
pub const MAX_ITERATIONS: usize = 1_000_000;

/// Sizes beyond which products of them (tokens x width, pairs of tokens) leave 64-bit range; no
/// machine holds such a model, and `plan` keeps exact arithmetic below them.
const MAX_SIZES: [(&str, usize); 6] =
    [("--seq-len", 1 << 40), ("--batch", 1 << 24), ("--layers", 1 << 16), ("--d-model", 1 << 20), ("--mlp", 1 << 22), ("--heads", 1 << 16)];

/// Every check a config must pass before any work starts. Pure, so every rank reaches the same verdict.
pub fn validate(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let m = &cfg.model;
    require_positive(&[
        ("--layers", m.layers),
        ("--d-model", m.d_model),
        ("--heads", m.heads),
        ("--mlp", m.mlp),
        ("--seq-len", m.seq_len),
        ("--batch", m.batch),
        ("--micro-batch", cfg.micro_batch),
        ("--iters", cfg.iters),
        ("--kv-heads", m.kv_heads),
    ])?;
    require_at_most("--iters", cfg.iters, MAX_ITERATIONS)?;
    require_at_most("--warmup", cfg.warmup, MAX_ITERATIONS)?;
    let values = [m.seq_len, m.batch, m.layers, m.d_model, m.mlp, m.heads];
    for ((flag, max), value) in MAX_SIZES.iter().zip(values) {
        require_at_most(flag, value, *max)?;
    }
    let width = m.d_model.max(m.mlp) as u128;
    if (m.batch as u128) * (m.seq_len as u128) * width > 1u128 << 62 {
        bad!(
            "--batch {} x --seq-len {} x width {width}: {:.2e} activation elements per iteration; at most 2^62 are accepted",
            m.batch,
            m.seq_len,
            (m.batch as f64) * (m.seq_len as f64) * width as f64
        );
    }
    if m.d_model % m.heads != 0 {
        bad!("--d-model {}: must be divisible by --heads {} (each head takes d_model / heads columns)", m.d_model, m.heads);
    }
    if m.heads % m.kv_heads != 0 {
        bad!("--kv-heads {}: --heads {} must be a multiple of it (each K/V head serves heads / kv_heads query heads)", m.kv_heads, m.heads);
    }
    if m.head_dim() % 2 != 0 {
        bad!("--d-model {} with --heads {}: head dim {} is odd, RoPE needs an even head dim", m.d_model, m.heads, m.head_dim());
    }
    if m.batch % cfg.micro_batch != 0 {
        bad!("--micro-batch {}: must divide --batch {}", cfg.micro_batch, m.batch);
    }
    (crate::strategy::spec(cfg.strategy).check)(cfg, world)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn resolve(flags: &str, world: usize) -> Result<RunConfig, ConfigError> {
        let argv = std::iter::once("ringbench").chain(flags.split_whitespace());
        Cli::try_parse_from(argv).expect("flags parse").args.resolve(world).map(|mut v| v.remove(0))
    }

    fn error(flags: &str, world: usize) -> String {
        resolve(flags, world).expect_err("must be rejected").0
    }

    #[test]
    fn explicit_flags_override_the_preset() {
        let cfg = resolve("--strategy ring --preset paper --seq-len 1000 --iters 2", 16).unwrap();
        assert_eq!(cfg.model, ModelConfig::dense(16, 4096, 32, 16384, 1000, 128));
        assert_eq!((cfg.ring, cfg.warmup, cfg.iters, cfg.micro_batch), (16, 10, 2, 1));
        assert!(cfg.causal);
    }

    #[test]
    fn parallel_sizes_default_from_the_world() {
        let cfg = resolve("--strategy tp-pp --pp 2", 8).unwrap();
        assert_eq!((cfg.tp, cfg.pp, cfg.world()), (4, 2, 8));
        assert_eq!(resolve("--strategy ring", 3).unwrap().ring, 3);
    }

    #[test]
    fn each_bad_input_names_its_flag() {
        let cases = [
            ("--strategy tp-pp --tp 2 --pp 2", 3, "--tp 2 x --pp 2 = 4 ranks, but the job has 3"),
            ("--strategy ring --ring 4", 2, "--ring 4: the job has 2 ranks"),
            ("--strategy tp-pp --tp 3", 3, "--tp 3: --heads 4 must be divisible"),
            ("--strategy tp-pp --tp 1 --pp 3", 3, "--pp 3: --layers 2 must be divisible"),
            ("--strategy ring --d-model 60 --heads 8", 1, "--d-model 60: must be divisible by --heads 8"),
            ("--strategy ring --d-model 60 --heads 4", 1, "head dim 15 is odd"),
            ("--strategy ring --ring 4 --seq-len 7", 4, "--seq-len 7: a zigzag ring of 4 needs at least 8 tokens"),
            ("--strategy ring --ring 4 --seq-len 3 --layout contiguous", 4, "needs at least 4 tokens"),
            ("--strategy ring --batch 3 --micro-batch 2", 1, "--micro-batch 2: must divide --batch 3"),
            ("--strategy ring --layers 0", 1, "--layers 0: must be at least 1"),
            ("--strategy ring --seq-len 0", 1, "--seq-len 0: must be at least 1"),
            ("--strategy reference", 2, "--strategy reference runs on 1 rank"),
            ("--strategy tp-pp --pp 0", 2, "--pp 0: must be at least 1"),
            ("--strategy tp-pp --tp 2 --mlp 255", 2, "--mlp 255 must be divisible"),
            ("--strategy ring --comm nccl", 2, "--comm nccl: NCCL moves GPU buffers; it needs --backend cuda"),
            ("--strategy ulysses", 3, "--ring 3: a Ulysses group of 3 ranks needs --heads 4 divisible by it"),
            (
                "--strategy ulysses --heads 6 --kv-heads 3 --d-model 60",
                2,
                "--ring 2 with --kv-heads 3: a Ulysses group of 2 ranks needs the K/V heads divisible",
            ),
            ("--strategy usp --ulysses 3", 4, "--ulysses 3 x --ring 1 = 3 ranks, but the job has 4 ranks"),
            ("--strategy usp --ulysses 2 --ring 3", 4, "--ulysses 2 x --ring 3 = 6 ranks, but the job has 4 ranks"),
            ("--strategy usp --ulysses 3 --ring 1", 3, "--ulysses 3: a Ulysses group of 3 ranks needs --heads 4 divisible"),
            ("--strategy usp --ulysses 0", 2, "--ulysses 0: must be at least 1"),
            (
                "--strategy usp --ulysses 2 --ring 2 --seq-len 3 --layout contiguous",
                4,
                "--seq-len 3: usp ring position 1 holds 1 token, fewer than the 2 members",
            ),
            ("--strategy tp-cp --tp 3", 3, "--tp 3: --heads 4 must be divisible"),
            ("--strategy tp-cp --cp 0", 2, "--cp 0: must be at least 1"),
            ("--strategy tp-cp --tp 2 --cp 2 --seq-len 3", 4, "--seq-len 3: a zigzag tp-cp context ring of 2 needs at least 4 tokens"),
            ("--strategy tp-cp --tp 2 --cp 3", 4, "--tp 2 x --cp 3 = 6 ranks, but the job has 4 ranks"),
            ("--strategy allgather --ring 2", 4, "--ring 2: the job has 4 ranks"),
            ("--strategy allgather --seq-len 3 --layout striped", 4, "--seq-len 3: a striped allgather of 4 needs at least 4 tokens"),
        ];
        for (flags, world, want) in cases {
            let got = error(flags, world);
            assert!(got.contains(want), "{flags} on {world} ranks: got {got:?}, want {want:?}");
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }

    #[test]
    fn all_runs_tp_pp_then_ring_on_the_same_world() {
        let argv = "ringbench --strategy all --tp 2 --pp 2 --ring 4".split_whitespace();
        let runs = Cli::try_parse_from(argv).unwrap().args.resolve(4).unwrap();
        let kinds = vec![
            StrategyKind::TpPp,
            StrategyKind::Ring,
            StrategyKind::Allgather,
            StrategyKind::Ulysses,
            StrategyKind::Usp,
            StrategyKind::TpCp,
        ];
        assert_eq!(runs.iter().map(|c| c.strategy).collect::<Vec<_>>(), kinds);
        // The 2-D ones take the node-sized split by default, not --tp and --ring (tp-pp's, ring's).
        assert_eq!((runs[4].ulysses, runs[4].ring, runs[5].tp, runs[5].cp), (2, 2, 2, 2));
        let argv = "ringbench --strategy all --tp 4 --ring 4 --cp 4".split_whitespace();
        let runs = Cli::try_parse_from(argv).unwrap().args.resolve(4).unwrap();
        let tp_cp = runs.iter().find(|c| c.strategy == StrategyKind::TpCp).unwrap();
        assert_eq!((tp_cp.tp, tp_cp.cp), (1, 4), "--cp asks for it, degenerate or not");
        let usp = runs.iter().find(|c| c.strategy == StrategyKind::Usp).unwrap();
        assert_eq!((usp.ulysses, usp.ring), (2, 2), "--ring is the ring's under all");
        // Ulysses needs the ranks to divide the heads: on 3 ranks of 4 heads, `all` leaves it out,
        // and the 2-D strategies, whose only split of 3 ranks is one-dimensional.
        let argv = "ringbench --strategy all --tp 1 --pp 1 --ring 1".split_whitespace();
        let three = Cli::try_parse_from(argv.chain(["--heads", "4"])).unwrap().args.resolve(1).unwrap();
        assert_eq!(three.len(), 4);
        let argv = "ringbench --strategy all --tp 1 --pp 3 --layers 3 --d-model 64 --heads 4".split_whitespace();
        let three = Cli::try_parse_from(argv).unwrap().args.resolve(3).unwrap();
        assert_eq!(three.iter().map(|c| c.strategy).collect::<Vec<_>>(), kinds[..3].to_vec());
        assert!(runs.iter().all(|c| c.world() == 4));
        let argv = "ringbench --strategy all --tp 2 --pp 2 --ring 2".split_whitespace();
        let err = Cli::try_parse_from(argv).unwrap().args.resolve(4).unwrap_err();
        assert!(err.0.contains("--ring 2: the job has 4 ranks"), "{err}");
    }

    #[test]
    fn the_config_round_trips_through_json() {
        let cfg = resolve("--strategy ring --layout contiguous --no-causal", 2).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"layout\":\"contiguous\""), "{json}");
        assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn the_smallest_valid_ring_has_one_token_per_chunk() {
        assert!(resolve("--strategy ring --seq-len 8", 4).is_ok());
        assert!(resolve("--strategy ring --seq-len 4 --layout contiguous", 4).is_ok());
    }
}
