//! The transport of an emulated rank (`--emulate-world P --as-rank K`): one process runs exactly
//! the compute of rank K of a P-rank job, and every communication call becomes a copy of the same
//! size in this device's memory. The copies keep the memory traffic and the order of operations of
//! the real job; they cannot stand for link bandwidth (a device copy is faster than NVLink or
//! InfiniBand) nor for waiting on other ranks (pipeline fill and drain, stragglers). Hence every
//! emulated result is labelled so, and `plan` remains the place for link-bound projections.
//!
//! Message contents are not what the real job would receive: an emulated ring rank attends to a
//! copy of its own K/V block in every step. The work is the same (masking and tile skipping depend
//! only on the token positions of the block's owner, which the strategy knows), so the timing is.

use super::{Communicator, DeviceCommTimes, HostCollectives};
use crate::backend::{Backend, Matrix};
use crate::generator::{Init, Region, INPUT_TENSOR};
use anyhow::{ensure, Result};
use half::bf16;
use std::cell::RefCell;
use std::rc::Rc;

/// How an emulated rank's copies run: in order with the compute (`InOrder`: the CPU, or a GPU's
/// one stream), or as transfers on a stream of their own, overlapped with compute and timed on the
/// device like NCCL's (the CUDA backend's `SideStreamCopies`).
pub trait Transfers<B: Backend> {
    /// Open a transfer: the copies that follow may start once the compute queued so far is done.
    fn begin(&self) -> Result<()>;
    /// dst[dst_row0 .. dst_row0 + rows] = src[0 .. rows], as part of the open transfer.
    fn copy(&self, src: &B::Act, dst: &mut B::Act, dst_row0: usize, rows: usize) -> Result<()>;
    /// Close the transfer; `overlap` queues the compute that may run during it.
    fn end(&self, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()>;
    /// As `Communicator::take_device_times`.
    fn take_device_times(&self) -> Result<Option<DeviceCommTimes>>;
}

/// Copies queued in order with the compute: nothing overlaps, the host's clock times them.
pub struct InOrder<'a, B> {
    be: &'a B,
}

impl<'a, B> InOrder<'a, B> {
    pub fn new(be: &'a B) -> Self {
        InOrder { be }
    }
}

/// The transfers a backend gives an emulated rank: the best it has for overlapping copies.
pub trait EmulationTransfers: Backend + Sized {
    fn emulation_transfers(&self) -> Result<Rc<dyn Transfers<Self> + '_>>;
}

impl EmulationTransfers for crate::backend::cpu::CpuBackend {
    fn emulation_transfers(&self) -> Result<Rc<dyn Transfers<Self> + '_>> {
        Ok(Rc::new(InOrder::new(self)))
    }
}

impl<B: Backend> Transfers<B> for InOrder<'_, B> {
    fn begin(&self) -> Result<()> {
        Ok(())
    }

    fn copy(&self, src: &B::Act, dst: &mut B::Act, dst_row0: usize, rows: usize) -> Result<()> {
        self.be.copy_rows(src, 0, dst, dst_row0, rows)
    }

    fn end(&self, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        overlap()
    }

    fn take_device_times(&self) -> Result<Option<DeviceCommTimes>> {
        Ok(None)
    }
}

pub struct Emulated<'a, B: Backend> {
    rank: usize,
    size: usize,
    /// Every rank's (color, key) of each split, as the strategy's spec states them: a split forms
    /// the group the real job would, from that table alone.
    splits: Rc<Vec<Vec<(usize, usize)>>>,
    /// Splits made so far from the world communicator (the index into each rank's list).
    splits_made: Rc<std::cell::Cell<usize>>,
    /// Where sends go and receives come from (tp-pp): one buffer of the largest message, the
    /// micro-batch's activations, shared by the groups split from this communicator.
    scratch: Rc<RefCell<Option<B::Act>>>,
    transfers: Rc<dyn Transfers<B> + 'a>,
}

/// What an emulated rank needs to know of the job it stands in: its size, every rank's (color,
/// key) of each communicator split (so a split forms the group the real job would), and the
/// scratch buffer its all-reduces and pipeline messages go through. The strategy's table states
/// them (`strategy::emulation::job`); this transport only follows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedJob {
    pub world: usize,
    pub splits: Vec<Vec<(usize, usize)>>,
    /// [rows, cols] of the scratch buffer; None where every message has a buffer of its own.
    pub scratch: Option<(usize, usize)>,
    /// The generator's seed, so the scratch holds the job's input activations.
    pub seed: u64,
}

impl<'a, B: Backend> Emulated<'a, B> {
    /// Rank `as_rank` of `job`, its copies in order with the compute.
    pub fn new(be: &'a B, job: &EmulatedJob, as_rank: usize) -> Result<Self> {
        Self::with_transfers(be, job, as_rank, Rc::new(InOrder { be }))
    }

    /// As `new`, with the copies run by `transfers`. Allocates the scratch buffer tp-pp's
    /// messages go through, filled like input activations so a pipeline stage computes on
    /// realistic values.
    pub fn with_transfers(be: &'a B, job: &EmulatedJob, as_rank: usize, transfers: Rc<dyn Transfers<B> + 'a>) -> Result<Self> {
        let scratch = match job.scratch {
            Some((rows, cols)) => {
                let mut s = be.alloc_act(rows, cols)?;
                be.fill(&mut s, 0, &Region::rows(INPUT_TENSOR, cols, 0, rows), job.seed, Init::Uniform)?;
                Some(s)
            }
            None => None,
        };
        Ok(Emulated {
            rank: as_rank,
            size: job.world,
            splits: Rc::new(job.splits.clone()),
            splits_made: Rc::new(std::cell::Cell::new(0)),
            scratch: Rc::new(RefCell::new(scratch)),
            transfers,
        })
    }

    fn with_scratch<T>(&self, rows: usize, f: impl FnOnce(&mut B::Act) -> Result<T>) -> Result<T> {
        let mut guard = self.scratch.borrow_mut();
        let scratch = guard.as_mut().ok_or_else(|| anyhow::anyhow!("emulated communication without a scratch buffer"))?;
        ensure!(
            rows <= scratch.capacity_rows(),
            "emulated message of {rows} rows exceeds the scratch buffer's {}",
            scratch.capacity_rows()
        );
        scratch.set_rows(rows);
        f(scratch)
    }

    fn check_peer(&self, peer: usize) -> Result<()> {
        ensure!(peer < self.size, "rank {peer} outside an emulated communicator of {}", self.size);
        Ok(())
    }
}

/// One process is the whole job as far as the harness can see: every collective is this rank's own value.
impl<B: Backend> HostCollectives for Emulated<'_, B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn max_f64(&self, x: f64) -> Result<f64> {
        Ok(x)
    }

    fn all_agree(&self, ok: bool) -> Result<bool> {
        Ok(ok)
    }

    fn broadcast_bytes(&self, _data: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>> {
        Ok((self.rank == 0).then(|| vec![data.to_vec()]))
    }
}

impl<B: Backend> Communicator<B> for Emulated<'_, B> {
    /// The group of the ranks whose same split has `color`, ranked by key, as MPI_Comm_split forms it.
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        let i = self.splits_made.get();
        self.splits_made.set(i + 1);
        let mut members: Vec<usize> = Vec::new();
        for (r, list) in self.splits.iter().enumerate() {
            let Some(&(c, k)) = list.get(i) else {
                anyhow::bail!("emulated split {i}: rank {r} of the strategy's table makes no such split")
            };
            if c == color {
                members.push(k);
            }
        }
        members.sort_unstable();
        let rank =
            members.iter().position(|&k| k == key).ok_or_else(|| anyhow::anyhow!("emulated split: key {key} not among color {color}'s"))?;
        Ok(Emulated {
            rank,
            size: members.len(),
            splits: self.splits.clone(),
            splits_made: Rc::new(std::cell::Cell::new(0)),
            scratch: self.scratch.clone(),
            transfers: self.transfers.clone(),
        })
    }

    /// Emulation times forward passes only: `--emulate` with `--train` is refused before any
    /// work starts (its scratch buffer is BF16 activation rows), so nothing reaches this.
    fn all_reduce_acc(&self, _: &mut B::Acc) -> Result<()> {
        anyhow::bail!("an emulated rank has no FP32 gradient all-reduce: --emulate does not take --train")
    }

    /// As `all_reduce_acc`: not reached (`--emulate` does not take --train).
    fn reduce_scatter_acc(&self, _: &B::Acc, _: &mut B::Acc) -> Result<()> {
        anyhow::bail!("an emulated rank has no FP32 reduce-scatter: --emulate does not take --train")
    }

    /// A ring all-reduce moves about the buffer out and the buffer in per rank: one copy out to the
    /// scratch buffer and one back.
    fn all_reduce_sum(&self, x: &mut B::Act) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let rows = x.rows();
        self.with_scratch(rows, |s| {
            self.transfers.begin()?;
            self.transfers.copy(x, s, 0, rows)?;
            self.transfers.copy(s, x, 0, rows)?;
            self.transfers.end(&mut || Ok(()))
        })
    }

    fn send(&self, x: &B::Act, to: usize) -> Result<()> {
        self.check_peer(to)?;
        self.with_scratch(x.rows(), |s| {
            self.transfers.begin()?;
            self.transfers.copy(x, s, 0, x.rows())?;
            self.transfers.end(&mut || Ok(()))
        })
    }

    fn recv(&self, x: &mut B::Act, from: usize) -> Result<()> {
        self.check_peer(from)?;
        let rows = x.rows();
        self.with_scratch(rows, |s| {
            self.transfers.begin()?;
            self.transfers.copy(s, x, 0, rows)?;
            self.transfers.end(&mut || Ok(()))
        })
    }

    /// The incoming block's rows are copied from the outgoing block (cycled when the incoming one
    /// is longer, as uneven ring chunks can be) while the compute runs. An empty outgoing block
    /// (a decode rank that owns no new token this batch) leaves the incoming rows as they are:
    /// their sizes, not their values, are the real job's.
    fn exchange(&self, send: &B::Act, to: usize, recv: &mut B::Act, from: usize, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        self.check_peer(to)?;
        self.check_peer(from)?;
        self.transfers.begin()?;
        let mut done = 0;
        while done < recv.rows() && send.rows() > 0 {
            let n = send.rows().min(recv.rows() - done);
            self.transfers.copy(send, recv, done, n)?;
            done += n;
        }
        self.transfers.end(overlap)
    }

    /// Every block of `recv` is a copy of this rank's block: the sizes and the attention work
    /// (which depends on the owners' positions, not on values) are the real job's.
    fn all_gather(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        super::check_all_gather(send.len(), recv.len(), self.size)?;
        self.transfers.begin()?;
        for i in 0..self.size {
            self.transfers.copy(send, recv, i * send.rows(), send.rows())?;
        }
        self.transfers.end(&mut || Ok(()))
    }

    /// One copy of the whole buffer: the blocks stay where they are.
    fn all_to_all(&self, send: &B::Act, recv: &mut B::Act) -> Result<()> {
        super::check_all_to_all(send.len(), recv.len(), self.size)?;
        self.transfers.begin()?;
        self.transfers.copy(send, recv, 0, send.rows())?;
        self.transfers.end(&mut || Ok(()))
    }

    fn take_device_times(&self) -> Result<Option<DeviceCommTimes>> {
        self.transfers.take_device_times()
    }
}
