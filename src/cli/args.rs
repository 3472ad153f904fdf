//! The flags of `run`, `verify`, `plan` and `sweep` that say what to run, in groups each command
//! takes only where it means something (the work, its length, its split, the measurement), and
//! the ones that emulate one rank of a larger job: clap's view of `config::RunRequest` and
//! `config::EmulationRequest`, into which they convert unchanged.

use crate::config::{BackendKind, CommKind, EmulationRequest, Layout, MlpAct, Preset, RunRequest, StrategySelection};
use clap::Args;

/// `run`'s and `verify`'s flags: the strategy, the work, its split and the measurement.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Parallel strategy; `all` runs every one that fits, in the same launch.
    #[arg(long, value_enum)]
    pub strategy: StrategySelection,
    #[command(flatten)]
    pub work: WorkArgs,
    #[command(flatten)]
    pub length: LengthArg,
    #[command(flatten)]
    pub split: SplitArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    #[command(flatten)]
    pub decode: DecodeArg,
    #[command(flatten)]
    pub train: TrainArg,
}

/// Generation after the prompt (`run`, `verify`).
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Model and input")]
pub struct DecodeArg {
    /// After the prefill of the prompt (TTFT), decode N tokens per sequence, one step at a time,
    /// with the K/V cache where the strategy placed it (TPOT, ITL). Causal only.
    #[arg(long, value_name = "N")]
    pub decode_tokens: Option<usize>,
}

/// A training step instead of a forward pass (`run`, `verify`).
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Model and input")]
pub struct TrainArg {
    /// One training step per iteration: the forward over the batch with its activations kept,
    /// the backward from a fixed upstream gradient (the ring's K/V travel again with their FP32
    /// gradients), then the FP32 all-reduce of the weight gradients over the ranks that saw
    /// different tokens. The CPU backend, and reference and ring, for now.
    #[arg(long)]
    pub train: bool,
    /// With --train: keep only each layer's input from the forward and recompute the layer's
    /// forward (its communication included) in the backward: less memory, a forward's more work.
    #[arg(long)]
    pub recompute: bool,
}

/// The model and its input (every command that runs or projects work). Each defaults to the
/// preset's value; an explicit flag overrides the preset.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Model and input")]
pub struct WorkArgs {
    /// Starting values for every model and measurement flag.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Transformer layers. Default: the preset's.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Model width (hidden size). Default: the preset's.
    #[arg(long, value_name = "N")]
    pub d_model: Option<usize>,
    /// Query heads: must divide --d-model, into an even head dim. Default: the preset's.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// K/V heads (grouped-query attention; 1 is multi-query): must divide --heads. Default: the
    /// preset's (= --heads for paper, small and tiny).
    #[arg(long, value_name = "N")]
    pub kv_heads: Option<usize>,
    /// The MLP's activation. Default: the preset's (gelu; swiglu for the llama3 presets).
    #[arg(long, value_enum)]
    pub mlp_act: Option<MlpAct>,
    /// MLP hidden size. Default: the preset's.
    #[arg(long, value_name = "N")]
    pub mlp: Option<usize>,
    /// Sequences per iteration. Default: the preset's (128 for paper and the llama3 presets).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Sequences per micro-batch (pipeline unit; also the unit the ring processes at once).
    #[arg(long, value_name = "N")]
    pub micro_batch: Option<usize>,
    /// Full (bidirectional) attention instead of causal.
    #[arg(long)]
    pub no_causal: bool,
    /// How ring, allgather, usp and tp-cp split each sequence (ulysses always takes contiguous chunks).
    #[arg(long, value_enum, default_value = "zigzag")]
    pub layout: Layout,
}

/// One sequence length (`run`, `verify`, `plan`; a sweep takes a list).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Model and input")]
pub struct LengthArg {
    /// Tokens per sequence: a count, or one with a suffix: k (x1000), M (x10^6), Ki (x1024),
    /// Mi (x2^20), so 128k is 128,000 and 128Ki is 131,072. Default: the preset's.
    #[arg(long, value_name = "N", value_parser = token_count)]
    pub seq_len: Option<usize>,
}

/// The sizes of a strategy's split (`run`, `verify`, `plan`; a sweep tries every split).
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Split over the GPUs")]
pub struct SplitArgs {
    /// Tensor-parallel size (tp-pp, tp-cp). Default: world size / --pp.
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
    /// double-ring's window: the inner ring of consecutive ranks (inside a node); it divides
    /// --ring. Default: the largest divisor of --ring up to 8 that leaves at least two windows.
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
}

/// How a measured run runs (`run`, `verify`, and a measured `sweep`).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Measurement")]
pub struct MeasureArgs {
    /// Where the ops run: the CPU backend, or one GPU per rank.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Transport between ranks. Default: nccl with --backend cuda, mpi with --backend cpu.
    #[arg(long, value_enum)]
    pub comm: Option<CommKind>,
    /// Warm-up iterations (not measured). Default: the preset's.
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// Measured iterations. Default: the preset's.
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,
    /// Seed of the weight and input generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds one communication call may take before the watchdog reports it and aborts the job.
    /// Generous: it also bounds how long ranks wait for rank 0's reference in `verify`.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800.0)]
    pub comm_timeout: f64,
}

impl Default for MeasureArgs {
    /// What a projection assumes of the measurement it stands in for: the flags' defaults.
    fn default() -> Self {
        MeasureArgs { backend: BackendKind::Cpu, comm: None, warmup: None, iters: None, seed: 0, comm_timeout: 1800.0 }
    }
}

/// The plain request of a strategy, the work, a length, a split and a measurement.
pub fn request(
    strategy: StrategySelection,
    work: &WorkArgs,
    seq_len: Option<usize>,
    split: &SplitArgs,
    measure: &MeasureArgs,
    decode: &DecodeArg,
) -> RunRequest {
    RunRequest {
        strategy,
        preset: work.preset,
        tp: split.tp,
        pp: split.pp,
        ring: split.ring,
        ulysses: split.ulysses,
        cp: split.cp,
        window: split.window,
        layout: work.layout,
        layers: work.layers,
        d_model: work.d_model,
        heads: work.heads,
        kv_heads: work.kv_heads,
        mlp_act: work.mlp_act,
        mlp: work.mlp,
        seq_len,
        batch: work.batch,
        micro_batch: work.micro_batch,
        seed: measure.seed,
        no_causal: work.no_causal,
        decode_tokens: decode.decode_tokens,
        train: false,
        recompute: false,
        backend: measure.backend,
        comm: measure.comm,
        warmup: measure.warmup,
        iters: measure.iters,
        comm_timeout: measure.comm_timeout,
    }
}

/// A token count as the command line takes it: digits, with an optional suffix k (x1000),
/// M (x10^6), Ki (x1024) or Mi (x2^20).
pub fn token_count(text: &str) -> Result<usize, String> {
    let (digits, scale): (&str, u64) = [("Ki", 1 << 10), ("Mi", 1 << 20), ("k", 1000), ("K", 1000), ("M", 1_000_000)]
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|d| (d, *f)))
        .unwrap_or((text, 1));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?}: expected a count, e.g. 131072, 128k (128,000) or 128Ki (131,072)"))?;
    n.checked_mul(scale).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("{text:?}: too large"))
}

impl ConfigArgs {
    /// The flags as plain data, for `strategy::resolve`.
    pub fn request(&self) -> RunRequest {
        RunRequest {
            train: self.train.train,
            recompute: self.train.recompute,
            ..request(self.strategy, &self.work, self.length.seq_len, &self.split, &self.measure, &self.decode)
        }
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
    pub fn request(&self) -> EmulationRequest {
        EmulationRequest { world: self.emulate_world, as_rank: self.as_rank }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, ModelConfig, RunConfig, Split, StrategyKind};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn resolve(flags: &str, world: usize) -> Result<RunConfig, ConfigError> {
        let argv = std::iter::once("ringbench").chain(flags.split_whitespace());
        Cli::try_parse_from(argv).expect("flags parse").args.request().resolve(world).map(|mut v| v.remove(0))
    }

    fn error(flags: &str, world: usize) -> String {
        resolve(flags, world).expect_err("must be rejected").0
    }

    #[test]
    fn lengths_take_decimal_and_binary_suffixes() {
        assert_eq!(token_count("131072"), Ok(131_072));
        assert_eq!(token_count("128k"), Ok(128_000));
        assert_eq!(token_count("128Ki"), Ok(131_072));
        assert_eq!(token_count("1M"), Ok(1_000_000));
        assert_eq!(token_count("1Mi"), Ok(1 << 20));
        assert!(token_count("12kb").unwrap_err().contains("expected a count"));
        assert!(token_count("99999999999999999999Mi").is_err());
        assert_eq!(resolve("--strategy ring --seq-len 128Ki", 2).unwrap().model.seq_len, 131_072);
    }

    #[test]
    fn explicit_flags_override_the_preset() {
        let cfg = resolve("--strategy ring --preset paper --seq-len 1000 --iters 2", 16).unwrap();
        assert_eq!(cfg.model, ModelConfig::dense(16, 4096, 32, 16384, 1000, 128));
        assert_eq!((cfg.split.sp(), cfg.warmup, cfg.iters, cfg.micro_batch), (16, 10, 2, 1));
        assert!(cfg.causal);
    }

    #[test]
    fn parallel_sizes_default_from_the_world() {
        let cfg = resolve("--strategy tp-pp --pp 2", 8).unwrap();
        assert_eq!((cfg.split.tp(), cfg.split.pp(), cfg.world()), (4, 2, 8));
        assert_eq!(resolve("--strategy ring", 3).unwrap().split, Split::Sp { p: 3 });
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
            ("--strategy double-ring --window 3", 4, "--window 3: must divide --ring 4"),
            ("--strategy double-ring --window 0", 4, "--window 0: must be at least 1"),
            ("--strategy double-ring --ring 8 --window 4", 4, "--ring 8: the job has 4 ranks"),
            ("--strategy double-ring --window 2 --seq-len 7", 4, "--seq-len 7: a zigzag double-ring of 4 needs at least 8 tokens"),
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
        let runs = Cli::try_parse_from(argv).unwrap().args.request().resolve(4).unwrap();
        let kinds = vec![
            StrategyKind::TpPp,
            StrategyKind::Ring,
            StrategyKind::Allgather,
            StrategyKind::Ulysses,
            StrategyKind::Usp,
            StrategyKind::TpCp,
            StrategyKind::DoubleRing,
        ];
        assert_eq!(runs.iter().map(|c| c.strategy).collect::<Vec<_>>(), kinds);
        // The 2-D ones take the node-sized split by default, not --tp and --ring (tp-pp's, ring's).
        assert_eq!((runs[4].split, runs[5].split), (Split::Usp { u: 2, r: 2 }, Split::TpCp { t: 2, c: 2 }));
        assert_eq!(runs[6].split, Split::DoubleRing { p: 4, w: 2 });
        let argv = "ringbench --strategy all --tp 4 --ring 4 --cp 4".split_whitespace();
        let runs = Cli::try_parse_from(argv).unwrap().args.request().resolve(4).unwrap();
        let tp_cp = runs.iter().find(|c| c.strategy == StrategyKind::TpCp).unwrap();
        assert_eq!(tp_cp.split, Split::TpCp { t: 1, c: 4 }, "--cp asks for it, degenerate or not");
        let usp = runs.iter().find(|c| c.strategy == StrategyKind::Usp).unwrap();
        assert_eq!(usp.split, Split::Usp { u: 2, r: 2 }, "--ring is the ring's under all");
        // Ulysses needs the ranks to divide the heads: on 3 ranks of 4 heads, `all` leaves it out,
        // and the 2-D strategies, whose only split of 3 ranks is one-dimensional.
        let argv = "ringbench --strategy all --tp 1 --pp 1 --ring 1".split_whitespace();
        let three = Cli::try_parse_from(argv.chain(["--heads", "4"])).unwrap().args.request().resolve(1).unwrap();
        assert_eq!(three.len(), 4);
        let argv = "ringbench --strategy all --tp 1 --pp 3 --layers 3 --d-model 64 --heads 4".split_whitespace();
        let three = Cli::try_parse_from(argv).unwrap().args.request().resolve(3).unwrap();
        assert_eq!(three.iter().map(|c| c.strategy).collect::<Vec<_>>(), kinds[..3].to_vec());
        assert!(runs.iter().all(|c| c.world() == 4));
        let argv = "ringbench --strategy all --tp 2 --pp 2 --ring 2".split_whitespace();
        let err = Cli::try_parse_from(argv).unwrap().args.request().resolve(4).unwrap_err();
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
