//! Admission: a config whose buffers cannot fit the memory a rank may use is refused before any
//! work, with the verdict and the worst figures agreed by every rank.

use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig};
use crate::metrics::fmt_bytes;
use crate::strategy;
use anyhow::Result;

/// Refuse, before any work, a config whose buffers cannot fit in the memory this rank may use.
/// Every rank checks its own share; the verdict and the worst figures are agreed by all.
pub fn check_memory<B: Backend, C: Communicator<B>>(cfgs: &[RunConfig], be: &B, comm: &C, sharing: usize, keep: bool) -> Result<()> {
    let need = cfgs
        .iter()
        .map(|c| strategy::memory_estimate(c, c.strategy_rank(comm.rank()), keep))
        .max_by_key(|e| e.total())
        .expect("at least one config");
    let budget = be.memory_budget(sharing);
    let fits = budget.is_none_or(|b| need.total() <= b);
    let worst_need = comm.max_f64(need.total() as f64)?;
    let worst_budget = -comm.max_f64(-(budget.map_or(f64::INFINITY, |b| b as f64)))?;
    if comm.all_agree(fits)? {
        return Ok(());
    }
    Err(ConfigError(format!(
        "config too large: the {} backend needs about {} per rank (weights {}, activations {}{}, scratch {}), but a rank may use {} ({} ranks share each host's available memory); reduce {}, or use more hosts",
        cfgs[0].backend.name(),
        fmt_bytes(worst_need),
        fmt_bytes(need.weights as f64),
        fmt_bytes(need.activations as f64),
        match need.kv_cache {
            0 => String::new(),
            b => format!(", K/V cache {} ({b} bytes) for {} decode steps", fmt_bytes(b as f64), cfgs[0].decode_tokens),
        },
        fmt_bytes(need.scratch as f64),
        fmt_bytes(worst_budget),
        sharing,
        if need.kv_cache > 0 { "--seq-len, --micro-batch, --batch, --d-model, --layers or --decode-tokens" } else { "--seq-len, --micro-batch, --batch, --d-model or --layers" }
    ))
    .into())
}
