//! The one timing engine (STYLE.md, item 13; nccl-tests' `BenchTime`): every measured thing (a
//! strategy's iteration in `run`, a kernel in `bench attention`, a launch burst in `bench launch`,
//! and the decode and training steps to come) goes through `run` for its warm-up, its timer, its
//! wait for the device and its records. What differs is passed in as a `Timed`.

use crate::backend::Instruments;
use anyhow::Result;
use std::time::Instant;

/// Warm-up iterations (run, not kept), then measured ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub warmup: usize,
    pub iters: usize,
}

/// What one iteration took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The iteration: on the device's own timeline where the backend has one (CUDA events from
    /// before the work to after it, the end after every wait for a transfer), else `host_s`.
    pub seconds: f64,
    /// Host seconds from the start to the end of the wait for the device.
    pub host_s: f64,
    /// Host seconds to queue the work (the start to the end of `work`, before any wait).
    pub queued_s: f64,
}

/// One measured thing, in the engine's four steps.
pub trait Timed {
    /// Before iteration `i` (not timed): a barrier, a reset of accumulators, an injected fault.
    fn before(&mut self, _i: usize, _warm: bool) -> Result<()> {
        Ok(())
    }
    /// The work of iteration `i`: what is timed.
    fn work(&mut self, i: usize) -> Result<()>;
    /// The wait for the device at the end of the iteration, inside the timed span (device work
    /// is asynchronous: the iteration ends when the device is done).
    fn wait(&mut self) -> Result<()>;
    /// After iteration `i` (not timed): what it took, to record or drop.
    fn after(&mut self, i: usize, warm: bool, t: Timing) -> Result<()>;
}

/// `protocol.warmup` warm-up iterations then `protocol.iters` measured ones of `timed`, timed by
/// `be`'s timer where it has one, else by the host's clock.
pub fn run<I: Instruments + ?Sized>(be: &I, protocol: Protocol, timed: &mut dyn Timed) -> Result<()> {
    for i in 0..protocol.warmup + protocol.iters {
        let warm = i < protocol.warmup;
        timed.before(i, warm)?;
        be.timer_start()?;
        let t0 = Instant::now();
        timed.work(i)?;
        let queued_s = t0.elapsed().as_secs_f64();
        be.timer_stop()?;
        timed.wait()?;
        let host_s = t0.elapsed().as_secs_f64();
        let seconds = be.timer_elapsed()?.unwrap_or(host_s);
        timed.after(i, warm, Timing { seconds, host_s, queued_s })?;
    }
    Ok(())
}

/// The measured iterations' timings of `work`, each started on an idle device (`before`, then a
/// wait for the device, untimed) and ended by waiting for it: the protocol of a benchmark of
/// one part alone.
pub fn samples<I: Instruments + ?Sized>(
    be: &I,
    protocol: Protocol,
    before: &mut dyn FnMut() -> Result<()>,
    work: &mut dyn FnMut() -> Result<()>,
    wait: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<Timing>> {
    struct Bench<'a> {
        before: &'a mut dyn FnMut() -> Result<()>,
        work: &'a mut dyn FnMut() -> Result<()>,
        wait: &'a mut dyn FnMut() -> Result<()>,
        kept: Vec<Timing>,
    }
    impl Timed for Bench<'_> {
        fn before(&mut self, _: usize, _: bool) -> Result<()> {
            (self.before)()?;
            (self.wait)()
        }
        fn work(&mut self, _: usize) -> Result<()> {
            (self.work)()
        }
        fn wait(&mut self) -> Result<()> {
            (self.wait)()
        }
        fn after(&mut self, _: usize, warm: bool, t: Timing) -> Result<()> {
            if !warm {
                self.kept.push(t);
            }
            Ok(())
        }
    }
    let mut b = Bench { before, work, wait, kept: Vec::with_capacity(protocol.iters) };
    run(be, protocol, &mut b)?;
    Ok(b.kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn warm_up_runs_unkept_and_each_iteration_is_timed_around_its_work_and_wait() {
        let be = CpuBackend::new();
        let (mut befores, mut works, mut waits) = (0, 0, 0);
        let kept = samples(
            &be,
            Protocol { warmup: 2, iters: 3 },
            &mut || {
                befores += 1;
                Ok(())
            },
            &mut || {
                works += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            },
            &mut || {
                waits += 1;
                Ok(())
            },
        )
        .unwrap();
        // Every iteration runs; only the measured ones are kept. Each waits twice: for an idle
        // device before it (untimed) and for its own work (timed).
        assert_eq!((befores, works, waits, kept.len()), (5, 5, 10, 3));
        for t in kept {
            // The host's clock is the CPU backend's measure, and it spans the work.
            assert!(t.seconds == t.host_s && t.host_s >= t.queued_s && t.queued_s >= 0.002, "{t:?}");
        }
        // A failing step ends the protocol with its error.
        let err =
            samples(&be, Protocol { warmup: 0, iters: 2 }, &mut || Ok(()), &mut || anyhow::bail!("boom"), &mut || Ok(())).unwrap_err();
        assert!(err.to_string().contains("boom"));
    }
}
