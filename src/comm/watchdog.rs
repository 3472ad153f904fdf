//! A watchdog over communication: every call of the wrapped communicator is registered while it
//! runs, and a monitor thread ends the whole job if one runs longer than the timeout, naming the
//! rank, host, operation, peer and size. During the timed iterations (a phase is set) it also
//! watches the time a rank spends outside any call: a rank that stops making progress there (a
//! hung kernel, a stuck host) reports itself as the one that stalled, with what it was doing, while
//! the ranks waiting for it report their wait and give it a moment to speak before they abort. A
//! dead or stalled peer then costs at most the timeout and a few seconds, never the rest of an
//! allocation.

use super::{Communicator, HostCollectives};
use crate::backend::{Backend, Matrix};
use anyhow::Result;
use half::bf16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The call in flight on this rank.
#[derive(Clone, Debug)]
struct InFlight {
    op: &'static str,
    peer: Option<usize>,
    bytes: u64,
    since: Instant,
}

#[derive(Debug)]
struct Activity {
    call: Option<InFlight>,
    /// What the rank does between calls, while it is watched there.
    phase: Option<String>,
    /// When the last call ended (or the phase began).
    idle_since: Instant,
}

/// Why the watchdog ends the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Overrun {
    /// This rank has waited in a call past the timeout: some peer stalled or died.
    Waiting(String),
    /// This rank spent the timeout outside any call during a watched phase: it is the one that stalled.
    Stalled(String),
}

impl Overrun {
    pub fn report(&self) -> &str {
        match self {
            Overrun::Waiting(r) | Overrun::Stalled(r) => r,
        }
    }
}

/// What to do when the watchdog fires: report, save, and end the job.
pub type OnTimeout = Box<dyn Fn(&Overrun) + Send + Sync>;

pub struct Watchdog {
    current: Mutex<Activity>,
    timeout: Duration,
    who: String,
}

impl Watchdog {
    /// Start the monitor thread. `who` names this rank in reports ("rank 3 on host gpu-07").
    pub fn start(timeout: Duration, who: String, on_timeout: OnTimeout) -> Arc<Watchdog> {
        let dog =
            Arc::new(Watchdog { current: Mutex::new(Activity { call: None, phase: None, idle_since: Instant::now() }), timeout, who });
        let watched = Arc::downgrade(&dog);
        let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("ringbench-watchdog".into())
            .spawn(move || {
                while let Some(dog) = watched.upgrade() {
                    if let Some(overrun) = dog.overrun() {
                        on_timeout(&overrun);
                        return;
                    }
                    drop(dog);
                    std::thread::sleep(tick);
                }
            })
            .expect("spawning the watchdog thread");
        dog
    }

    /// The report for a call, or a watched stretch outside calls, past the timeout, if there is one.
    fn overrun(&self) -> Option<Overrun> {
        let a = self.current.lock().ok()?;
        let limit = self.timeout.as_secs_f64();
        if let Some(cur) = &a.call {
            let waited = cur.since.elapsed();
            let peer = cur.peer.map(|p| format!(" with rank {p}")).unwrap_or_default();
            return (waited > self.timeout).then(|| {
                Overrun::Waiting(format!(
                    "{}: watchdog: {}{peer} ({} bytes) has not completed after {:.1} s (--comm-timeout {limit} s): a peer has stalled or died",
                    self.who,
                    cur.op,
                    cur.bytes,
                    waited.as_secs_f64(),
                ))
            });
        }
        let phase = a.phase.as_ref()?;
        let idle = a.idle_since.elapsed();
        (idle > self.timeout).then(|| {
            Overrun::Stalled(format!(
                "{}: watchdog: this rank has stalled: no communication for {:.1} s during {phase} (--comm-timeout {limit} s), while its peers wait for it",
                self.who,
                idle.as_secs_f64(),
            ))
        })
    }

    /// Run `f` as the call in flight: one that overruns the timeout is reported and ends the job.
    /// A call may run inside another's overlapped compute (the double ring's inner steps inside
    /// an outer exchange): when it ends, the call around it is in flight again.
    pub fn guard<T>(&self, op: &'static str, peer: Option<usize>, bytes: u64, f: impl FnOnce() -> T) -> T {
        let around = self.current.lock().ok().and_then(|mut a| a.call.replace(InFlight { op, peer, bytes, since: Instant::now() }));
        let r = f();
        if let Ok(mut a) = self.current.lock() {
            a.call = around;
            if a.call.is_none() {
                a.idle_since = Instant::now();
            }
        }
        r
    }

    /// Watch the time outside calls during `phase` (None: stop watching it).
    pub fn set_phase(&self, phase: Option<String>) {
        if let Ok(mut a) = self.current.lock() {
            a.phase = phase;
            a.idle_since = Instant::now();
        }
    }
}

/// A communicator whose every call the watchdog times. Its reports name peers by their rank in
/// the job, whatever group the call runs in.
pub struct Watched<C> {
    inner: C,
    dog: Arc<Watchdog>,
    /// The job rank of each member, by rank in this communicator.
    job_ranks: Arc<Vec<usize>>,
}

impl<C: HostCollectives> Watched<C> {
    /// A group split from this communicator, watched by the same dog. Each member's job rank is
    /// learnt once per group (one small reduction per member), so that a report from inside the
    /// group names the rank a reader can find in the job.
    fn watch_group(&self, inner: C) -> Result<Self> {
        let me = self.job_rank(self.inner.rank());
        let mut job_ranks = Vec::with_capacity(inner.size());
        for r in 0..inner.size() {
            let mine = if inner.rank() == r { me as f64 } else { -1.0 };
            job_ranks.push(self.dog.guard("split", None, 8, || inner.max_f64(mine))? as usize);
        }
        Ok(Watched { inner, dog: self.dog.clone(), job_ranks: Arc::new(job_ranks) })
    }

    /// `inner` spans the job: its ranks are the job's.
    pub fn new(inner: C, dog: Arc<Watchdog>) -> Self {
        let job_ranks = Arc::new((0..inner.size()).collect());
        Watched { inner, dog, job_ranks }
    }

    /// The job rank of member `r` of this communicator.
    fn job_rank(&self, r: usize) -> usize {
        self.job_ranks.get(r).copied().unwrap_or(r)
    }
}

fn bytes<M: Matrix>(x: &M) -> u64 {
    2 * x.len() as u64
}

impl<C: HostCollectives> HostCollectives for Watched<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn barrier(&self) -> Result<()> {
        self.dog.guard("barrier", None, 0, || self.inner.barrier())
    }

    fn max_f64(&self, x: f64) -> Result<f64> {
        self.dog.guard("all_reduce(max)", None, 8, || self.inner.max_f64(x))
    }

    fn all_agree(&self, ok: bool) -> Result<bool> {
        self.dog.guard("all_reduce(agree)", None, 4, || self.inner.all_agree(ok))
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let n = data.len() as u64;
        self.dog.guard("broadcast", Some(self.job_rank(0)), n, || self.inner.broadcast_bytes(data))
    }

    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>> {
        self.dog.guard("gather", Some(self.job_rank(0)), 2 * data.len() as u64, || self.inner.gather_to_root(data))
    }

    fn guard_wait(&self, what: &'static str, wait: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.dog.guard(what, None, 0, || self.inner.guard_wait(what, wait))
    }

    fn set_phase(&self, phase: Option<String>) {
        self.dog.set_phase(phase)
    }
}

impl<B: Backend, C: Communicator<B>> Communicator<B> for Watched<C> {
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        let inner = self.dog.guard("split", None, 0, || self.inner.split(color, key))?;
        self.watch_group(inner)
    }

    fn split_own_lane(&self, color: usize, key: usize) -> Result<Self> {
        let inner = self.dog.guard("split", None, 0, || self.inner.split_own_lane(color, key))?;
        self.watch_group(inner)
    }

    fn all_reduce_sum(&self, x: &mut B::Act) -> Result<()> {
        let n = bytes(x);
        self.dog.guard("all_reduce", None, n, || self.inner.all_reduce_sum(x))
    }

    fn all_reduce_acc(&self, x: &mut B::Acc) -> Result<()> {
        let n = (x.len() * std::mem::size_of::<f32>()) as u64;
        self.dog.guard("all_reduce (FP32)", None, n, || self.inner.all_reduce_acc(x))
    }

    fn overlaps_reductions(&self) -> bool {
        self.inner.overlaps_reductions()
    }

    fn start_all_reduce_accs(&self, xs: &mut [&mut B::Acc]) -> Result<()> {
        let n = xs.iter().map(|x| (x.len() * std::mem::size_of::<f32>()) as u64).sum();
        self.dog.guard("all_reduce (FP32 gradients)", None, n, || self.inner.start_all_reduce_accs(xs))
    }

    fn finish_reductions(&self) -> Result<()> {
        self.dog.guard("all_reduce (FP32 gradients), waiting", None, 0, || self.inner.finish_reductions())
    }

    fn reduce_scatter_acc(&self, send: &B::Acc, recv: &mut B::Acc) -> Result<()> {
        let n = (send.len() * std::mem::size_of::<f32>()) as u64;
        self.dog.guard("reduce_scatter (FP32)", None, n, || self.inner.reduce_scatter_acc(send, recv))
    }

    fn send(&self, x: &B::Act, to: usize) -> Result<()> {
        self.dog.guard("send", Some(self.job_rank(to)), bytes(x), || self.inner.send(x, to))
    }

    fn recv(&self, x: &mut B::Act, from: usize) -> Result<()> {
        let n = bytes(x);
        self.dog.guard("recv", Some(self.job_rank(from)), n, || self.inner.recv(x, from))
    }

    /// The overlapped compute runs inside the call, so it counts towards the timeout: the timeout
    /// is meant to be generous against a whole ring step.
    fn exchange(&self, send: &B::Act, to: usize, recv: &mut B::Act, from: usize, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let n = bytes(send);
        self.dog.guard("ring exchange", Some(self.job_rank(from)), n, || self.inner.exchange(send, to, recv, from, overlap))
    }

    fn all_gather(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        let n = bytes(recv);
        self.dog.guard("all_gather", None, n, || self.inner.all_gather(send, recv))
    }

    fn all_to_all(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        let n = bytes(send);
        self.dog.guard("all_to_all", None, n, || self.inner.all_to_all(send, recv))
    }

    fn take_device_times(&self) -> Result<Option<super::DeviceCommTimes>> {
        self.inner.take_device_times()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::comm::local::LocalComm;
    use std::sync::mpsc;

    #[test]
    fn a_call_that_overruns_is_reported_with_operation_and_peer() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let dog = Watchdog::start(
            Duration::from_millis(100),
            "rank 1 on host h".into(),
            Box::new(move |r| tx.lock().unwrap().send(r.report().to_string()).unwrap()),
        );
        let mut comms = LocalComm::world(2);
        let c1 = Watched::new(comms.pop().unwrap(), dog);
        let _c0 = comms.pop().unwrap(); // rank 0 never sends
        let be = CpuBackend::new();
        let mut x = crate::backend::Backend::alloc_act(&be, 1, 8).unwrap();
        // The receive waits on LocalComm's own 60 s deadline; the watchdog speaks long before.
        std::thread::spawn(move || {
            let _ = Communicator::<CpuBackend>::recv(&c1, &mut x, 0);
        });
        let report = rx.recv_timeout(Duration::from_secs(10)).expect("the watchdog reports");
        assert!(report.contains("rank 1 on host h: watchdog: recv with rank 0 (16 bytes)"), "{report}");
    }

    /// Hardening round 2, defect 11: inside a group split from the job (usp's and tp-cp's), a
    /// report names the peer's rank in the job, not its rank in the group.
    #[test]
    fn a_report_from_inside_a_group_names_the_peers_job_rank() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        // One watchdog per rank, as each process has; rank 1's reports.
        let mut rank1 = Some(Watchdog::start(
            Duration::from_millis(200),
            "rank 1 on host h".into(),
            Box::new(move |r| tx.lock().unwrap().send(r.report().to_string()).unwrap()),
        ));
        // Four ranks, groups {0, 2} and {1, 3} (as a ring over groups of two): rank 1 waits on
        // its group's other member, job rank 3, which never sends.
        let handles: Vec<_> = LocalComm::world(4)
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let dog = if r == 1 {
                    rank1.take().unwrap()
                } else {
                    Watchdog::start(Duration::from_secs(600), format!("rank {r}"), Box::new(|_| {}))
                };
                std::thread::spawn(move || {
                    let w = Watched::new(c, dog);
                    let g = Communicator::<CpuBackend>::split(&w, r % 2, r / 2).unwrap();
                    assert_eq!(*g.job_ranks, vec![r % 2, r % 2 + 2]);
                    if r == 1 {
                        let be = CpuBackend::new();
                        let mut x = crate::backend::Backend::alloc_act(&be, 1, 8).unwrap();
                        let _ = Communicator::<CpuBackend>::recv(&g, &mut x, 1);
                    }
                })
            })
            .collect();
        let report = rx.recv_timeout(Duration::from_secs(20)).expect("the watchdog reports");
        assert!(report.contains("watchdog: recv with rank 3 (16 bytes)"), "{report}");
        drop(handles);
    }

    #[test]
    fn calls_that_complete_are_not_reported() {
        let (tx, rx) = mpsc::channel::<String>();
        let tx = Mutex::new(tx);
        let dog = Watchdog::start(
            Duration::from_millis(50),
            "r".into(),
            Box::new(move |r| tx.lock().unwrap().send(r.report().to_string()).unwrap()),
        );
        let c = Watched::new(LocalComm::world(1).pop().unwrap(), dog);
        for _ in 0..5 {
            c.barrier().unwrap();
            std::thread::sleep(Duration::from_millis(30)); // compute between calls is not watched
        }
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_rank_stuck_outside_calls_in_a_watched_phase_names_itself() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let dog = Watchdog::start(
            Duration::from_millis(100),
            "rank 2 on host h".into(),
            Box::new(move |r| tx.lock().unwrap().send(r.clone()).unwrap()),
        );
        let c = Watched::new(LocalComm::world(1).pop().unwrap(), dog);
        c.set_phase(Some("iteration 3 of ring (measured)".into()));
        c.barrier().unwrap();
        // No call for longer than the timeout, as a hung kernel would leave it.
        let r = rx.recv_timeout(Duration::from_secs(10)).expect("the watchdog reports");
        match r {
            Overrun::Stalled(report) => assert!(
                report.contains("rank 2 on host h: watchdog: this rank has stalled")
                    && report.contains("during iteration 3 of ring (measured)"),
                "{report}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
