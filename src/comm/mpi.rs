//! The MPI communicator (rsmpi) on host buffers: the CPU backend's transport. BF16 travels as its
//! 16-bit pattern; the all-reduce sums with a user operation that adds in FP32 and rounds to BF16 at
//! every step, as NCCL's BF16 reduction does, so the wire carries what a GPU job's would.
//! Overlap is nominal here: Open MPI moves a large message only inside MPI calls, so a ring step's
//! transfer mostly happens in its final wait.
//! The same communicator serves the CUDA backend by staging device buffers through the host: a way
//! to run every strategy on GPUs (and several ranks on one GPU in tests) before NCCL, not a way to
//! measure GPU communication.

use super::{Communicator, HostCollectives};
use crate::backend::cpu::{CpuBackend, HostMat};
use crate::backend::cuda::device::{CudaBackend, DevMat};
use crate::backend::Matrix;
use anyhow::{bail, ensure, Result};
use half::bf16;
use mpi::collective::{SystemOperation, UnsafeUserOperation};
use mpi::datatype::PartitionMut;
use mpi::ffi::MPI_Datatype;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Destination as _, Equivalence as _, Root as _, Source as _};
use std::os::raw::{c_int, c_void};

pub struct MpiComm {
    comm: SimpleCommunicator,
    bf16_sum: UnsafeUserOperation,
}

/// MPI user operation: inout[i] = bf16(f32(in[i]) + f32(inout[i])), on u16 bit patterns.
unsafe extern "C" fn bf16_sum(invec: *mut c_void, inoutvec: *mut c_void, len: *mut c_int, _dt: *mut MPI_Datatype) {
    // SAFETY: MPI passes two buffers of *len elements of the datatype we reduce with (u16).
    let n = unsafe { *len } as usize;
    let a = unsafe { std::slice::from_raw_parts(invec as *const u16, n) };
    let b = unsafe { std::slice::from_raw_parts_mut(inoutvec as *mut u16, n) };
    for (x, y) in a.iter().zip(b.iter_mut()) {
        *y = bf16::from_f32(bf16::from_bits(*x).to_f32() + bf16::from_bits(*y).to_f32()).to_bits();
    }
}

fn bits(x: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(x)
}

fn bits_mut(x: &mut [bf16]) -> &mut [u16] {
    bytemuck::cast_slice_mut(x)
}

impl MpiComm {
    pub fn new(comm: SimpleCommunicator) -> Self {
        // SAFETY: bf16_sum reads and writes exactly *len u16 values, is associative up to BF16
        // rounding (as every floating-point sum is) and commutative, and never panics.
        let bf16_sum = unsafe { UnsafeUserOperation::commutative(bf16_sum) };
        MpiComm { comm, bf16_sum }
    }

    fn peer(&self, r: usize) -> Result<mpi::topology::Process<'_>> {
        ensure!(r < self.comm.size() as usize, "peer rank {r} outside a communicator of {}", self.comm.size());
        Ok(self.comm.process_at_rank(r as i32))
    }
}

impl MpiComm {
    fn all_reduce_bits(&self, x: &mut [u16]) {
        if self.comm.size() > 1 {
            let send = x.to_vec();
            self.comm.all_reduce_into(&send[..], x, &self.bf16_sum);
        }
    }

    /// FP32 sums, by MPI's own operation.
    fn all_reduce_f32(&self, x: &mut [f32]) {
        if self.comm.size() > 1 {
            let send = x.to_vec();
            self.comm.all_reduce_into(&send[..], x, SystemOperation::sum());
        }
    }

    /// FP32 sums of equal blocks, block i to rank i, by MPI's own operation.
    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        super::check_all_gather(recv.len(), send.len(), self.size())?;
        ensure!(i32::try_from(recv.len()).is_ok(), "reduce-scatter of {} values per rank exceeds MPI's 32-bit count", recv.len());
        self.comm.reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn send_bits(&self, x: &[u16], to: usize) -> Result<()> {
        self.peer(to)?.send(x);
        Ok(())
    }

    fn recv_bits(&self, x: &mut [u16], from: usize) -> Result<()> {
        let want = x.len();
        let status = self.peer(from)?.receive_into(x);
        let got = status.count(u16::equivalent_datatype()) as usize;
        ensure!(got == want, "received {got} values from rank {from}, expected {want}");
        Ok(())
    }

    fn exchange_bits(&self, send: &[u16], to: usize, recv: &mut [u16], from: usize, overlap: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let want = recv.len();
        let (dst, src) = (self.peer(to)?, self.peer(from)?);
        let (work, got) = mpi::request::scope(|scope| {
            let sreq = dst.immediate_send(scope, send);
            let rreq = src.immediate_receive_into(scope, recv);
            // Requests must complete before the scope ends even if the compute failed.
            let work = overlap();
            let status = rreq.wait();
            sreq.wait();
            (work, status.count(u16::equivalent_datatype()) as usize)
        });
        work?;
        ensure!(got == want, "ring step received {got} values from rank {from}, expected {want}");
        Ok(())
    }

    fn all_gather_bits(&self, send: &[u16], recv: &mut [u16]) -> Result<()> {
        super::check_all_gather(send.len(), recv.len(), self.size())?;
        ensure!(i32::try_from(send.len()).is_ok(), "all-gather of {} values per rank exceeds MPI's 32-bit count", send.len());
        self.comm.all_gather_into(send, recv);
        Ok(())
    }

    fn all_to_all_bits(&self, send: &[u16], recv: &mut [u16]) -> Result<()> {
        super::check_all_to_all(send.len(), recv.len(), self.size())?;
        ensure!(i32::try_from(send.len()).is_ok(), "all-to-all of {} values exceeds MPI's 32-bit count", send.len());
        self.comm.all_to_all_into(send, recv);
        Ok(())
    }

    pub fn split_comm(&self, color: usize, key: usize) -> Result<Self> {
        let c = self
            .comm
            .split_by_color_with_key(mpi::topology::Color::with_value(color as i32), key as i32)
            .ok_or_else(|| anyhow::anyhow!("MPI_Comm_split returned no communicator for color {color}"))?;
        Ok(MpiComm::new(c))
    }
}

impl Communicator<CpuBackend> for MpiComm {
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        self.split_comm(color, key)
    }

    fn all_reduce_sum(&self, x: &mut HostMat<bf16>) -> Result<()> {
        self.all_reduce_bits(bits_mut(x.as_mut_slice()));
        Ok(())
    }

    fn all_reduce_acc(&self, x: &mut HostMat<f32>) -> Result<()> {
        self.all_reduce_f32(x.as_mut_slice());
        Ok(())
    }

    fn reduce_scatter_acc(&self, send: &HostMat<f32>, recv: &mut HostMat<f32>) -> Result<()> {
        self.reduce_scatter_f32(send.as_slice(), recv.as_mut_slice())
    }

    fn send(&self, x: &HostMat<bf16>, to: usize) -> Result<()> {
        self.send_bits(bits(x.as_slice()), to)
    }

    fn recv(&self, x: &mut HostMat<bf16>, from: usize) -> Result<()> {
        self.recv_bits(bits_mut(x.as_mut_slice()), from)
    }

    fn exchange(
        &self,
        send: &HostMat<bf16>,
        to: usize,
        recv: &mut HostMat<bf16>,
        from: usize,
        overlap: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.exchange_bits(bits(send.as_slice()), to, bits_mut(recv.as_mut_slice()), from, overlap)
    }

    fn all_gather(&self, send: &HostMat<bf16>, recv: &mut HostMat<bf16>) -> Result<()> {
        self.all_gather_bits(bits(send.as_slice()), bits_mut(recv.as_mut_slice()))
    }

    fn all_to_all(&self, send: &HostMat<bf16>, recv: &mut HostMat<bf16>) -> Result<()> {
        self.all_to_all_bits(bits(send.as_slice()), bits_mut(recv.as_mut_slice()))
    }
}

/// Device buffers staged through the host: download, the MPI operation, upload.
impl Communicator<CudaBackend> for MpiComm {
    fn split(&self, color: usize, key: usize) -> Result<Self> {
        self.split_comm(color, key)
    }

    fn all_reduce_sum(&self, x: &mut DevMat<u16>) -> Result<()> {
        let mut host = x.to_host()?;
        self.all_reduce_bits(&mut host);
        x.from_host(&host)
    }

    fn all_reduce_acc(&self, x: &mut DevMat<f32>) -> Result<()> {
        let mut host = x.to_host_f32()?;
        self.all_reduce_f32(&mut host);
        x.from_host_f32(&host)
    }

    fn reduce_scatter_acc(&self, send: &DevMat<f32>, recv: &mut DevMat<f32>) -> Result<()> {
        let mut host = vec![0f32; recv.len()];
        self.reduce_scatter_f32(&send.to_host_f32()?, &mut host)?;
        recv.from_host_f32(&host)
    }

    fn send(&self, x: &DevMat<u16>, to: usize) -> Result<()> {
        self.send_bits(&x.to_host()?, to)
    }

    fn recv(&self, x: &mut DevMat<u16>, from: usize) -> Result<()> {
        let mut host = vec![0u16; x.len()];
        self.recv_bits(&mut host, from)?;
        x.from_host(&host)
    }

    /// The outgoing block is downloaded first; the compute runs on the GPU while MPI moves the
    /// host copies; the incoming block is uploaded on the same stream, after the compute.
    fn exchange(
        &self,
        send: &DevMat<u16>,
        to: usize,
        recv: &mut DevMat<u16>,
        from: usize,
        overlap: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let outgoing = send.to_host()?;
        let mut incoming = vec![0u16; recv.len()];
        self.exchange_bits(&outgoing, to, &mut incoming, from, overlap)?;
        recv.from_host(&incoming)
    }

    fn all_gather(&self, send: &DevMat<u16>, recv: &mut DevMat<u16>) -> Result<()> {
        let mut host = vec![0u16; recv.len()];
        self.all_gather_bits(&send.to_host()?, &mut host)?;
        recv.from_host(&host)
    }

    fn all_to_all(&self, send: &DevMat<u16>, recv: &mut DevMat<u16>) -> Result<()> {
        let mut host = vec![0u16; recv.len()];
        self.all_to_all_bits(&send.to_host()?, &mut host)?;
        recv.from_host(&host)
    }
}

/// The host collectives both backends share.
impl HostCollectives for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn barrier(&self) -> Result<()> {
        self.comm.barrier();
        Ok(())
    }

    fn max_f64(&self, x: f64) -> Result<f64> {
        let mut out = 0.0f64;
        self.comm.all_reduce_into(&x, &mut out, SystemOperation::max());
        Ok(out)
    }

    fn all_agree(&self, ok: bool) -> Result<bool> {
        let mut all = 0i32;
        self.comm.all_reduce_into(&i32::from(ok), &mut all, SystemOperation::min());
        Ok(all == 1)
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let root = self.comm.process_at_rank(0);
        let mut len = data.len() as u64;
        root.broadcast_into(&mut len);
        data.resize(len as usize, 0);
        root.broadcast_into(&mut data[..]);
        Ok(())
    }

    fn gather_to_root(&self, data: &[bf16]) -> Result<Option<Vec<Vec<bf16>>>> {
        let Ok(n) = i32::try_from(data.len()) else {
            bail!("gather of {} values exceeds MPI's 32-bit count; verify a smaller config", data.len());
        };
        let root = self.comm.process_at_rank(0);
        if self.comm.rank() != 0 {
            root.gather_into(&n);
            root.gather_varcount_into(bits(data));
            return Ok(None);
        }
        let mut counts = vec![0i32; self.comm.size() as usize];
        root.gather_into_root(&n, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i64, |acc, &c| {
                let d = *acc;
                *acc += c as i64;
                Some(d)
            })
            .map(|d| i32::try_from(d).unwrap_or(i32::MAX))
            .collect();
        let total: i64 = counts.iter().map(|&c| c as i64).sum();
        ensure!(total < i32::MAX as i64, "gather of {total} values exceeds MPI's 32-bit displacements; verify a smaller config");
        let mut all = vec![0u16; total as usize];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(bits(data), &mut part);
        }
        let mut out = Vec::with_capacity(counts.len());
        let mut at = 0usize;
        for &c in &counts {
            out.push(all[at..at + c as usize].iter().map(|&b| bf16::from_bits(b)).collect());
            at += c as usize;
        }
        Ok(Some(out))
    }
}
