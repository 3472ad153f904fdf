//! Where a strategy run stands, in one vocabulary for rank files, tables and the console.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// In progress: a rank file checkpointed while its process runs.
    Running,
    /// Stopped before its last iteration (a signal, an abort, or a process that is gone).
    Interrupted,
    /// Every iteration done and written.
    Complete,
    /// Tables only: some rank was interrupted.
    Incomplete,
    /// Tables only: some rank's file is missing or damaged (`reduce --partial`).
    Partial,
    /// Tables only: the result is physically impossible (above the hardware's bound); the reason
    /// is in its row.
    Invalid,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Complete => "complete",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Partial => "partial",
            RunStatus::Invalid => "invalid",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        [RunStatus::Running, RunStatus::Interrupted, RunStatus::Complete, RunStatus::Incomplete, RunStatus::Partial, RunStatus::Invalid]
            .into_iter()
            .find(|v| v.name() == s)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ["running", "interrupted", "complete", "incomplete", "partial", "invalid"] {
            assert_eq!(RunStatus::parse(s).unwrap().name(), s);
        }
        assert_eq!(RunStatus::parse("done"), None);
    }
}
