//! The console's two primitives every layer may use: one whole line to stderr, and this host's
//! name (every report names the rank and the host, STYLE.md item 11).

/// One line to stderr in a single write, so that lines from several ranks forwarded by mpirun
/// or srun do not interleave mid-line (eprintln! may write a line in pieces).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
