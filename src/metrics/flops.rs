//! The FLOP model: what each rank of a strategy computes per iteration, from the config alone.
//! A multiply-add counts 2 FLOPs. Linear layers per token and layer: 2 (d (d + 2 kv_dim) + d d +
//! d F u + F d), u = 2 for SwiGLU's gate and up, else 1.
//! Attention per (query, visible key) pair and head: 4 head_dim (Q K^T and P V). The pairs are
//! counted exactly (a causal query at position p sees p + 1 keys), which is the DESIGN convention of
//! "half of 4 S d" up to a factor (S + 1) / S.

use crate::config::RunConfig;
use crate::topology::LocalTokens;

/// FLOPs of one iteration on one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flops {
    pub linear: f64,
    pub attention: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.linear + self.attention
    }
}

/// Linear-layer FLOPs per token per layer of the whole (unsharded) model.
pub fn linear_per_token_layer(cfg: &RunConfig) -> f64 {
    let m = &cfg.model;
    shard_linear_per_token_layer(cfg, m.heads, m.kv_heads, m.mlp)
}

/// Linear-layer FLOPs per token per layer of a shard of `heads` query heads, `kv_heads` K/V heads
/// and `mlp` MLP columns: Q, K and V, the output projection, up (with SwiGLU gate and up) and down.
fn shard_linear_per_token_layer(cfg: &RunConfig, heads: usize, kv_heads: usize, mlp: usize) -> f64 {
    let m = &cfg.model;
    let (d, hd) = (m.d_model as f64, m.head_dim() as f64);
    let (w, kvw, f) = (heads as f64 * hd, kv_heads as f64 * hd, mlp as f64);
    2.0 * (d * w + d * 2.0 * kvw + w * d + d * f * m.mlp_act.up_factor() as f64 + f * d)
}

/// (query, key) pairs a sequence's `tokens` attend to, per head.
fn pairs(tokens: &LocalTokens, seq_len: usize, causal: bool) -> f64 {
    tokens
        .segments
        .iter()
        // Causal: the query at position p sees p + 1 keys; summed in closed form, so the cost does
        // not grow with the sequence (u128: exact for any accepted length).
        .map(|s| {
            // Positions a, a + t, ..., a + (n - 1) t: sum of (p + 1) = n (a + 1) + t n (n - 1) / 2.
            let (a, n, t) = (s.start as u128, s.len as u128, s.stride as u128);
            if causal {
                (n * (a + 1) + t * (n * n.saturating_sub(1) / 2)) as f64
            } else {
                s.len as f64 * seq_len as f64
            }
        })
        .sum()
}

/// What rank `rank` computes in one iteration (the whole batch), from its strategy's placement:
/// the linear layers of its shard on its tokens, attention of its query tokens and heads.
pub fn rank_flops(cfg: &RunConfig, rank: usize) -> Flops {
    let m = &cfg.model;
    let (seqs, hd) = (m.batch as f64, m.head_dim() as f64);
    let p = crate::strategy::placement(cfg, rank);
    // K/V heads replicated over tp / kv_heads ranks are computed on each of them.
    let layers = p.layers.len() as f64;
    // A training step: the forward, and a backward of twice its FLOPs (docs/design.md, "Training").
    let passes = if cfg.train { 3.0 } else { 1.0 };
    Flops {
        linear: shard_linear_per_token_layer(cfg, p.shard.heads.len(), p.shard.kv_heads.len(), p.shard.mlp.len())
            * p.tokens.len() as f64
            * seqs
            * layers
            * passes,
        attention: 4.0 * hd * p.attention_heads.len() as f64 * pairs(&p.attention_tokens, m.seq_len, cfg.causal) * seqs * layers * passes,
    }
}

/// The whole job's FLOPs per iteration: the model's forward pass over the batch.
pub fn job_flops(cfg: &RunConfig) -> Flops {
    (0..cfg.world())
        .map(|r| rank_flops(cfg, r))
        .fold(Flops::default(), |a, b| Flops { linear: a.linear + b.linear, attention: a.attention + b.attention })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Layout, Preset, Split, StrategyKind};
    use crate::topology::ring_tokens;

    fn cfg(strategy: StrategyKind, causal: bool, layout: Layout) -> RunConfig {
        RunConfig { causal, layout, ..RunConfig::of_preset(Preset::Paper, strategy, 8, 2, 16) }
    }

    #[test]
    fn paper_model_facts() {
        let c = cfg(StrategyKind::Reference, false, Layout::Zigzag);
        // DESIGN: 6.44e9 linear FLOPs per token (16 layers, 12 d^2 parameters each).
        assert!((linear_per_token_layer(&c) * 16.0 / 6.44e9 - 1.0).abs() < 2e-3);
        // Non-causal attention per token per layer: 4 S d.
        let f = job_flops(&c);
        let per_token_layer = f.attention / (128.0 * 100_000.0 * 16.0);
        assert!((per_token_layer / (4.0 * 100_000.0 * 4096.0) - 1.0).abs() < 1e-12);
        // Causal: half of it, up to (S + 1) / S.
        let causal = job_flops(&cfg(StrategyKind::Reference, true, Layout::Zigzag)).attention;
        assert!((causal / f.attention - 0.5).abs() < 1e-5);
    }

    #[test]
    fn the_ranks_of_every_strategy_add_up_to_the_reference() {
        for causal in [true, false] {
            let whole = job_flops(&cfg(StrategyKind::Reference, causal, Layout::Zigzag));
            for (s, layout) in [
                (StrategyKind::TpPp, Layout::Zigzag),
                (StrategyKind::Ring, Layout::Zigzag),
                (StrategyKind::Ring, Layout::Contiguous),
                (StrategyKind::Allgather, Layout::Zigzag),
                (StrategyKind::Ulysses, Layout::Contiguous),
                (StrategyKind::Usp, Layout::Zigzag),
                (StrategyKind::Usp, Layout::Striped),
                (StrategyKind::TpCp, Layout::Zigzag),
                (StrategyKind::TpCp, Layout::Contiguous),
            ] {
                // The 2-D ones at 8 x 2: usp's ring is 2, tp-cp's context ring 2.
                let c = RunConfig {
                    split: Split::of_sizes(s, 8, 2, if s == StrategyKind::Usp { 2 } else { 16 }, 8, 2, 8),
                    ..cfg(s, causal, layout)
                };
                assert_eq!(c.world(), 16);
                let f = job_flops(&c);
                assert!(
                    (f.linear / whole.linear - 1.0).abs() < 1e-12 && (f.attention / whole.attention - 1.0).abs() < 1e-12,
                    "{s:?} {layout:?}"
                );
            }
        }
    }

    #[test]
    fn causal_pairs_are_counted_exactly_in_closed_form() {
        for (seq, ring) in [(1usize, 1usize), (97, 3), (1000, 4), (1023, 8)] {
            for layout in [Layout::Zigzag, Layout::Contiguous, Layout::Striped] {
                let total: f64 = (0..ring).map(|r| pairs(&ring_tokens(layout, seq, ring, r), seq, true)).sum();
                // Every causal query at position p sees p + 1 keys.
                assert_eq!(total, (seq * (seq + 1) / 2) as f64, "{seq} {ring} {layout:?}");
            }
        }
        // A trillion tokens costs no more than a thousand.
        let t = std::time::Instant::now();
        let n = 1usize << 40;
        assert_eq!(pairs(&LocalTokens::whole(n), n, true), (n as f64) * (n as f64 + 1.0) / 2.0);
        assert!(t.elapsed() < std::time::Duration::from_millis(10));
    }

    #[test]
    fn zigzag_balances_attention_and_contiguous_does_not() {
        let zz = cfg(StrategyKind::Ring, true, Layout::Zigzag);
        let a: Vec<f64> = (0..16).map(|r| rank_flops(&zz, r).attention).collect();
        let spread = a.iter().cloned().fold(f64::MIN, f64::max) / a.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread < 1.001, "zigzag spread {spread}");
        let ct = cfg(StrategyKind::Ring, true, Layout::Contiguous);
        assert!(rank_flops(&ct, 15).attention > 20.0 * rank_flops(&ct, 0).attention);
        // Striped: rank r's tokens are each r positions later than rank 0's, a spread of P / S.
        let st = cfg(StrategyKind::Allgather, true, Layout::Striped);
        let a: Vec<f64> = (0..16).map(|r| rank_flops(&st, r).attention).collect();
        assert!(a.windows(2).all(|w| w[1] > w[0]), "striped work grows by rank: {a:?}");
        assert!(a[15] / a[0] < 1.001, "striped spread {}", a[15] / a[0]);
    }
}
