//! What every selftest case shares: an op's output on the host, the tolerances a GPU result is
//! held to, seeded inputs, and buffers made from host data or poisoned with NaN.

use crate::backend::{Backend, Span};
use crate::generator::uniform;
use anyhow::Result;
use half::bf16;

/// What an op produced, on the host.
pub enum Output {
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

/// How a GPU result may differ from the CPU's.
#[derive(Clone, Debug, PartialEq)]
pub enum Tolerance {
    /// Bit for bit (the generator).
    Exact,
    /// One BF16 rounding apart: FP32 sums in another order can round the other way.
    OneUlp,
    /// FP32 values within this relative error (attention accumulators: fast exp, another order).
    Relative(f64),
    /// The tensor-core attention's output [o | lse | stored], against the flash kernel's CPU twin
    /// (backend::flash_twin: P rounded to BF16 as the kernel rounds it): each value within the
    /// twin's bound for its row and head (a few BF16 ulps where P rounds near a boundary, FP32
    /// summation otherwise), the stored copy one BF16 ulp more, the twin taking keys in tiles of
    /// `tile` as the kernel does. Set by `expected`.
    FlashTwin { tile: usize },
    /// Per output value, the absolute bound (FlashTwin, or an attention case's Relative, resolved
    /// by `expected`).
    Bounds(Vec<f64>),
    /// A backward case's FP32 sums: bounds derived per value from its inputs
    /// (`backward::bounds`), with the flash backward kernel's BF16 rounding of P and dS where
    /// `flash`. Resolved by `expected`.
    Derived { flash: bool },
}

/// Seeded values in [-scale, scale).
pub(crate) fn values(seed: u64, n: usize, scale: f32) -> Vec<bf16> {
    (0..n).map(|i| bf16::from_f32(scale * uniform(seed, 99, i as u64))).collect()
}

pub(crate) const POISON_BF16: bf16 = bf16::NAN;

/// An attention case's two calls (query span, key span) as a ring delivers them: the queries (the
/// last rows - rows / 2 rows, at positions from 1000 + rows / 2) against the keys before them
/// (unmasked), then against the diagonal (their own rows). At one row the first has no keys.
pub(crate) fn ring_calls(rows: usize) -> [(Span, Span); 2] {
    let split = rows / 2;
    let q = Span { row0: split, len: rows - split, pos0: 1000 + split };
    [(q, Span { row0: 0, len: split, pos0: 1000 }), (q, Span { row0: split, len: rows - split, pos0: 1000 + split })]
}

pub(crate) fn act<B: Backend>(be: &B, rows: usize, cols: usize, data: &[bf16]) -> Result<B::Act> {
    let mut a = be.alloc_act(rows, cols)?;
    be.upload(&mut a, data)?;
    Ok(a)
}

pub(crate) fn poisoned<B: Backend>(be: &B, rows: usize, cols: usize) -> Result<B::Act> {
    act(be, rows, cols, &vec![POISON_BF16; rows * cols])
}
