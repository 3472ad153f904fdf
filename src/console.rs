//! The console's primitives every layer may use: one whole line to stderr, standard output that
//! a reader who stops reading cannot end (`out!`, `outln!`), and this host's name (every report
//! names the rank and the host, STYLE.md item 11).

/// One line to stderr in a single write, so that lines from several ranks forwarded by mpirun
/// or srun do not interleave mid-line (eprintln! may write a line in pieces).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// `text` to standard output. A reader that has gone (`| head -1`) ends nothing: the command goes
/// on and saves what it measures, its output dropped, where `print!` would panic mid-run.
pub fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `print!` through `console::out`.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::console::out(&format!($($t)*)) };
}

/// `println!` through `console::out`.
#[macro_export]
macro_rules! outln {
    () => { $crate::console::out("\n") };
    ($($t:tt)*) => { $crate::console::out(&format!("{}\n", format_args!($($t)*))) };
}
