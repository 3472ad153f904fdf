//! Transfers on a stream of their own, ordered against the compute stream by events, never by a
//! host synchronize, and timed by events.
//!
//! One transfer, as `begin` and `end` queue it:
//! ```text
//! compute stream:  ...compute so far ─┐ [overlapped compute] ── done ─ wait(end) ─ resumed ─ ...
//!                                     │ (record)                            ▲
//! comm stream:               wait(ready) ─ start ─ [NCCL / copies] ─ end ──┘
//! ```
//! The transfer starts once everything queued on the compute stream so far is done: it reads
//! buffers that compute wrote and overwrites buffers that compute read (the ring's previous block).
//! The compute queued by `overlap` runs meanwhile; then the compute stream waits for the transfer,
//! so whatever comes next sees its data. Per transfer, once the device is synchronised:
//! transfer time = start -> end; exposed = done -> resumed (how long compute stood waiting, 0 when
//! the transfer finished first); hidden = transfer time - exposed, at least 0.

use super::emulated::{EmulationTransfers, Transfers};
use super::DeviceCommTimes;
use crate::backend::cuda::device::{CudaBackend, DevMat};
use anyhow::{anyhow, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// A transfer queued by `begin`, to be closed by `end`.
pub struct Transfer {
    start: CudaEvent,
}

/// A transfer queued and closed (`Timeline::close`) that the compute stream has not waited for.
pub struct Closed {
    start: CudaEvent,
    end: CudaEvent,
}

pub struct Timeline {
    compute: Arc<CudaStream>,
    comm: Arc<CudaStream>,
    /// Timing events for reuse: a ring iteration of the paper model queues tens of thousands.
    pool: RefCell<Vec<CudaEvent>>,
    /// [start, end, done, resumed] of every transfer since the last `take`: shared by the
    /// timelines `beside` makes, so that one account holds every stream's transfers.
    pending: Rc<RefCell<Vec<[CudaEvent; 4]>>>,
}

fn err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |e| anyhow!("{what}: {e:?}")
}

impl Timeline {
    /// A new communication stream beside `be`'s compute stream.
    pub fn new(be: &CudaBackend) -> Result<Self> {
        let comm = be.context().new_stream().map_err(err("creating the communication stream"))?;
        Ok(Timeline { compute: be.stream().clone(), comm, pool: RefCell::default(), pending: Rc::default() })
    }

    /// A second communication stream beside the same compute stream, its transfers timed in the
    /// same account: transfers queued on it overlap those on this one's stream.
    pub fn beside(&self) -> Result<Self> {
        let comm = self.compute.context().new_stream().map_err(err("creating a second communication stream"))?;
        Ok(Timeline { compute: self.compute.clone(), comm, pool: RefCell::default(), pending: self.pending.clone() })
    }

    pub fn comm_stream(&self) -> &Arc<CudaStream> {
        &self.comm
    }

    fn event(&self) -> Result<CudaEvent> {
        if let Some(e) = self.pool.borrow_mut().pop() {
            return Ok(e);
        }
        self.comm.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err("creating a CUDA event"))
    }

    /// Start a transfer: the communication stream waits for the compute queued so far.
    pub fn begin(&self) -> Result<Transfer> {
        let ready = self.event()?;
        ready.record(&self.compute).map_err(err("recording an event"))?;
        self.comm.wait(&ready).map_err(err("ordering the communication stream"))?;
        // A wait binds to the event's state when it is queued: the event can be recorded again.
        self.pool.borrow_mut().push(ready);
        let start = self.event()?;
        start.record(&self.comm).map_err(err("recording an event"))?;
        Ok(Transfer { start })
    }

    /// Close the transfer queued since `begin`; `overlap` queues the compute that may run during
    /// it; then the compute stream waits for the transfer.
    pub fn end(&self, t: Transfer, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let closed = self.close(t)?;
        overlap()?;
        self.wait(closed)
    }

    /// Mark the end of the transfer queued since `begin` without waiting for it: the compute
    /// queued until `wait` runs beside it (a training step's gradient all-reduce under the
    /// backward of the layers before).
    pub fn close(&self, t: Transfer) -> Result<Closed> {
        let end = self.event()?;
        end.record(&self.comm).map_err(err("recording an event"))?;
        Ok(Closed { start: t.start, end })
    }

    /// The compute stream waits for a closed transfer; its time joins the account.
    pub fn wait(&self, c: Closed) -> Result<()> {
        let done = self.event()?;
        done.record(&self.compute).map_err(err("recording an event"))?;
        self.compute.wait(&c.end).map_err(err("ordering the compute stream"))?;
        let resumed = self.event()?;
        resumed.record(&self.compute).map_err(err("recording an event"))?;
        self.pending.borrow_mut().push([c.start, c.end, done, resumed]);
        Ok(())
    }

    /// The times of every transfer since the last take (call after a device synchronize).
    pub fn take(&self) -> Result<DeviceCommTimes> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let mut times = DeviceCommTimes::default();
        for [start, end, done, resumed] in pending {
            let transfer_s = start.elapsed_ms(&end).map_err(err("reading transfer events"))? as f64 / 1e3;
            let exposed_s = done.elapsed_ms(&resumed).map_err(err("reading compute events"))? as f64 / 1e3;
            times.exposed_s += exposed_s;
            times.hidden_s += (transfer_s - exposed_s).max(0.0);
            self.pool.borrow_mut().extend([start, end, done, resumed]);
        }
        Ok(times)
    }
}

/// An emulated rank's copies as transfers on the communication stream: overlapped with the ring's
/// compute and timed exactly as NCCL's transfers are.
pub struct SideStreamCopies<'a> {
    be: &'a CudaBackend,
    line: Timeline,
    open: RefCell<Option<Transfer>>,
}

impl<'a> SideStreamCopies<'a> {
    pub fn new(be: &'a CudaBackend) -> Result<Self> {
        Ok(SideStreamCopies { be, line: Timeline::new(be)?, open: RefCell::new(None) })
    }
}

impl Transfers<CudaBackend> for SideStreamCopies<'_> {
    fn begin(&self) -> Result<()> {
        *self.open.borrow_mut() = Some(self.line.begin()?);
        Ok(())
    }

    fn copy(&self, src: &DevMat<u16>, dst: &mut DevMat<u16>, dst_row0: usize, rows: usize) -> Result<()> {
        self.be.copy_rows_on(self.line.comm_stream(), src, 0, dst, dst_row0, rows)
    }

    fn end(&self, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let t = self.open.borrow_mut().take().ok_or_else(|| anyhow!("emulated transfer ended without a begin"))?;
        self.line.end(t, overlap)
    }

    fn take_device_times(&self) -> Result<Option<DeviceCommTimes>> {
        self.line.take().map(Some)
    }
}

impl EmulationTransfers for CudaBackend {
    fn emulation_transfers(&self) -> Result<std::rc::Rc<dyn Transfers<Self> + '_>> {
        Ok(std::rc::Rc::new(SideStreamCopies::new(self)?))
    }
}
