//! What this rank has measured so far, kept where a signal, the watchdog or a panic can reach it.
//! The launcher makes one `Journal` and hands it to the harness (which records into it), to the
//! signal thread, to the watchdog and to the abort paths (which save it before the job ends).
//!
//! SIGTERM (SLURM's time limit, mpirun passing on a kill) and SIGINT are handled on a thread of
//! their own: it writes this rank's file at once with the run in progress marked `interrupted`,
//! rank 0 then waits a moment for the other ranks' files and writes the summary (marked
//! incomplete), and the process exits with 128 + the signal. It does not wait for the iteration
//! in flight: mpirun follows SIGTERM with SIGKILL after one second by default (SLURM after
//! KillWait, 30 s by default). Against a kill without warning (SIGKILL, the OOM killer, a lost
//! node) the harness also writes a checkpoint of the file at most once a second during a run,
//! marked `running` with this process's id and the checkpoint's time: a reader on the same host
//! can tell a live run from one whose process is gone (`output::reduce`).

use crate::output::rankfile::{self, RankRun};
use crate::output::reduce;
use crate::output::status::RunStatus;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

struct State {
    dir: PathBuf,
    rank: usize,
    /// The ranks whose files make the run whole: every rank of the world, or an emulated rank alone.
    ranks: Vec<usize>,
    /// Strategy runs of this launch; the last one may be in progress (status Running).
    runs: Vec<RankRun>,
}

/// A handle to this rank's record of the launch; clones share it.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Option<State>>>);

/// How long rank 0 waits for the other ranks' interrupted files before reducing what it has.
const WAIT_FOR_RANKS: Duration = Duration::from_millis(700);

/// How often, at most, a running strategy's file is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How long a save on the way out may wait for the journal (held by a thread that may itself be stuck).
const SAVE_WAIT: Duration = Duration::from_secs(2);

impl Journal {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, record into `dir`'s file of `rank`; `ranks` are the files that make the run whole.
    pub fn open(&self, dir: PathBuf, rank: usize, ranks: Vec<usize>) {
        *self.lock() = Some(State { dir, rank, ranks, runs: Vec::new() });
    }

    /// A strategy run starts (status Running).
    pub fn begin_run(&self, run: RankRun) {
        if let Some(s) = self.lock().as_mut() {
            s.runs.push(run);
        }
    }

    /// After each iteration: the memory high-water marks so far, and for a measured one its record
    /// and the FLOPs the backend counted in it.
    /// Once the run is marked interrupted (a signal, an abort), its file is final: nothing more
    /// is recorded, so the tables made from it stay true.
    pub fn record(
        &self,
        memory: crate::backend::MemoryStats,
        iteration: Option<(crate::metrics::IterationRecord, crate::metrics::flops::Flops, Option<crate::metrics::DecodeRecord>)>,
    ) {
        if let Some(run) = self.lock().as_mut().and_then(|s| s.runs.last_mut()).filter(|r| r.status == RunStatus::Running) {
            run.memory = memory;
            if let Some((record, counted, decode)) = iteration {
                run.iterations.push(record);
                run.counted_flops = Some(counted);
                run.decode.extend(decode);
            }
        }
    }

    pub fn set_op_profile(&self, p: crate::metrics::OpProfile) {
        if let Some(run) = self.lock().as_mut().and_then(|s| s.runs.last_mut()) {
            run.op_profile = Some(p);
        }
    }

    pub fn set_gpu_util(&self, u: crate::metrics::gpu_util::GpuUtilization) {
        if let Some(run) = self.lock().as_mut().and_then(|s| s.runs.last_mut()) {
            run.gpu_util = Some(u);
        }
    }

    /// The run in progress is done: mark it complete and write the file.
    pub fn finish_run(&self, memory: crate::backend::MemoryStats) -> anyhow::Result<()> {
        let mut g = self.lock();
        let s = g.as_mut().ok_or_else(|| anyhow::anyhow!("no results directory is open"))?;
        let last = s.runs.last_mut().ok_or_else(|| anyhow::anyhow!("no strategy run in progress"))?;
        if last.status != RunStatus::Running {
            return Ok(()); // interrupted meanwhile: that file is final
        }
        (last.status, last.end_utc, last.memory) = (RunStatus::Complete, rankfile::utc_now(), memory);
        rankfile::write(&s.dir, s.rank, &s.runs).map(|_| ())
    }

    /// Write this rank's file as it stands, the run in progress marked running at this time, if
    /// the last checkpoint is older than CHECKPOINT_EVERY (`last` tracks it).
    pub fn checkpoint(&self, last: &mut Instant) -> anyhow::Result<()> {
        if last.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        *last = Instant::now();
        let mut g = self.lock();
        let Some(s) = g.as_mut() else { return Ok(()) };
        let Some(run) = s.runs.last_mut().filter(|r| r.status == RunStatus::Running) else { return Ok(()) };
        run.end_utc = rankfile::utc_now(); // while running: the time of the last checkpoint
        rankfile::write(&s.dir, s.rank, &s.runs).map(|_| ())
    }

    /// Mark the run in progress interrupted and write the file; the run directory and the ranks
    /// that make it whole, if a directory was open.
    fn save_interrupted(s: &mut State) -> (PathBuf, Vec<usize>, anyhow::Result<()>) {
        if let Some(last) = s.runs.last_mut().filter(|r| r.status == RunStatus::Running) {
            last.status = RunStatus::Interrupted;
            last.end_utc = rankfile::utc_now();
        }
        let written = rankfile::write(&s.dir, s.rank, &s.runs).map(|_| ());
        (s.dir.clone(), s.ranks.clone(), written)
    }

    /// On the way out of a failing job (watchdog, error, panic): save what was measured, waiting
    /// at most SAVE_WAIT for the journal, and say where it is or why it is not.
    pub fn save_before_abort(&self, who: &str) {
        let deadline = Instant::now() + SAVE_WAIT;
        let mut g = loop {
            match self.0.try_lock() {
                Ok(g) => break g,
                Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(TryLockError::WouldBlock) => {
                    crate::console::say(&format!("ringbench: {who}: its results could not be saved (the journal stayed busy)"));
                    return;
                }
            }
        };
        let Some(s) = g.as_mut() else { return };
        match Self::save_interrupted(s) {
            (dir, _, Ok(())) => crate::console::say(&format!(
                "ringbench: {who}: saved its iterations so far in {} (marked interrupted)",
                rankfile::rank_file(&dir, s.rank).display()
            )),
            (_, _, Err(e)) => crate::console::say(&format!("ringbench: {who}: saving its results failed: {e:#}")),
        }
    }
}

/// Handle SIGTERM / SIGINT for the rest of the process's life.
pub fn install_signal_thread(journal: Journal, rank: usize, host: String) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("ringbench-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let code = on_signal(&journal, sig, rank, &host);
            std::process::exit(code);
        }
    })?;
    Ok(())
}

/// Keep what was measured; returns the exit status.
fn on_signal(journal: &Journal, sig: i32, rank: usize, host: &str) -> i32 {
    let code = 128 + sig;
    let saved = journal.lock().as_mut().map(Journal::save_interrupted);
    let Some((dir, ranks, written)) = saved else {
        if rank == 0 {
            eprintln!("ringbench: interrupted by signal {sig} before any results were written");
        }
        return code;
    };
    if let Err(e) = written {
        crate::console::say(&format!(
            "ringbench: rank {rank} on host {host}: interrupted by signal {sig}, and writing its results failed: {e:#}"
        ));
    }
    if rank != 0 {
        // mpirun ends the whole job as soon as one process exits with an error: stay until rank 0
        // has written the summary (or a bounded while, if rank 0 never does).
        let deadline = Instant::now() + 3 * WAIT_FOR_RANKS;
        while Instant::now() < deadline && !["summary.csv", "summary-partial.csv"].iter().any(|f| dir.join(f).exists()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return code;
    }
    // The other ranks got the same signal; give their files a moment to land.
    let deadline = Instant::now() + WAIT_FOR_RANKS;
    while Instant::now() < deadline && !ranks.iter().all(|&r| settled(&dir, r)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let complete = ranks.iter().all(|&r| settled(&dir, r));
    match reduce::reduce_into(std::slice::from_ref(&dir), &dir, reduce::ReduceOptions { partial: !complete, owner: true }) {
        Ok(_) => eprintln!(
            "ringbench: interrupted by signal {sig}: the iterations done so far are in {} (marked interrupted{})",
            dir.display(),
            // Said only where the partial tables were written, which reduce decides.
            if dir.join("summary-partial.csv").exists() { "; some ranks' files were missing, so the tables are *-partial.csv" } else { "" }
        ),
        Err(e) => eprintln!("ringbench: interrupted by signal {sig}: rank files are in {}, but reducing them failed: {e:#}", dir.display()),
    }
    code
}

/// Whether rank `r`'s file exists and holds no run still marked running.
fn settled(dir: &std::path::Path, r: usize) -> bool {
    rankfile::read(&rankfile::rank_file(dir, r)).is_ok_and(|runs| runs.iter().all(|x| x.status != RunStatus::Running))
}
