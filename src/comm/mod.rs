//! How ranks exchange data. A strategy only ever talks to a `Communicator`: all-reduce for tensor
//! parallelism, send/recv for the pipeline, the paired exchange of a ring step; the harness adds
//! the few host collectives it needs (barrier, max of timings, one verdict, gather of outputs).

pub mod emulated;
pub mod local;
pub mod metered;
pub mod mpi;
pub mod nccl;
pub mod timeline;
pub mod watchdog;

/// The shape checks every transport makes before a collective moves anything.
pub(crate) fn check_all_gather(send_len: usize, recv_len: usize, size: usize) -> Result<()> {
    anyhow::ensure!(recv_len == send_len * size, "all-gather of {send_len} values per rank into {recv_len}: expected {}", send_len * size);
    Ok(())
}

/// As `check_all_gather`, for an all-to-all: equal buffers, cut into `size` equal blocks.
pub(crate) fn check_all_to_all(send_len: usize, recv_len: usize, size: usize) -> Result<()> {
    anyhow::ensure!(
        send_len == recv_len && send_len % size == 0,
        "all-to-all of {send_len} values into {recv_len} over {size} ranks: the buffers must be equal and cut into {size} equal blocks"
    );
    Ok(())
}

use crate::backend::Backend;
use anyhow::Result;
use half::bf16;

/// What every transport offers whatever the backend: who is who, and host-side collectives.
pub trait HostCollectives {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;

    fn barrier(&self) -> Result<()>;

    /// The maximum of `x` over all ranks, on every rank.
    fn max_f64(&self, x: f64) -> Result<f64>;

    /// True on every rank if `ok` is true on every rank: one verdict for the whole job.
    fn all_agree(&self, ok: bool) -> Result<bool>;

    /// Rank 0's bytes on every rank (`data` is replaced on the others).
    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()>;

    /// Every rank's `data` on rank 0 (in rank order); None on the other ranks.
    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>>;

    /// Run `wait` (a device synchronize that may be waiting on transfers queued by this transport)
    /// under the transport's guard: the watchdog reports and aborts one that never returns.
    fn guard_wait(&self, what: &'static str, wait: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _ = what;
        wait()
    }

    /// What this rank is doing between calls (`Some("iteration 3 of ring (measured)")`), so that
    /// a transport's guard can tell a rank that stopped outside communication, and name it; None
    /// outside the timed iterations, where long local work (reducing files) is expected.
    fn set_phase(&self, phase: Option<String>) {
        let _ = phase;
    }
}

/// Communication timed on the device, for transports whose calls return before the transfer is
/// done (NCCL on its own stream): the host's clock around a call measures nothing there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceCommTimes {
    /// Time the compute stream stood waiting for transfers.
    pub exposed_s: f64,
    /// Transfer time that ran while the compute stream was busy with other work.
    pub hidden_s: f64,
}

/// The operations on a backend's buffers that the strategies use.
pub trait Communicator<B: Backend>: HostCollectives {
    /// A communicator of the ranks that pass the same `color`, ranked by `key` (a TP group).
    fn split(&self, color: usize, key: usize) -> Result<Self>
    where
        Self: Sized;

    /// As `split`, but its transfers run on a communication stream of their own (NCCL), so that
    /// they overlap the transfers of this communicator's other groups (the double ring's outer
    /// ring under its inner ring); the same as `split` on a transport without streams.
    fn split_own_lane(&self, color: usize, key: usize) -> Result<Self>
    where
        Self: Sized,
    {
        self.split(color, key)
    }

    /// x = sum of x over all ranks, in place, with BF16 on the wire (as NCCL reduces BF16).
    fn all_reduce_sum(&self, x: &mut B::Act) -> Result<()>;

    /// x = sum of x over all ranks, in place, in FP32 (a training step's weight gradients).
    fn all_reduce_acc(&self, x: &mut B::Acc) -> Result<()>;

    /// Whether `start_all_reduce_accs` returns with the reductions still running (NCCL, on a
    /// communication stream and a communicator of their own): then a training step starts each
    /// layer's gradient all-reduce once that layer's backward is done, under the backward of the
    /// layers before it. False where transfers move only inside the calls (MPI, in-process): the
    /// step then reduces after its backward, a phase of its own.
    fn overlaps_reductions(&self) -> bool {
        false
    }

    /// Queue the FP32 all-reduce of each of `xs` in place, as one group, to complete by
    /// `finish_reductions`; the caller leaves `xs` untouched until then. Where nothing overlaps,
    /// the reductions are done on return.
    fn start_all_reduce_accs(&self, xs: &mut [&mut B::Acc]) -> Result<()> {
        xs.iter_mut().try_for_each(|x| self.all_reduce_acc(x))
    }

    /// The compute waits for every reduction `start_all_reduce_accs` queued.
    fn finish_reductions(&self) -> Result<()> {
        Ok(())
    }

    /// `send` holds size() blocks of equal rows; block i of their sum over all ranks lands in
    /// `recv` (its rows) on rank i, in FP32 (a training step's gradients of gathered K/V).
    fn reduce_scatter_acc(&self, send: &B::Acc, recv: &mut B::Acc) -> Result<()>;

    /// Send x's rows to rank `to`.
    fn send(&self, x: &B::Act, to: usize) -> Result<()>;

    /// Receive exactly x's rows from rank `from`; a message of another size is an error.
    fn recv(&self, x: &mut B::Act, from: usize) -> Result<()>;

    /// One ring step: send `send` to `to` and receive `recv` from `from` as one paired operation
    /// (no deadlock around the ring), running `overlap` (the compute on the block in hand) while
    /// the transfer is in flight. Returns once both the transfer and `overlap` are done.
    fn exchange(&self, send: &B::Act, to: usize, recv: &mut B::Act, from: usize, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()>;

    /// Every rank's `send` rows into `recv`, in rank order: rank i's at rows i x send.rows().
    /// Every rank sends as many rows (a strategy pads uneven blocks), and recv.rows() = size x
    /// send.rows(), as NCCL's AllGather requires.
    fn all_gather(&self, send: &B::Act, recv: &mut B::Act) -> Result<()>;

    /// `send` holds size() blocks of equal rows, block j for rank j; block i of `recv` (as many
    /// rows and columns) arrives from rank i.
    fn all_to_all(&self, send: &B::Act, recv: &mut B::Act) -> Result<()>;

    /// The communication time (exposed, hidden) since the last call, once the device is
    /// synchronised: a measured phase's share of the iteration's, which the iteration's totals
    /// still count. None for a transport that is not metered.
    fn take_phase_times(&self) -> Result<Option<(f64, f64)>> {
        Ok(None)
    }

    /// The device timing of every call since the last take, once the device is synchronised; None
    /// for transports that move data inside the call, where the host's clock is the measure (and
    /// nothing is hidden: an MPI transfer without a progress thread moves only inside MPI calls,
    /// which the overlapped compute runs outside of).
    fn take_device_times(&self) -> Result<Option<DeviceCommTimes>> {
        Ok(None)
    }
}
