//! A communicator that times and counts every call it forwards: the measurement protocol's
//! communication time and bytes, implemented once for every transport. Time spent in `exchange`
//! running the overlapped compute is compute, not communication; what remains of the call is the
//! transfer time the compute did not hide.

use super::{Communicator, HostCollectives};
use crate::backend::{Backend, Matrix};
use anyhow::Result;
use half::bf16;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// Bytes per BF16 activation element.
const ACT_BYTES: u64 = 2;

#[derive(Default, Debug)]
pub struct Counters {
    comm_s: Cell<f64>,
    sent: Cell<u64>,
    received: Cell<u64>,
    /// The host-timed seconds since the last phase's take.
    phase_s: Cell<f64>,
    /// Device times (exposed, hidden) taken for phases since the last iteration's take: the
    /// iteration's own take adds them back.
    taken: Cell<(f64, f64)>,
}

impl Counters {
    /// (communication seconds, bytes sent, bytes received) since the last take, and reset.
    pub fn take(&self) -> (f64, u64, u64) {
        self.phase_s.set(0.0);
        (self.comm_s.replace(0.0), self.sent.replace(0), self.received.replace(0))
    }

    fn add(&self, seconds: f64, sent: u64, received: u64) {
        self.phase_s.set(self.phase_s.get() + seconds);
        self.comm_s.set(self.comm_s.get() + seconds);
        self.sent.set(self.sent.get() + sent);
        self.received.set(self.received.get() + received);
    }
}

/// Wraps a communicator; groups split from it share its counters.
pub struct Metered<C> {
    inner: C,
    counters: Rc<Counters>,
}

impl<C> Metered<C> {
    pub fn new(inner: C) -> Self {
        Metered { inner, counters: Rc::new(Counters::default()) }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// One iteration's communication, once the device is synchronised: (exposed seconds, hidden
    /// seconds, bytes sent, bytes received), and the counters reset. Device-timed transports
    /// give the times; otherwise the host's clock around each call gives the exposed time, and
    /// nothing is hidden (see `Communicator::take_device_times`).
    pub fn take_iteration<B: Backend>(&self) -> Result<(f64, f64, u64, u64)>
    where
        C: Communicator<B>,
    {
        let (host_s, sent, received) = self.counters.take();
        let (exposed, hidden) = self.counters.taken.replace((0.0, 0.0));
        Ok(match self.inner.take_device_times()? {
            Some(t) => (t.exposed_s + exposed, t.hidden_s + hidden, sent, received),
            None => (host_s, 0.0, sent, received),
        })
    }

    /// The unmetered communicator, for the harness's own synchronisation.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn timed<T>(&self, sent: u64, received: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        let r = f();
        self.counters.add(t0.elapsed().as_secs_f64(), sent, received);
        r
    }
}

fn bytes<M: Matrix>(x: &M) -> u64 {
    x.len() as u64 * ACT_BYTES
}

impl<C: HostCollectives> HostCollectives for Metered<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn barrier(&self) -> Result<()> {
        self.timed(0, 0, || self.inner.barrier())
    }

    fn max_f64(&self, x: f64) -> Result<f64> {
        self.timed(0, 0, || self.inner.max_f64(x))
    }

    fn all_agree(&self, ok: bool) -> Result<bool> {
        self.timed(0, 0, || self.inner.all_agree(ok))
    }

    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>> {
        self.timed(0, 0, || self.inner.gather_to_root(data))
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        self.timed(0, 0, || self.inner.broadcast_bytes(data))
    }

    fn guard_wait(&self, what: &'static str, wait: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.inner.guard_wait(what, wait)
    }
}

impl<B: Backend, C: Communicator<B>> Communicator<B> for Metered<C> {
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        Ok(Metered { inner: self.inner.split(color, key)?, counters: self.counters.clone() })
    }

    fn split_own_lane(&self, color: usize, key: usize) -> Result<Self> {
        Ok(Metered { inner: self.inner.split_own_lane(color, key)?, counters: self.counters.clone() })
    }

    /// Counted as a ring all-reduce moves it: 2 (n - 1) / n of the buffer out and in per rank
    /// (NCCL's bus-bandwidth convention).
    fn all_reduce_sum(&self, x: &mut B::Act) -> Result<()> {
        let n = self.inner.size() as u64;
        let wire = if n > 1 { 2 * (n - 1) * bytes(x) / n } else { 0 };
        self.timed(wire, wire, || self.inner.all_reduce_sum(x))
    }

    fn all_reduce_acc(&self, x: &mut B::Acc) -> Result<()> {
        let n = self.inner.size() as u64;
        let wire = if n > 1 { 2 * (n - 1) * (x.len() * std::mem::size_of::<f32>()) as u64 / n } else { 0 };
        self.timed(wire, wire, || self.inner.all_reduce_acc(x))
    }

    fn overlaps_reductions(&self) -> bool {
        self.inner.overlaps_reductions()
    }

    /// Each buffer's bytes as `all_reduce_acc` counts them.
    fn start_all_reduce_accs(&self, xs: &mut [&mut B::Acc]) -> Result<()> {
        let n = self.inner.size() as u64;
        let bytes: u64 = xs.iter().map(|x| (x.len() * std::mem::size_of::<f32>()) as u64).sum();
        let wire = if n > 1 { 2 * (n - 1) * bytes / n } else { 0 };
        self.timed(wire, wire, || self.inner.start_all_reduce_accs(xs))
    }

    fn finish_reductions(&self) -> Result<()> {
        self.timed(0, 0, || self.inner.finish_reductions())
    }

    /// As a ring moves it: every block but the rank's own leaves it, as many arrive.
    fn reduce_scatter_acc(&self, send: &B::Acc, recv: &mut B::Acc) -> Result<()> {
        let wire = (self.inner.size() as u64 - 1) * (recv.len() * std::mem::size_of::<f32>()) as u64;
        self.timed(wire, wire, || self.inner.reduce_scatter_acc(send, recv))
    }

    fn send(&self, x: &B::Act, to: usize) -> Result<()> {
        self.timed(bytes(x), 0, || self.inner.send(x, to))
    }

    fn recv(&self, x: &mut B::Act, from: usize) -> Result<()> {
        let n = bytes(x);
        self.timed(0, n, || self.inner.recv(x, from))
    }

    fn exchange(&self, send: &B::Act, to: usize, recv: &mut B::Act, from: usize, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let (sent, received) = (bytes(send), bytes(recv));
        let mut compute_s = 0.0;
        let t0 = Instant::now();
        let r = self.inner.exchange(send, to, recv, from, &mut || {
            let t = Instant::now();
            let r = overlap();
            compute_s += t.elapsed().as_secs_f64();
            r
        });
        self.counters.add((t0.elapsed().as_secs_f64() - compute_s).max(0.0), sent, received);
        r
    }

    /// Counted as a ring all-gather moves it: every rank passes on n - 1 blocks and receives
    /// n - 1 (its own block never crosses a link).
    fn all_gather(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        let wire = (self.inner.size() as u64 - 1) * bytes(send);
        self.timed(wire, wire, || self.inner.all_gather(send, recv))
    }

    /// Every block but the rank's own leaves it, and every block but its own arrives.
    fn all_to_all(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        let n = self.inner.size() as u64;
        let wire = (n - 1) * bytes(send) / n;
        self.timed(wire, wire, || self.inner.all_to_all(send, recv))
    }

    fn take_device_times(&self) -> Result<Option<super::DeviceCommTimes>> {
        self.inner.take_device_times()
    }

    /// The host's clock around the calls since the last phase, or the device's times of them,
    /// kept for the iteration's take too.
    fn take_phase_times(&self) -> Result<Option<(f64, f64)>> {
        let host = self.counters.phase_s.replace(0.0);
        Ok(Some(match self.inner.take_device_times()? {
            Some(t) => {
                let (e, h) = self.counters.taken.get();
                self.counters.taken.set((e + t.exposed_s, h + t.hidden_s));
                (t.exposed_s, t.hidden_s)
            }
            None => (host, 0.0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::comm::local::LocalComm;

    #[test]
    fn counts_bytes_and_keeps_overlapped_compute_out_of_comm_time() {
        let threads: Vec<_> = LocalComm::world(2)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let be = CpuBackend::new();
                    let comm = Metered::new(c);
                    let peer = 1 - comm.rank();
                    let a = be.alloc_act(3, 4).unwrap();
                    let mut b = be.alloc_act(3, 4).unwrap();
                    comm.exchange(&a, peer, &mut b, peer, &mut || {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        Ok(())
                    })
                    .unwrap();
                    let mut x = be.alloc_act(5, 2).unwrap();
                    Communicator::<CpuBackend>::all_reduce_sum(&comm, &mut x).unwrap();
                    comm.counters().take()
                })
            })
            .collect();
        for t in threads {
            let (s, sent, received) = t.join().unwrap();
            // exchange: 12 BF16 each way; all-reduce of 10 BF16 over 2 ranks: 2 (1/2) 20 B each way.
            assert_eq!((sent, received), (24 + 20, 24 + 20));
            assert!(s < 0.15, "the 200 ms of overlapped compute counted as communication: {s}");
        }
    }
}
