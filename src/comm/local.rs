//! An in-process communicator: ranks are threads, messages are queued host buffers. It lets the
//! strategies' communication patterns (ring steps, TP all-reduce, pipeline hand-offs) be unit-tested
//! with sharp synthetic inputs and no MPI. Reductions sum in rank order, so every rank of a group
//! gets bit-identical results, as with MPI's.

use super::{Communicator, HostCollectives};
use crate::backend::cpu::{CpuBackend, HostMat};
use crate::backend::Matrix;
use anyhow::{anyhow, ensure, Result};
use half::bf16;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Msg = Box<dyn Any + Send>;

/// One queue per (source, destination) pair of threads; a message carries its communicator's id.
struct Mesh {
    size: usize,
    queues: Vec<Mutex<VecDeque<(u64, Msg)>>>,
    arrived: Condvar,
}

pub struct LocalComm {
    mesh: Arc<Mesh>,
    id: u64,
    /// Thread index of each rank of this communicator.
    members: Vec<usize>,
    rank: usize,
    /// Splits made from this communicator so far: every rank splits in the same order, so the
    /// count tells two splits with the same colour apart (usp's group and its ring).
    splits_made: std::sync::atomic::AtomicU64,
}

/// How long a receive waits before it reports a deadlock instead of hanging the test.
const RECV_TIMEOUT: Duration = Duration::from_secs(60);

impl LocalComm {
    /// A world of `n` ranks; hand one to each thread.
    pub fn world(n: usize) -> Vec<LocalComm> {
        let mesh = Arc::new(Mesh { size: n, queues: (0..n * n).map(|_| Mutex::new(VecDeque::new())).collect(), arrived: Condvar::new() });
        (0..n)
            .map(|rank| LocalComm { mesh: mesh.clone(), id: 0, members: (0..n).collect(), rank, splits_made: Default::default() })
            .collect()
    }

    fn post<T: Send + 'static>(&self, to: usize, v: T) -> Result<()> {
        ensure!(to < self.members.len(), "rank {to} outside a communicator of {}", self.members.len());
        let q = self.members[self.rank] * self.mesh.size + self.members[to];
        self.mesh.queues[q].lock().map_err(|_| anyhow!("poisoned queue"))?.push_back((self.id, Box::new(v)));
        self.mesh.arrived.notify_all();
        Ok(())
    }

    fn take<T: 'static>(&self, from: usize) -> Result<T> {
        ensure!(from < self.members.len(), "rank {from} outside a communicator of {}", self.members.len());
        let q = &self.mesh.queues[self.members[from] * self.mesh.size + self.members[self.rank]];
        let mut guard = q.lock().map_err(|_| anyhow!("poisoned queue"))?;
        loop {
            if let Some(i) = guard.iter().position(|(id, _)| *id == self.id) {
                let (_, msg) = guard.remove(i).expect("position is in range");
                return msg.downcast::<T>().map(|b| *b).map_err(|_| anyhow!("message from rank {from} has an unexpected type"));
            }
            let (g, timeout) = self.mesh.arrived.wait_timeout(guard, RECV_TIMEOUT).map_err(|_| anyhow!("poisoned queue"))?;
            guard = g;
            ensure!(!timeout.timed_out(), "rank {} waited {RECV_TIMEOUT:?} for rank {from}: deadlock", self.rank);
        }
    }

    /// Every rank's value, in rank order, on every rank.
    fn gather_all<T: Clone + Send + 'static>(&self, v: T) -> Result<Vec<T>> {
        for r in 0..self.members.len() {
            if r != self.rank {
                self.post(r, v.clone())?;
            }
        }
        (0..self.members.len()).map(|r| if r == self.rank { Ok(v.clone()) } else { self.take(r) }).collect()
    }
}

impl HostCollectives for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn barrier(&self) -> Result<()> {
        self.gather_all(()).map(|_| ())
    }

    fn max_f64(&self, x: f64) -> Result<f64> {
        Ok(self.gather_all(x)?.into_iter().fold(f64::NEG_INFINITY, f64::max))
    }

    fn all_agree(&self, ok: bool) -> Result<bool> {
        Ok(self.gather_all(ok)?.into_iter().all(|b| b))
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        *data = self.gather_all(data.clone())?.swap_remove(0);
        Ok(())
    }

    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>> {
        let all = self.gather_all(data.to_vec())?;
        Ok((self.rank == 0).then_some(all))
    }
}

impl Communicator<CpuBackend> for LocalComm {
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        let all = self.gather_all((color, key))?;
        let mut group: Vec<(usize, usize)> = (0..all.len()).filter(|&r| all[r].0 == color).map(|r| (all[r].1, r)).collect();
        group.sort();
        let rank = group.iter().position(|&(_, r)| r == self.rank).expect("this rank is in its own group");
        // Same id on every member, distinct from the parent's, the other colours' and the other splits'.
        use crate::generator::splitmix64;
        let nth = self.splits_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = splitmix64(self.id ^ splitmix64(color as u64 + 1) ^ splitmix64(splitmix64(nth + 1)));
        Ok(LocalComm {
            mesh: self.mesh.clone(),
            id,
            members: group.iter().map(|&(_, r)| self.members[r]).collect(),
            rank,
            splits_made: Default::default(),
        })
    }

    fn all_reduce_sum(&self, x: &mut HostMat<bf16>) -> Result<()> {
        let parts = self.gather_all(x.as_slice().to_vec())?;
        for (i, v) in x.as_mut_slice().iter_mut().enumerate() {
            let mut acc = parts[0][i];
            for p in &parts[1..] {
                acc = bf16::from_f32(acc.to_f32() + p[i].to_f32());
            }
            *v = acc;
        }
        Ok(())
    }

    fn all_reduce_acc(&self, x: &mut HostMat<f32>) -> Result<()> {
        let parts = self.gather_all(x.as_slice().to_vec())?;
        for (i, v) in x.as_mut_slice().iter_mut().enumerate() {
            *v = parts.iter().map(|p| p[i]).sum();
        }
        Ok(())
    }

    fn reduce_scatter_acc(&self, send: &HostMat<f32>, recv: &mut HostMat<f32>) -> Result<()> {
        super::check_all_gather(recv.len(), send.len(), self.members.len())?;
        let parts = self.gather_all(send.as_slice().to_vec())?;
        let at = self.rank * recv.len();
        for (i, v) in recv.as_mut_slice().iter_mut().enumerate() {
            *v = parts.iter().map(|p| p[at + i]).sum();
        }
        Ok(())
    }

    fn send(&self, x: &HostMat<bf16>, to: usize) -> Result<()> {
        self.post(to, x.as_slice().to_vec())
    }

    fn recv(&self, x: &mut HostMat<bf16>, from: usize) -> Result<()> {
        let v: Vec<bf16> = self.take(from)?;
        ensure!(v.len() == x.len(), "received {} values from rank {from}, expected {}", v.len(), x.len());
        x.as_mut_slice().copy_from_slice(&v);
        Ok(())
    }

    fn exchange(
        &self,
        send: &HostMat<bf16>,
        to: usize,
        recv: &mut HostMat<bf16>,
        from: usize,
        overlap: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        // Queues never block a sender, so posting first cannot deadlock the ring.
        self.send(send, to)?;
        overlap()?;
        self.recv(recv, from)
    }

    fn all_gather(&self, send: &HostMat<bf16>, recv: &mut HostMat<bf16>) -> Result<()> {
        let n = send.len();
        super::check_all_gather(n, recv.len(), self.size())?;
        for (i, part) in self.gather_all(send.as_slice().to_vec())?.into_iter().enumerate() {
            ensure!(part.len() == n, "all-gather: rank {i} sent {} values, this rank {n}", part.len());
            recv.as_mut_slice()[i * n..(i + 1) * n].copy_from_slice(&part);
        }
        Ok(())
    }

    fn all_to_all(&self, send: &HostMat<bf16>, recv: &mut HostMat<bf16>) -> Result<()> {
        let size = self.size();
        super::check_all_to_all(send.len(), recv.len(), size)?;
        let chunk = send.len() / size;
        let block = |j: usize| j * chunk..(j + 1) * chunk;
        for j in (0..size).filter(|&j| j != self.rank) {
            self.post(j, send.as_slice()[block(j)].to_vec())?;
        }
        recv.as_mut_slice()[block(self.rank)].copy_from_slice(&send.as_slice()[block(self.rank)]);
        for i in (0..size).filter(|&i| i != self.rank) {
            let v: Vec<bf16> = self.take(i)?;
            ensure!(v.len() == chunk, "all-to-all: rank {i} sent {} values, expected {chunk}", v.len());
            recv.as_mut_slice()[block(i)].copy_from_slice(&v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_groups_reduce_separately_and_in_rank_order() {
        let handles: Vec<_> = LocalComm::world(4)
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank();
                    let group = c.split(r / 2, r % 2).unwrap(); // {0, 1} and {2, 3}
                    let mut x = be_act(&CpuBackend::new(), &[r as f32, 1.0]);
                    group.all_reduce_sum(&mut x).unwrap();
                    (r, group.rank(), group.size(), x.as_slice().to_vec(), c.max_f64(r as f64).unwrap())
                })
            })
            .collect();
        for h in handles {
            let (r, gr, gs, x, mx) = h.join().unwrap();
            let first = (r / 2 * 2) as f32;
            assert_eq!((gr, gs, mx), (r % 2, 2, 3.0));
            assert_eq!(x, vec![bf16::from_f32(2.0 * first + 1.0), bf16::from_f32(2.0)]);
        }
    }

    fn be_act(be: &CpuBackend, v: &[f32]) -> HostMat<bf16> {
        use crate::backend::Backend;
        let mut a = be.alloc_act(1, v.len()).unwrap();
        for (d, s) in a.as_mut_slice().iter_mut().zip(v) {
            *d = bf16::from_f32(*s);
        }
        a
    }
}
