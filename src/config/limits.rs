//! The largest (and smallest) values ringbench accepts, named once for the checks and the errors.

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
