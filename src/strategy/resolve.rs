//! From what the flags ask (`config::RunRequest`) to validated configs: each strategy's sizes
//! resolved by its spec, every check a config must pass before any work starts, and what a
//! config's strategy makes of it (its world, its rank files, its description). Pure: every rank
//! reaches the same verdict.

pub use super::spec::SizeFlags;
use super::{spec, SPECS};
use crate::config::{
    require_at_most, require_positive, BackendKind, CommKind, ConfigError, Emulation, EmulationRequest, MlpAct, ModelConfig, RunConfig,
    RunRequest, Split, StrategyKind, StrategySelection, MAX_COMM_TIMEOUT_S, MAX_ITERATIONS, MAX_SIZES, MIN_COMM_TIMEOUT_S,
};

macro_rules! bad {
    ($($arg:tt)*) => { return Err(ConfigError(format!($($arg)*))) };
}

impl StrategySelection {
    /// The strategy runs, in launch order.
    pub fn strategies(self) -> Vec<StrategyKind> {
        match self {
            StrategySelection::One(kind) => vec![kind],
            StrategySelection::All => SPECS.iter().map(|s| s.kind).filter(|&k| k != StrategyKind::Reference).collect(),
        }
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
        StrategyKind::DoubleRing => flags.window.is_some(),
        _ => false,
    };
    let two_d = |c: &RunConfig| match kind {
        StrategyKind::Usp => c.split.ulysses() > 1 && c.split.ring() > 1,
        StrategyKind::TpCp => c.split.tp() > 1 && c.split.cp() > 1,
        StrategyKind::DoubleRing => c.split.window() > 1 && c.split.window() < c.split.sp(),
        _ => true,
    };
    explicit || resolved.as_ref().is_ok_and(two_d)
}

impl RunRequest {
    /// The world size the parallel flags describe, for commands that run without MPI (`plan`):
    /// the ring's size, tp x pp, ulysses x ring, tp x cp.
    pub fn implied_world(&self) -> usize {
        let or1 = |v: Option<usize>| v.unwrap_or(1);
        match self.strategy {
            StrategySelection::One(StrategyKind::Reference) => 1,
            StrategySelection::One(StrategyKind::Ring | StrategyKind::Allgather | StrategyKind::Ulysses | StrategyKind::DoubleRing) => {
                or1(self.ring)
            }
            StrategySelection::One(StrategyKind::Usp) => or1(self.ulysses) * or1(self.ring),
            StrategySelection::One(StrategyKind::TpCp) => or1(self.tp) * or1(self.cp),
            StrategySelection::One(StrategyKind::TpPp) | StrategySelection::All => match (self.tp, self.pp, self.ring) {
                (None, None, Some(r)) => r,
                (tp, pp, _) => tp.unwrap_or(1) * pp.unwrap_or(1),
            },
        }
    }

    /// The double ring's window defaults to a node of `node` GPUs, where a node is some but not
    /// all of the `world` and divides it; a given --window stays.
    pub fn window_of_node(mut self, node: usize, world: usize) -> Self {
        if self.window.is_none() && node > 1 && node < world && world % node == 0 {
            self.window = Some(node);
        }
        self
    }

    /// The parallel-size flags as given.
    pub fn size_flags(&self) -> SizeFlags {
        SizeFlags {
            tp: self.tp,
            pp: self.pp,
            ring: self.ring,
            ulysses: self.ulysses,
            cp: self.cp,
            window: self.window,
            all: self.strategy == StrategySelection::All,
        }
    }

    /// Resolve the preset and the flags into validated configs, one per strategy run, for a job
    /// of `world` ranks.
    pub fn resolve(&self, world: usize) -> Result<Vec<RunConfig>, ConfigError> {
        let flags = self.size_flags();
        self.resolve_each(world)?.into_iter().filter(|(kind, r)| !flags.all || runs_in_all(*kind, &flags, r)).map(|(_, r)| r).collect()
    }

    /// Every strategy `--strategy` names, resolved for a job of `world` ranks, with its verdict
    /// (`plan --strategy all` shows those that do not validate beside those that do). The error
    /// is the flags' own, common to every strategy.
    #[allow(clippy::type_complexity)]
    pub fn resolve_each(&self, world: usize) -> Result<Vec<(StrategyKind, Result<RunConfig, ConfigError>)>, ConfigError> {
        for (flag, v) in [("--tp", self.tp), ("--pp", self.pp), ("--ring", self.ring), ("--ulysses", self.ulysses), ("--cp", self.cp)] {
            if let Some(v) = v {
                require_at_most(flag, v, crate::config::MAX_RANKS)?;
            }
        }
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
        if self.comm_timeout < MIN_COMM_TIMEOUT_S {
            return Err(ConfigError(format!(
                "--comm-timeout {}: at least {MIN_COMM_TIMEOUT_S} second is accepted (a shorter one would end a healthy job on its first slow call)",
                crate::config::flag_number(self.comm_timeout)
            )));
        }
        if self.comm_timeout > MAX_COMM_TIMEOUT_S {
            return Err(ConfigError(format!(
                "--comm-timeout {}: at most {MAX_COMM_TIMEOUT_S} seconds (about 11 days) is accepted",
                self.comm_timeout
            )));
        }
        if let Some(n) = self.decode_tokens {
            if n == 0 {
                bad!("--decode-tokens 0: must be at least 1 (leave the flag out for a prefill-only run)");
            }
            require_at_most("--decode-tokens", n, crate::config::MAX_DECODE_TOKENS)?;
            if self.no_causal {
                bad!("--decode-tokens {n} with --no-causal: decode generates tokens one after another, so its attention is causal by construction");
            }
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
                    split: Split::One,
                    layout: self.layout,
                    micro_batch: self.micro_batch.unwrap_or(p.micro_batch),
                    seed: self.seed,
                    causal: !self.no_causal,
                    backend: self.backend,
                    comm,
                    warmup: self.warmup.unwrap_or(p.warmup),
                    iters: self.iters.unwrap_or(p.iters),
                    emulate: None,
                    decode_tokens: self.decode_tokens.unwrap_or(0),
                    train: self.train,
                    recompute: self.recompute,
                };
                (spec(strategy).resolve_sizes)(&mut cfg, &flags, world);
                (strategy, validate(&cfg, world).map(|()| cfg))
            })
            .collect();
        Ok(resolved)
    }
}

impl EmulationRequest {
    /// The configs to run for a launch of `processes` processes: as `args` resolves them on the
    /// emulated world, each marked emulated; or, without emulation, as on the real world.
    pub fn resolve(&self, args: &RunRequest, processes: usize) -> Result<Vec<RunConfig>, ConfigError> {
        let (Some(world), Some(as_rank)) = (self.world, self.as_rank) else {
            return args.resolve(processes);
        };
        if world == 0 {
            bad!("--emulate-world 0: must be at least 1");
        }
        require_at_most("--emulate-world", world, crate::config::MAX_RANKS)?;
        if args.strategy == StrategySelection::One(StrategyKind::Reference) {
            bad!("--emulate-world {world}: --strategy reference is one rank's work already; run it without --emulate-world");
        }
        if as_rank >= world {
            bad!("--as-rank {as_rank}: must be below --emulate-world {world} (ranks 0 .. {})", world - 1);
        }
        if processes != 1 {
            bad!("--emulate-world runs one rank's work in one process, but the job has {processes} processes (launch it with -np 1)");
        }
        if args.train {
            bad!("--train with --emulate-world {world}: emulation times forward passes only (its stand-in transport has no FP32 gradient all-reduce)");
        }
        let mut cfgs = args.resolve(world)?;
        for cfg in &mut cfgs {
            cfg.emulate = Some(Emulation { world, as_rank });
        }
        Ok(cfgs)
    }
}

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
    if cfg.recompute && !cfg.train {
        bad!("--recompute without --train: it recomputes a training step's forward in its backward");
    }
    if cfg.train {
        check_train(cfg)?;
    }
    (spec(cfg.strategy).check)(cfg, world)
}

/// What `--train` takes: no decode steps (and no emulation: `EmulationRequest::resolve`).
fn check_train(cfg: &RunConfig) -> Result<(), ConfigError> {
    if cfg.decode_tokens > 0 {
        bad!("--train with --decode-tokens {}: a training step has no decode steps (run them apart)", cfg.decode_tokens);
    }
    Ok(())
}

impl RunConfig {
    /// Ranks the strategy occupies.
    pub fn world(&self) -> usize {
        (spec(self.strategy).world)(self)
    }

    /// The ranks whose files make a run of this config whole: every rank of the world, or the
    /// emulated rank alone (one process's file, named after the rank it stood in for).
    pub fn rank_files(&self) -> Vec<usize> {
        match self.emulate {
            Some(e) => vec![e.as_rank],
            None => (0..self.world()).collect(),
        }
    }

    /// One line naming the strategy, its parallel layout and the work, for the console.
    pub fn describe(&self) -> String {
        let emulated = self.emulate.map(|e| format!(", {} (communication replaced by device copies)", e.label())).unwrap_or_default();
        format!("{}, seed {}, {} backend, {}{emulated}", self.describe_work(), self.seed, self.backend.name(), self.comm.name())
    }

    /// The strategy's parallel sizes and layout, as its spec states them: "tp 2 x pp 2",
    /// "sp 4, zigzag", "1 rank".
    pub fn describe_split(&self) -> String {
        let spec = spec(self.strategy);
        let sizes: Vec<String> = spec.size_names.iter().zip((spec.sizes)(self)).map(|(n, v)| format!("{n} {v}")).collect();
        let mut s = if sizes.is_empty() { "1 rank".to_string() } else { sizes.join(" x ") };
        if spec.uses_layout {
            s.push_str(&format!(", {}", self.layout.name()));
        }
        s
    }

    /// The model alone: its preset and shape (no split, length or batch).
    pub fn describe_model(&self) -> String {
        let m = &self.model;
        let kv = if m.kv_heads == m.heads { String::new() } else { format!(" ({} K/V)", m.kv_heads) };
        let act = if m.mlp_act == MlpAct::Gelu { String::new() } else { format!(" {}", m.mlp_act.name()) };
        format!("{}: {} layers, d_model {}, {} heads{kv}, mlp {}{act}", self.preset.name(), m.layers, m.d_model, m.heads, m.mlp)
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
        ) + &if self.decode_tokens > 0 { format!(", then {} decode steps", self.decode_tokens) } else { String::new() }
            + match (self.train, self.recompute) {
                (true, false) => ", training step (forward + backward)",
                (true, true) => ", training step (forward + backward, each layer's forward recomputed)",
                _ => "",
            }
    }
}
