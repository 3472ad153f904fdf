//! A sweep's hold on its `--out`: one sweep at a time writes there (an exclusive lock on
//! `.sweep.lock`, which names its holder's host and process and is released by the kernel however
//! the holder ends), and a directory holds one kind of sweep (`sweep.json`): a measured sweep never
//! writes over a projected one's tables, nor the reverse. Both are settled before anything in the
//! directory is read, moved or written.

use super::point::Basis;
use crate::config::ConfigError;
use std::io::Write;
use std::path::Path;

const LOCK: &str = ".sweep.lock";
const MARKER: &str = "sweep.json";

/// The lock on a sweep's directory, held while this lives: released when dropped, or by the
/// kernel when the process ends, however it ends. The file itself stays (removing it would let a
/// sweep that opened it just before lock a name no longer in the directory).
#[derive(Debug)]
pub struct Claim {
    _lock: std::fs::File,
}

/// What kind of sweep `dir` holds: its marker's word, or, for a directory written before markers,
/// what its files say (point directories with rank files: measured; tables alone: projected).
fn kind_of(dir: &Path) -> Result<Option<Basis>, ConfigError> {
    let bad = |why: String| ConfigError(format!("--out {}: {why}", dir.display()));
    if let Ok(text) = std::fs::read_to_string(dir.join(MARKER)) {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("{MARKER} is not a sweep's marker ({e})")))?;
        return match v.get("basis").and_then(|b| b.as_str()) {
            Some("projected") => Ok(Some(Basis::Projected)),
            Some("measured") => Ok(Some(Basis::Measured)),
            _ => Err(bad(format!("{MARKER} names no sweep kind"))),
        };
    }
    if !dir.join("sweep.csv").exists() {
        return Ok(None);
    }
    let points = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?.flatten().any(|e| e.path().join("rank-00000.h5").exists());
    Ok(Some(if points { Basis::Measured } else { Basis::Projected }))
}

/// Take `dir` (created if missing) for a sweep of kind `basis`: refused, as bad input, where
/// another sweep holds it or it holds the other kind of sweep.
pub fn claim(dir: &Path, basis: Basis) -> Result<Claim, ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: String| ConfigError(format!("--out {}: {why}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create the directory: {e}")))?;
    let path = dir.join(LOCK);
    // Never through a link planted at the name.
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| bad(format!("cannot open {LOCK}: {e}")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim().rsplit_once(' ') {
                Some((host, pid)) => format!(" (pid {pid} on host {host})"),
                None => String::new(),
            };
            return Err(bad(format!("another sweep{holder} is writing there; wait for it to end, or choose another --out")));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(bad(format!("cannot lock {LOCK}: {e}"))),
    }
    let holder = format!("{} {}\n", crate::console::hostname(), std::process::id());
    lock.set_len(0).and_then(|()| lock.write_all(holder.as_bytes())).map_err(|e| bad(format!("writing {LOCK}: {e}")))?;
    check_kind(dir, basis)?;
    Ok(Claim { _lock: lock })
}

/// The directory's kind is `basis`, or it has none yet and is marked so.
fn check_kind(dir: &Path, basis: Basis) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError(format!("--out {}: {why}", dir.display()));
    match kind_of(dir)? {
        Some(k) if k != basis => {
            Err(bad(format!("it holds a {} sweep; a {} sweep never writes over it (choose another --out)", k.name(), basis.name())))
        }
        Some(_) => Ok(()),
        None => {
            let text = format!("{{\"basis\": \"{}\"}}\n", basis.name());
            crate::output::reduce::write_new_or_same(&dir.join(MARKER), text.as_bytes(), false).map_err(|e| bad(format!("{e:#}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sweep_at_a_time_and_one_kind_per_directory() {
        let dir = std::env::temp_dir().join(format!("ringbench-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = claim(&dir, Basis::Measured).unwrap();
        // Held: a second claim (another open file description, as another process has) is
        // refused, naming the holder.
        let e = claim(&dir, Basis::Measured).unwrap_err().0;
        assert!(e.contains(&format!("another sweep (pid {} on host", std::process::id())), "{e}");
        drop(first);
        drop(claim(&dir, Basis::Measured).unwrap());
        // The marker says measured: a projected sweep is refused.
        let e = claim(&dir, Basis::Projected).unwrap_err().0;
        assert!(e.contains("it holds a measured sweep; a projected sweep never writes over it"), "{e}");
        // A lock file left by a process that is gone holds no lock: it is taken.
        std::fs::write(dir.join(LOCK), format!("{} 4194303\n", crate::console::hostname())).unwrap();
        drop(claim(&dir, Basis::Measured).unwrap());
        // A link planted at the lock's name is not followed.
        let target = dir.join("target");
        std::fs::write(&target, "kept").unwrap();
        std::fs::remove_file(dir.join(LOCK)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK)).unwrap();
        assert!(claim(&dir, Basis::Measured).unwrap_err().0.contains("cannot open .sweep.lock"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        std::fs::remove_file(dir.join(LOCK)).unwrap();
        // A directory of tables from before markers reads as projected.
        let legacy = dir.join("legacy");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("sweep.csv"), "world\n").unwrap();
        assert!(claim(&legacy, Basis::Measured).unwrap_err().0.contains("it holds a projected sweep"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
