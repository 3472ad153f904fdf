//! What this rank has measured so far, kept where a signal can reach it. SIGTERM (SLURM's time
//! limit, mpirun passing on a kill) and SIGINT are handled on a thread of their own: it writes
//! this rank's file at once with the run in progress marked `interrupted`, rank 0 then waits a
//! moment for the other ranks' files and writes the summary (marked incomplete), and the process
//! exits with 128 + the signal. It does not wait for the iteration in flight: mpirun follows
//! SIGTERM with SIGKILL after one second by default (SLURM after KillWait, 30 s by default).
//! Against a kill without warning (SIGKILL, the OOM killer, a lost node) the harness also writes a
//! checkpoint of the file at most once a second during a run, marked `interrupted`: that is what
//! the run is until its last iteration is written as `complete`.

use crate::output::rankfile::{self, RankRun};
use crate::output::reduce;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Journal {
    pub dir: PathBuf,
    pub rank: usize,
    /// The ranks whose files make the run whole: every rank of the world, or an emulated rank alone.
    pub ranks: Vec<usize>,
    /// Strategy runs of this launch; the last one may be in progress (status "running").
    pub runs: Vec<RankRun>,
}

static JOURNAL: Mutex<Option<Journal>> = Mutex::new(None);

/// How long rank 0 waits for the other ranks' interrupted files before reducing what it has.
const WAIT_FOR_RANKS: Duration = Duration::from_millis(700);

/// Run `f` on the journal (None before a run directory exists).
pub fn with<T>(f: impl FnOnce(&mut Option<Journal>) -> T) -> T {
    let mut guard = JOURNAL.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// How often, at most, a running strategy's file is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Write this rank's file as it would stand if the process died now, if the last checkpoint is
/// older than CHECKPOINT_EVERY (`last` tracks it).
pub fn checkpoint(last: &mut Instant) -> anyhow::Result<()> {
    if last.elapsed() < CHECKPOINT_EVERY {
        return Ok(());
    }
    *last = Instant::now();
    with(|j| {
        let Some(j) = j.as_ref() else { return Ok(()) };
        let mut runs = j.runs.clone();
        for r in runs.iter_mut().filter(|r| r.status == "running") {
            r.status = "interrupted".into();
        }
        rankfile::write(&j.dir, j.rank, &runs).map(|_| ())
    })
}

/// Write this rank's file from the journal (caller holds the journal).
pub fn write(j: &Journal) -> anyhow::Result<()> {
    rankfile::write(&j.dir, j.rank, &j.runs).map(|_| ())
}

/// Handle SIGTERM / SIGINT for the rest of the process's life.
pub fn install_signal_thread(rank: usize, host: String) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("ringbench-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let code = on_signal(sig, rank, &host);
            std::process::exit(code);
        }
    })?;
    Ok(())
}

/// Keep what was measured; returns the exit status.
fn on_signal(sig: i32, rank: usize, host: &str) -> i32 {
    let code = 128 + sig;
    let dir = with(|j| {
        let j = j.as_mut()?;
        if let Some(last) = j.runs.last_mut().filter(|r| r.status == "running") {
            last.status = "interrupted".into();
            last.end_utc = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        }
        if let Err(e) = write(j) {
            crate::launch::say(&format!(
                "ringbench: rank {rank} on host {host}: interrupted by signal {sig}, and writing its results failed: {e:#}"
            ));
        }
        Some((j.dir.clone(), j.ranks.clone()))
    });
    let Some((dir, ranks)) = dir else {
        if rank == 0 {
            eprintln!("ringbench: interrupted by signal {sig} before any results were written");
        }
        return code;
    };
    if rank != 0 {
        // mpirun ends the whole job as soon as one process exits with an error: stay until rank 0
        // has written the summary (or a bounded while, if rank 0 never does).
        let deadline = Instant::now() + 3 * WAIT_FOR_RANKS;
        while Instant::now() < deadline && !["summary.csv", "summary-partial.csv"].iter().any(|f| dir.join(f).exists()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return code;
    }
    {
        // The other ranks got the same signal; give their files a moment to land.
        let deadline = Instant::now() + WAIT_FOR_RANKS;
        while Instant::now() < deadline && !ranks.iter().all(|&r| settled(&dir, r)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let complete = ranks.iter().all(|&r| settled(&dir, r));
        match reduce::reduce_into(std::slice::from_ref(&dir), &dir, !complete) {
            Ok(_) => eprintln!(
                "ringbench: interrupted by signal {sig}: the iterations done so far are in {} (marked interrupted{})",
                dir.display(),
                if complete { "" } else { "; some ranks' files were missing, so the tables are *-partial.csv" }
            ),
            Err(e) => {
                eprintln!("ringbench: interrupted by signal {sig}: rank files are in {}, but reducing them failed: {e:#}", dir.display())
            }
        }
    }
    code
}

/// Whether rank `r`'s file exists and holds no run still marked running.
fn settled(dir: &std::path::Path, r: usize) -> bool {
    rankfile::read(&rankfile::rank_file(dir, r)).is_ok_and(|runs| runs.iter().all(|x| x.status != "running"))
}
