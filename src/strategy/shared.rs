//! What several strategies' tables share: the sequence-parallel strategies' sizes, placement and
//! layout, the 2-D strategies' sizes and checks, the buffers of a strategy whose K/V stays
//! local, and the projections of exposed collectives.

use super::spec::{CommProjection, Op, Placement, ProjectionInput, SizeFlags, Transfer};
use crate::config::{ConfigError, RunConfig, Split};
use crate::model::{Buffers, Shard};
use crate::topology::{self, LocalTokens};

/// The buffers of a strategy whose K/V stays local: the workspace for the rows of its placement.
pub(super) fn local_buffers(cfg: &RunConfig, p: &Placement) -> Buffers {
    let rows = cfg.micro_batch * p.tokens.len();
    let kvw = p.shard.heads(&cfg.model).kv_width();
    Buffers {
        kv_rows: rows,
        kv_in_rows: 0,
        acc_rows: rows,
        acc_heads: p.attention_heads.len(),
        extra: Vec::new(),
        attention_kv: (rows, 2 * kvw),
    }
}

/// Every rank of a sequence-parallel strategy holds the whole model and runs it on its tokens.
pub(super) fn sequence_parallel_placement(cfg: &RunConfig, rank: usize) -> Placement {
    let m = &cfg.model;
    let tokens = topology::ring_tokens(cfg.layout, m.seq_len, cfg.split.sp(), rank);
    Placement {
        attention_tokens: tokens.clone(),
        tokens,
        shard: Shard::whole(m),
        layers: 0..m.layers,
        attention_heads: 0..m.heads,
        outputs: true,
    }
}

/// The checks every strategy over `--ring` ranks of the sequence shares.
pub(super) fn check_sequence_parallel(cfg: &RunConfig, world: usize) -> Result<(), ConfigError> {
    let name = cfg.strategy.name();
    if cfg.split.sp() == 0 {
        return Err(ConfigError("--ring 0: must be at least 1".into()));
    }
    if cfg.split.sp() != world {
        return Err(ConfigError(format!(
            "--ring {}: the job has {world} ranks (world size must equal the {name} size, set by --ring)",
            cfg.split.sp()
        )));
    }
    check_chunks(cfg, "", cfg.split.sp())
}

/// A sequence cut over `n` ring positions under `--layout` has a token in every chunk.
pub(super) fn check_chunks(cfg: &RunConfig, what: &str, n: usize) -> Result<(), ConfigError> {
    let chunks = topology::chunk_count(cfg.layout, n);
    if cfg.model.seq_len < chunks {
        return Err(ConfigError(format!(
            "--seq-len {}: a {} {}{what} of {n} needs at least {chunks} tokens (one per chunk)",
            cfg.model.seq_len,
            cfg.layout.name(),
            cfg.strategy.name(),
        )));
    }
    Ok(())
}

/// The two sizes of a 2-D strategy, `inner x outer = world`, from their flags (`None` where
/// absent): one given sets the other to world / it; neither, the largest divisor of the world
/// up to a node's 8 GPUs that leaves at least two outer groups and that `allowed` accepts (its
/// heads must split that way). Inconsistent flags are left for the strategy's check to refuse.
pub(super) fn two_d_sizes(inner: Option<usize>, outer: Option<usize>, world: usize, allowed: impl Fn(usize) -> bool) -> (usize, usize) {
    let other = |x: usize| world.checked_div(x).unwrap_or(world);
    match (inner, outer) {
        (Some(i), Some(o)) => (i, o),
        (Some(i), None) => (i, other(i)),
        (None, Some(o)) => (other(o), o),
        (None, None) => {
            let i = (1..=GPUS_PER_NODE.min(world / 2).max(1)).rev().find(|&i| world % i == 0 && allowed(i)).unwrap_or(1);
            (i, world / i.max(1))
        }
    }
}

/// Collectives of kind `op` that attention waits for (all of them exposed), over the group
/// `peers`: whether it leaves the node, its link, one layer's worth of seconds and the
/// iteration's.
pub(super) fn exposed_collectives(x: &ProjectionInput, op: Op, peers: &[usize]) -> (bool, f64, f64, f64) {
    let (crosses, bw) = x.link(peers);
    let calls: Vec<&Transfer> = x.traffic.iter().filter(|t| t.op == op).collect();
    let per_layer = calls.iter().map(|t| x.seconds(t)).sum();
    let total = calls.iter().map(|t| x.seconds(t) * t.calls as f64).sum();
    (crosses, bw, per_layer, total)
}

/// A strategy whose one kind of collective is all its communication, exposed (allgather,
/// ulysses): `label` names one layer's worth of it.
pub(super) fn project_collective(x: &ProjectionInput, op: Op, label: &'static str) -> CommProjection {
    let peers = x.traffic.iter().find(|t| t.op == op).map(|t| t.peers.clone()).unwrap_or_default();
    let (crosses, bw, per_layer, total) = exposed_collectives(x, op, &peers);
    CommProjection {
        crosses_nodes: crosses,
        link_bytes_per_s: bw,
        exposed_s: total,
        hidden_fraction: 1.0,
        bubble_s: 0.0,
        details: vec![(label, per_layer)],
    }
}

/// GPUs of one NVLink node, where a 2-D strategy's default inner group ends.
pub(super) const GPUS_PER_NODE: usize = 8;

/// The check both 2-D strategies make of their sizes: each at least 1, their product the world.
pub(super) fn check_two_d(
    cfg: &RunConfig,
    (inner_flag, inner): (&str, usize),
    (outer_flag, outer): (&str, usize),
    world: usize,
) -> Result<(), ConfigError> {
    crate::config::require_positive(&[(inner_flag, inner), (outer_flag, outer)])?;
    if inner * outer != world {
        return Err(ConfigError(format!(
            "{inner_flag} {inner} x {outer_flag} {outer} = {} ranks, but the job has {world} ranks (world size must equal {inner_flag} x {outer_flag} for {})",
            inner * outer,
            cfg.strategy.name()
        )));
    }
    Ok(())
}

/// No communicator splits.
pub(super) fn no_splits(_: &RunConfig, _: usize) -> Vec<(usize, usize)> {
    Vec::new()
}

/// The sequence-parallel strategies' one size, `--ring`: their CSV `sp` and their world.
pub(super) fn sp_sizes(cfg: &RunConfig) -> Vec<usize> {
    vec![cfg.split.sp()]
}

/// `--ring`, by default the world.
pub(super) fn sp_resolve(cfg: &mut RunConfig, flags: &SizeFlags, world: usize) {
    cfg.split = Split::Sp { p: flags.ring.unwrap_or(world) };
}

/// A strategy without parallel sizes.
pub(super) fn no_sizes(_: &mut RunConfig, _: &SizeFlags, _: usize) {}

pub(super) fn sp_world(cfg: &RunConfig) -> usize {
    cfg.split.sp()
}

/// Every sequence-parallel rank's tokens under `--layout`: the layout of each rank's K/V block.
pub(super) fn sequence_layout(cfg: &RunConfig) -> Vec<LocalTokens> {
    ring_layout(cfg, cfg.split.sp())
}

/// Every position's tokens of a ring of `n` under `--layout`.
pub(super) fn ring_layout(cfg: &RunConfig, n: usize) -> Vec<LocalTokens> {
    (0..n).map(|r| topology::ring_tokens(cfg.layout, cfg.model.seq_len, n, r)).collect()
}

/// The longest any rank's tokens are (the block a padded collective moves per sequence).
pub(super) fn longest_tokens(cfg: &RunConfig) -> usize {
    sequence_layout(cfg).iter().map(LocalTokens::len).max().unwrap_or(0)
}

/// The longest of a layout's blocks, in tokens per sequence.
pub(super) fn longest_tokens_of(layout: &[LocalTokens]) -> usize {
    layout.iter().map(LocalTokens::len).max().unwrap_or(0)
}
