//! The largest (and smallest) values ringbench accepts, named once for the checks and the errors,
//! and the error that refuses bad input.

use std::fmt;

/// The shortest --comm-timeout accepted: the watchdog's verdict on a call shorter than this would
/// be about scheduling noise, not a stalled peer.
pub const MIN_COMM_TIMEOUT_S: f64 = 1.0;

/// The longest --comm-timeout accepted (a larger one would not fit a timer, and means "never").
pub const MAX_COMM_TIMEOUT_S: f64 = 1e6;

/// The largest job ringbench takes (ranks, real or emulated): far beyond any cluster, and small
/// enough that sizes derived from it (2P zigzag chunks, P x P steps) stay exact.
pub const MAX_RANKS: usize = 1 << 20;

/// The most iterations of either kind: each measured one is kept in memory and in the rank file,
/// and a million even of 1 ms iterations is a quarter of an hour.
pub const MAX_ITERATIONS: usize = 1_000_000;

/// The most decode steps a run takes: each step's time is kept per measured iteration.
pub const MAX_DECODE_TOKENS: usize = 1 << 20;

/// Sizes beyond which products of them (tokens x width, pairs of tokens) leave 64-bit range; no
/// machine holds such a model, and `plan` keeps exact arithmetic below them.
pub(crate) const MAX_SIZES: [(&str, usize); 6] =
    [("--seq-len", 1 << 40), ("--batch", 1 << 24), ("--layers", 1 << 16), ("--d-model", 1 << 20), ("--mlp", 1 << 22), ("--heads", 1 << 16)];

/// Bad input: one line naming the flag, what was given and what is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A number as a flag's value reads in an error: plain where it is ordinary, in exponent form
/// where plain digits would run to hundreds ("1e308", "1e-300").
pub fn flag_number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
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
