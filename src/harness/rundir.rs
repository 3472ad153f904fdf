//! The run directory: rank 0 picks the run id and creates `<out>/<id>/`, which must be new, and
//! every rank learns it and the launch's identity before any work.

use super::options::RunOptions;
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::ConfigError;
use anyhow::Result;
use std::path::PathBuf;

/// `id` as a run directory's name; `from` names where it came from (--run-id, $SLURM_JOB_ID).
fn check_run_id(id: &str, from: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty() && !id.starts_with('.') && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    match (ok, from) {
        (true, _) => Ok(()),
        (false, "--run-id") => Err(ConfigError(format!("--run-id {id:?}: use letters, digits, '.', '_' and '-' (it names a directory)"))),
        (false, from) => {
            Err(ConfigError(format!("{from} {id:?} cannot name a run directory (letters, digits, '.', '_' and '-' only): give --run-id")))
        }
    }
}

/// How many numbered variants of a default run id are tried when two runs start in one second.
const DEFAULT_ID_TRIES: usize = 100;

/// Rank 0 picks the run id, creates `<out>/<id>/`, which must be new, and makes the launch's
/// identity; every rank learns both, so a clash is bad input on every rank, before any work. A
/// chosen id (--run-id, $SLURM_JOB_ID) that exists is refused; a default one (a timestamp) that
/// exists, a second run started in the same second, gets the next free suffix (-2, -3, ...).
pub(super) fn create_run_dir<B: Backend, C: Communicator<B>>(comm: &C, choice: &str, opts: &RunOptions) -> Result<(PathBuf, String)> {
    let root = comm.rank() == 0;
    let mut id = Vec::new();
    let mut problem = None;
    if root {
        let slurm = || std::env::var("SLURM_JOB_ID").ok().filter(|v| !v.is_empty());
        let (chosen, from) = match (&opts.run_id, slurm()) {
            (Some(id), _) => (Some(id.clone()), "--run-id"),
            (None, Some(job)) => (Some(job), "$SLURM_JOB_ID"),
            (None, None) => (None, "the default run id"),
        };
        let candidates: Vec<String> = match &chosen {
            Some(name) => vec![name.clone()],
            None => {
                let base = format!("{}-{choice}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
                std::iter::once(base.clone()).chain((2..=DEFAULT_ID_TRIES).map(|i| format!("{base}-{i}"))).collect()
            }
        };
        if let Err(e) = check_run_id(&candidates[0], from) {
            problem = Some(e.0);
        } else if let Err(e) = std::fs::create_dir_all(&opts.out) {
            problem = Some(format!("--out {}: cannot create the results directory: {e}", opts.out.display()));
        } else {
            for name in &candidates {
                let dir = opts.out.join(name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        // The launch: host, process and the instant rank 0 made it.
                        let now = chrono::Utc::now();
                        let launch =
                            format!("{}:{}:{}", crate::console::hostname(), std::process::id(), now.timestamp_nanos_opt().unwrap_or(0));
                        id = format!("{name}\n{launch}").into_bytes();
                        problem = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        problem =
                            Some(format!("run directory {} exists; results are never overwritten (choose another --run-id)", dir.display()))
                    }
                    Err(e) => {
                        problem = Some(format!("--out {}: cannot create run directory {}: {e}", opts.out.display(), dir.display()));
                        break;
                    }
                }
            }
        }
    }
    if !comm.all_agree(problem.is_none())? {
        return Err(ConfigError(problem.unwrap_or_else(|| "rank 0 could not create the run directory".into())).into());
    }
    comm.broadcast_bytes(&mut id)?;
    let text = String::from_utf8(id)?;
    let (name, launch) = text.split_once('\n').ok_or_else(|| anyhow::anyhow!("rank 0 sent no launch identity"))?;
    Ok((opts.out.join(name), launch.to_string()))
}
