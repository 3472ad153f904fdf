//! Fault injection for tests of the failure paths: `RINGBENCH_FAULT=rank:K,iter:I,kind:panic|error|stall`
//! makes rank K fail that way when it reaches iteration I (counting warm-up and measured iterations
//! from 0) of each strategy run.

use crate::config::ConfigError;
use anyhow::{bail, Result};

pub const ENV: &str = "RINGBENCH_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Panic,
    Error,
    /// Stop making progress (as a hung GPU or a dead link would), without exiting.
    Stall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub rank: usize,
    pub iter: usize,
    pub kind: FaultKind,
}

impl Fault {
    /// The fault the environment asks for, if any; a malformed spec is bad input.
    pub fn from_env() -> Result<Option<Fault>, ConfigError> {
        match std::env::var(ENV) {
            Ok(spec) if !spec.is_empty() => Fault::parse(&spec).map(Some),
            _ => Ok(None),
        }
    }

    pub fn parse(spec: &str) -> Result<Fault, ConfigError> {
        let bad = || ConfigError(format!("{ENV}={spec:?}: expected rank:K,iter:I,kind:panic|error|stall"));
        let (mut rank, mut iter, mut kind) = (None, None, None);
        let mut seen = Vec::new();
        for part in spec.split(',') {
            let key = part.split_once(':').ok_or_else(bad)?.0;
            if seen.contains(&key) {
                return Err(ConfigError(format!("{ENV}={spec:?}: {key} is given twice; each of rank, iter and kind once")));
            }
            seen.push(key);
            match part.split_once(':').ok_or_else(bad)? {
                ("rank", v) => rank = Some(v.parse().map_err(|_| bad())?),
                ("iter", v) => iter = Some(v.parse().map_err(|_| bad())?),
                ("kind", "panic") => kind = Some(FaultKind::Panic),
                ("kind", "error") => kind = Some(FaultKind::Error),
                ("kind", "stall") => kind = Some(FaultKind::Stall),
                _ => return Err(bad()),
            }
        }
        Ok(Fault { rank: rank.ok_or_else(bad)?, iter: iter.ok_or_else(bad)?, kind: kind.ok_or_else(bad)? })
    }

    /// Refuse a fault that could never strike: a rank outside the job, or an iteration past the
    /// last (`iterations` = warm-up + measured), so that a test of a failure path cannot pass
    /// by testing nothing.
    pub fn check(&self, spec: &str, world: usize, iterations: usize) -> Result<(), ConfigError> {
        if self.rank >= world {
            return Err(ConfigError(format!("{ENV}={spec:?}: rank {} does not exist in a job of {world} ranks", self.rank)));
        }
        if self.iter >= iterations {
            return Err(ConfigError(format!(
                "{ENV}={spec:?}: iteration {} is never reached (warm-up and measured iterations are 0 .. {})",
                self.iter,
                iterations - 1
            )));
        }
        Ok(())
    }

    /// Fail as asked if this is the rank and iteration.
    pub fn strike(fault: Option<Fault>, rank: usize, iter: usize) -> Result<()> {
        let Some(f) = fault.filter(|f| f.rank == rank && f.iter == iter) else {
            return Ok(());
        };
        match f.kind {
            FaultKind::Panic => panic!("injected fault ({ENV}): panic at iteration {iter}"),
            FaultKind::Error => bail!("injected fault ({ENV}): error at iteration {iter}"),
            FaultKind::Stall => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!(Fault::parse("rank:2,iter:1,kind:stall").unwrap(), Fault { rank: 2, iter: 1, kind: FaultKind::Stall });
        assert_eq!(Fault::parse("kind:panic,rank:0,iter:0").unwrap().kind, FaultKind::Panic);
        for bad in ["rank:2", "rank:x,iter:1,kind:error", "rank:1,iter:1,kind:crash", "garbage"] {
            assert!(Fault::parse(bad).unwrap_err().0.contains("expected rank:K,iter:I,kind:"), "{bad}");
        }
        let f = Fault { rank: 1, iter: 3, kind: FaultKind::Error };
        assert!(f.check("s", 2, 4).is_ok());
        assert!(f.check("s", 1, 4).unwrap_err().0.contains("rank 1 does not exist in a job of 1 ranks"));
        assert!(f.check("s", 2, 3).unwrap_err().0.contains("iteration 3 is never reached (warm-up and measured iterations are 0 .. 2)"));
        assert!(Fault::strike(Some(Fault { rank: 1, iter: 3, kind: FaultKind::Error }), 1, 2).is_ok());
        assert!(Fault::strike(Some(Fault { rank: 1, iter: 3, kind: FaultKind::Error }), 1, 3).is_err());
    }
}
