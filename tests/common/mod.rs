//! Launching the ringbench binary under `mpirun` on loopback, one launch at a time.

use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Launches are serialised: with 2 cores, parallel mpiruns of 8 ranks would only slow each other.
static MPI: Mutex<()> = Mutex::new(());

/// Upper bound on one launch; a hang fails the test instead of stalling the suite.
pub const LAUNCH_TIMEOUT_S: u32 = 180;

/// The `cpu` hardware profile with the rates no calibration measures given, for plans calibrated
/// from CPU runs (a CPU run into a GPU profile is refused).
#[allow(dead_code)]
pub const CPU_PROFILE: &[&str] =
    &["--hardware", "cpu", "--peak-tflops", "989", "--hbm-tbps", "0.02", "--memory-gib", "16", "--ib-gbps", "50"];

#[allow(dead_code)] // each test file reads the fields it needs
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A new empty directory for one test's results (removed first if a previous run left it).
#[allow(dead_code)] // not every test file writes results
pub fn temp_root(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringbench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Hold the launch lock while driving an mpirun by hand.
#[allow(dead_code)] // not every test file drives mpirun by hand
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    MPI.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun --oversubscribe -np N ringbench`, for a test that drives the launch by hand (spawns,
/// signals, waits); hold `lock()` while it runs.
#[allow(dead_code)] // not every test file drives mpirun by hand
pub fn mpirun_command(np: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &np.to_string(), env!("CARGO_BIN_EXE_ringbench")])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

/// `mpirun --oversubscribe -np N ringbench ARGS...`, under `timeout`.
#[allow(dead_code)] // not every test file launches without extra environment
pub fn mpirun(np: usize, args: &[&str]) -> Run {
    mpirun_with(np, args, &[], None)
}

/// `mpirun` with extra environment for the ranks, and optionally SIGTERM sent to mpirun after
/// `term_after_s` seconds (as SLURM's time limit would).
pub fn mpirun_with(np: usize, args: &[&str], env: &[(&str, &str)], term_after_s: Option<u32>) -> Run {
    let _guard = MPI.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("timeout");
    match term_after_s {
        // --foreground: one SIGTERM to mpirun only. Without it timeout also signals its process
        // group, mpirun gets a second SIGTERM, and Open MPI takes a second signal as "kill all now".
        Some(t) => cmd.args(["--foreground", "-s", "TERM", "-k", "60", &t.to_string()]),
        None => cmd.arg(LAUNCH_TIMEOUT_S.to_string()),
    };
    cmd.args(["mpirun", "--oversubscribe", "-np", &np.to_string()])
        // Shared memory within the node; no single-copy mechanism, which containers often forbid.
        .args(["--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"]);
    if np == 1 && term_after_s.is_none() {
        // A lone rank that exits non-zero leaves no other rank to stop, yet mpirun would still
        // wait out its SIGTERM-to-SIGKILL grace (2 s a launch). With other ranks, or a signal to
        // pass on, the grace stays: ranks need it to finish writing.
        cmd.args(["--mca", "odls_base_sigkill_timeout", "0"]);
    }
    cmd.args(env.iter().flat_map(|(k, _)| ["-x", k]))
        .envs(env.iter().copied())
        .arg(env!("CARGO_BIN_EXE_ringbench"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    let t0 = Instant::now();
    let Output { status, stdout, stderr } = cmd.output().expect("mpirun and timeout are installed");
    let run = Run {
        status: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
        elapsed: t0.elapsed(),
    };
    if term_after_s.is_none() {
        assert_ne!(run.status, Some(124), "mpirun -np {np} {args:?} hung for {LAUNCH_TIMEOUT_S} s:\n{}", run.all());
    }
    run
}

/// The numbers of a verify line such as `  ring vs reference:  rel L2 1.2e-3   max abs 4.5e-3`.
#[allow(dead_code)] // not every test file parses verify output
pub fn parse_errors(out: &str, label: &str) -> (f64, f64) {
    let line = out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no line {label:?} in:\n{out}"));
    let nums: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(nums.len() >= 2, "{line}");
    (nums[nums.len() - 2], nums[nums.len() - 1])
}
