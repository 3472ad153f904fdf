//! The CUDA backend: one GPU per rank, BF16 buffers in device memory, every linear layer a cuBLAS
//! BF16 GEMM with FP32 accumulation, every other op a kernel from `kernels/` compiled by NVRTC at
//! start-up for this device's architecture. Operations are queued on one stream; `synchronize`
//! ends a timed iteration.

pub use super::choice::AttentionKernel;
use super::kernels::{self, ModuleFormat, SOURCES};
use super::launch::{self, Scalar};
use crate::backend::{Backend, BlockCopy, Heads, Instruments, Matrix, MemoryStats, Span, Tracker};
use crate::generator::{Init, Region};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use half::bf16;
use serde::Serialize;
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A row-major device matrix with room for `capacity_rows` rows. BF16 is stored as its bit
/// pattern (u16), which is what the kernels and cuBLAS read.
pub struct DevMat<T> {
    pub(super) data: CudaSlice<T>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    capacity_rows: usize,
    tracker: Arc<Tracker>,
    /// The stream that orders this buffer's work (for host staging in the MPI communicator).
    pub(super) stream: Arc<CudaStream>,
}

impl<T> Drop for DevMat<T> {
    fn drop(&mut self) {
        self.tracker.sub((self.capacity_rows * self.cols * std::mem::size_of::<T>()) as u64);
    }
}

impl<T> Matrix for DevMat<T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn capacity_rows(&self) -> usize {
        self.capacity_rows
    }
    fn set_rows(&mut self, rows: usize) {
        assert!(rows <= self.capacity_rows, "set_rows {rows} beyond capacity {}", self.capacity_rows);
        self.rows = rows;
    }
}

impl DevMat<u16> {
    /// The rows in use, copied to the host (waits for the work queued on them).
    pub fn to_host(&self) -> Result<Vec<u16>> {
        self.stream.clone_dtoh(&self.data.slice(..self.rows * self.cols)).map_err(err("device to host"))
    }

    /// Host values into the rows in use, queued on the buffer's stream.
    pub fn from_host(&mut self, bits: &[u16]) -> Result<()> {
        let n = self.rows * self.cols;
        ensure!(bits.len() == n, "{} values into a buffer of {n}", bits.len());
        self.stream.memcpy_htod(bits, &mut self.data.slice_mut(..n)).map_err(err("host to device"))
    }

    /// The rows in use as BF16 values (NCCL reduces them as BF16).
    pub(crate) fn bf16_view(&self) -> cudarc::driver::CudaView<'_, bf16> {
        let n = self.rows * self.cols;
        // SAFETY: u16 and bf16 have the same size, and every bit pattern is a valid bf16.
        unsafe { self.data.transmute::<bf16>(n) }.expect("the rows in use fit the allocation")
    }

    pub(crate) fn bf16_view_mut(&mut self) -> cudarc::driver::CudaViewMut<'_, bf16> {
        let n = self.rows * self.cols;
        // SAFETY: as above.
        unsafe { self.data.transmute_mut::<bf16>(n) }.expect("the rows in use fit the allocation")
    }
}

/// Whether the NCCL library can be loaded (cudarc looks for the unversioned libnccl.so).
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen the library under its known names.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// Whether the CUDA driver library can be loaded at all (false on machines without an NVIDIA driver).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library under its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn cublas_available() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Number of visible GPUs, or why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_available() {
        bail!("no GPU: the CUDA driver (libcuda.so) is not installed on this machine");
    }
    let n = CudaContext::device_count().map_err(|e| anyhow!("CUDA driver: {e:?}"))?;
    ensure!(n > 0, "no GPU: the CUDA driver found no device (CUDA_VISIBLE_DEVICES={:?})", std::env::var("CUDA_VISIBLE_DEVICES").ok());
    Ok(n as usize)
}

/// NVRTC's architecture name for a compute capability: Hopper gets its arch-specific features.
pub fn arch_for(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90a",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        _ if major < 8 => bail!("compute capability {major}.{minor}: ringbench's BF16 kernels need sm_80 or newer"),
        _ => bail!("compute capability {major}.{minor} is not in ringbench's architecture list"),
    })
}

/// Dense BF16 tensor-core peak of the exact card, by its name as the driver reports it (NVIDIA's
/// datasheets): H100 SXM ("H100 80GB HBM3") and H200 989 TFLOP/s, H100 PCIe 756, H100 NVL and
/// H200 NVL 835, A100 (SXM and PCIe) 312. Any other card, a variant of these included, is
/// unknown: its MFU stays empty rather than divided by a guess.
pub fn peak_flops_for(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let has = |w: &str| n.contains(w);
    let tflops = if has("GH200") {
        return None; // a Grace Hopper superchip: not in the list above, whatever its H100 runs at
    } else if has("H200") {
        if has("NVL") {
            835.0
        } else {
            989.0
        }
    } else if has("H100") {
        if has("NVL") {
            835.0
        } else if has("PCIE") {
            756.0
        } else if has("HBM3") || has("SXM") {
            989.0
        } else {
            return None;
        }
    } else if has("A100") {
        312.0
    } else {
        return None;
    };
    Some(tflops * 1e12)
}

/// One kernel source as this backend loaded it.
pub struct LoadedSource {
    pub file: &'static str,
    pub format: ModuleFormat,
    /// NVRTC's log of the successful compile: empty unless it warned.
    pub log: String,
    /// Each entry point with what the driver says it uses per thread.
    pub kernels: Vec<(&'static str, kernels::Resources)>,
    /// Spills in hot kernels, and refusals.
    pub notes: Vec<String>,
}

impl LoadedSource {
    /// Lines for `info` and `selftest`: the format, each kernel's registers and local memory,
    /// NVRTC's log where it said anything, and the notes.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut o = format!("kernels {}: loaded as {}\n", self.file, self.format);
        for (e, r) in &self.kernels {
            let _ = writeln!(o, "  {e}: {} registers, {} B local memory per thread", r.registers, r.local_bytes);
        }
        if !self.log.is_empty() {
            let _ = writeln!(o, "  NVRTC said:");
            for l in self.log.lines() {
                let _ = writeln!(o, "    {l}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(o, "  {n}");
        }
        o
    }
}

/// Registers and local memory per thread of a loaded kernel, as the driver reports them.
fn resources(f: &CudaFunction) -> std::result::Result<kernels::Resources, cudarc::driver::DriverError> {
    let count = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(kernels::Resources { registers: count(f.num_regs()?), local_bytes: count(f.local_size_bytes()?) })
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    pub arch: &'static str,
    devices: usize,
    memory: Arc<Tracker>,
    /// Device memory in use (total - free) at its highest since the last reset.
    device_peak: Cell<u64>,
    attention_kernel: Cell<AttentionKernel>,
    /// The events `timer_start` and `timer_stop` recorded on the compute stream.
    timer: std::cell::RefCell<[Option<cudarc::driver::CudaEvent>; 2]>,
    /// Each source as loaded: its format, NVRTC's log and each kernel's registers and local memory.
    sources: Vec<LoadedSource>,
    /// The kernels loaded but never launched, with the reason (`kernels::refusal`).
    refused: HashMap<&'static str, String>,
    pub(super) flops: crate::backend::FlopCounter,
    /// Whether each GEMM and attention call is timed (`set_op_timing`), and the (is a GEMM, start,
    /// end) events recorded around each on the compute stream since the last take.
    op_timing: Cell<bool>,
    op_events: std::cell::RefCell<Vec<(bool, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>>,
}

/// Whether cudarc records and waits on events of its own for every buffer a launch or copy uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BufferEvents {
    /// Off: the timeline's explicit events are the only ordering between streams (the default).
    Off,
    /// On: cudarc's default, kept for measuring its per-launch cost.
    On,
}

impl CudaBackend {
    /// Bind GPU `local_rank % devices` and build the kernels for it.
    pub fn new(local_rank: usize, include: Option<&Path>) -> Result<Self> {
        let devices = device_count()?;
        if !cublas_available() {
            bail!("cuBLAS (libcublas.so) not found: install the CUDA toolkit's libraries and put them on LD_LIBRARY_PATH");
        }
        let ordinal = local_rank % devices;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("creating a context on GPU {ordinal}: {e:?}"))?;
        {
            // SAFETY: stream order has one authority, the explicit events of `comm::timeline`, and
            // cudarc's per-buffer events (a record and a wait per buffer per launch) add nothing
            // to it. The three rules cudarc then leaves to us hold: (1) every buffer is allocated,
            // and freed, in order on the compute stream, and a transfer starts only after the
            // communication stream has waited for the compute queued before it (so allocations
            // are complete); (2) every transfer ends with the compute stream waiting for it, so a
            // free queued on the compute stream later cannot overtake a use on the communication
            // stream; (3) no buffer is written by both streams at once: the ring receives into
            // the block compute is not reading. Called before any stream or buffer exists, so it
            // covers all of them.
            unsafe { ctx.disable_event_tracking() };
        }
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("{e:?}"))?;
        let arch = arch_for(major, minor)?;
        let name = ctx.name().map_err(|e| anyhow!("{e:?}"))?;
        if let Some(dir) = include {
            // A directory named on the command line must serve; falling back silently would hide a typo.
            ensure!(
                kernels::include_dirs(Some(dir)).first().is_some_and(|d| d.starts_with(dir)),
                "--cuda-include {}: no cuda_bf16.h there (nor in its include/ or targets/*/include/)",
                dir.display()
            );
        }
        let include = kernels::include_dirs(include);
        let mut functions = HashMap::new();
        let mut refused = HashMap::new();
        let mut sources = Vec::new();
        for k in SOURCES.iter().filter(|k| k.builds_for(arch)) {
            let compiled = kernels::compile(k, arch, &include)?;
            let log = compiled.log.clone();
            let (module, format) = kernels::load(&ctx, k, arch, compiled)?;
            let mut loaded = LoadedSource { file: k.file, format, log, kernels: Vec::new(), notes: Vec::new() };
            for &e in k.entries {
                let f = module.load_function(e).map_err(|err| anyhow!("{} has no kernel {e}: {err:?}", k.file))?;
                if let Some(bytes) = launch::dynamic_shared_limit(e) {
                    // Beyond the default 48 KB of dynamic shared memory, a kernel must ask.
                    f.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                    .map_err(|err| anyhow!("{e}: allowing {bytes} bytes of dynamic shared memory: {err:?}"))?;
                }
                let r = resources(&f).map_err(|err| anyhow!("{e}: reading its registers and local memory: {err:?}"))?;
                loaded.kernels.push((e, r));
                loaded.notes.extend(kernels::spill_note(k, e, r));
                match kernels::refusal(e, r) {
                    Some(why) => {
                        loaded.notes.push(format!("REFUSED: {why}"));
                        refused.insert(e, why);
                    }
                    None => {
                        functions.insert(e, f);
                    }
                }
            }
            sources.push(loaded);
        }
        let stream = ctx.new_stream().map_err(|e| anyhow!("{e:?}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS: {e:?}"))?;
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            functions,
            name,
            arch,
            devices,
            memory: Arc::default(),
            device_peak: Cell::new(0),
            attention_kernel: Cell::new(AttentionKernel::Auto),
            timer: std::cell::RefCell::new([None, None]),
            op_timing: Cell::new(false),
            op_events: std::cell::RefCell::new(Vec::new()),
            sources,
            refused,
            flops: Default::default(),
        })
    }

    /// Whether the buffers allocated from now on carry cudarc's own per-use events (`bench launch`
    /// measures what they cost per launch; everything else runs with them off).
    pub fn set_buffer_events(&self, events: BufferEvents) {
        match events {
            // SAFETY: tracked buffers are ordered by cudarc's events as well as by the timeline's:
            // more waits, never fewer.
            BufferEvents::On => unsafe { self.ctx.enable_event_tracking() },
            // SAFETY: the three rules in `new` hold for every buffer this backend allocates.
            BufferEvents::Off => unsafe { self.ctx.disable_event_tracking() },
        }
    }

    pub fn buffer_events(&self) -> BufferEvents {
        if self.ctx.is_event_tracking() {
            BufferEvents::On
        } else {
            BufferEvents::Off
        }
    }

    /// How each kernel source was loaded (CUBIN, or PTX and why).
    pub fn loaded_sources(&self) -> &[LoadedSource] {
        &self.sources
    }

    /// The compute stream: every backend operation is queued on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Which attention kernel runs from now on; wgmma only where it was built (sm_90a).
    pub fn set_attention_kernel(&self, k: AttentionKernel) -> Result<()> {
        if k == AttentionKernel::Wgmma && !self.has_wgmma() {
            bail!("--kernel wgmma needs an sm_90a GPU (Hopper); {} is {}", self.name, self.arch);
        }
        if k == AttentionKernel::Wgmma {
            if let Some(why) = [64, 128].into_iter().filter_map(launch::wgmma_kernel).find_map(|e| self.refused.get(e)) {
                bail!("--kernel wgmma: {why}");
            }
        }
        self.attention_kernel.set(k);
        Ok(())
    }

    /// Whether the wgmma kernel was built for this GPU (sm_90a only).
    pub fn has_wgmma(&self) -> bool {
        ["flash_wgmma_d128_bf16"].iter().any(|e| self.functions.contains_key(e) || self.refused.contains_key(e))
    }

    /// Visible GPUs on this host.
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// A loaded kernel, or the reason it is not launched.
    pub(super) fn f(&self, name: &str) -> Result<&CudaFunction> {
        if let Some(why) = self.refused.get(name) {
            bail!("{why}");
        }
        Ok(self.functions.get(name).unwrap_or_else(|| panic!("kernel {name} is not in the registry")))
    }

    /// The attention kernel chosen for this backend's calls.
    pub(super) fn attention_kernel(&self) -> AttentionKernel {
        self.attention_kernel.get()
    }

    /// Counts an attention call's FLOPs (`counted_flops`).
    pub(super) fn count_attention(&self, heads: Heads, qs: Span, ks: Span, causal: bool) {
        self.flops.attention(heads, qs, ks, causal);
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, rows: usize, cols: usize) -> Result<DevMat<T>> {
        let n = rows * cols;
        let data = self
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| anyhow!("allocating {} bytes on {}: {e:?}", n * std::mem::size_of::<T>(), self.name))?;
        self.memory.add((n * std::mem::size_of::<T>()) as u64);
        Ok(DevMat { data, rows, cols, capacity_rows: rows, tracker: self.memory.clone(), stream: self.stream.clone() })
    }

    fn sample_device_memory(&self) {
        if let Ok((free, total)) = self.ctx.mem_get_info() {
            self.device_peak.set(self.device_peak.get().max((total - free) as u64));
        }
    }
}

/// A launch's scalar arguments pushed in order (`launch::Scalars`).
pub(super) fn push_scalars<'a>(l: &mut cudarc::driver::LaunchArgs<'a>, values: &'a [Scalar]) {
    for v in values {
        match v {
            Scalar::Int(x) => l.arg(x),
            Scalar::Long(x) => l.arg(x),
            Scalar::U64(x) => l.arg(x),
            Scalar::Float(x) => l.arg(x),
        };
    }
}

pub(super) fn err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |e| anyhow!("{what}: {e:?}")
}

impl Instruments for CudaBackend {
    fn device_name(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    fn peak_flops(&self) -> Option<f64> {
        peak_flops_for(&self.name)
    }

    fn counted_flops(&self) -> (f64, f64) {
        self.flops.total()
    }

    fn set_op_timing(&self, on: bool) {
        self.op_timing.set(on);
    }

    fn take_op_seconds(&self) -> Result<(f64, f64)> {
        let mut secs = (0.0, 0.0);
        for (linear, start, end) in self.op_events.take() {
            let s = start.elapsed_ms(&end).map_err(err("reading an op's events"))? as f64 / 1e3;
            if linear {
                secs.0 += s;
            } else {
                secs.1 += s;
            }
        }
        Ok(secs)
    }

    fn reset_peak_memory(&self) {
        self.memory.reset_peak();
        self.device_peak.set(0);
        self.sample_device_memory();
    }

    fn memory(&self) -> MemoryStats {
        self.sample_device_memory();
        MemoryStats { buffers_peak_bytes: self.memory.peak(), device_peak_bytes: Some(self.device_peak.get()) }
    }

    /// A GPU's memory, shared by the ranks bound to it (several only in tests that share one GPU).
    fn memory_budget(&self, sharing: usize) -> Option<u64> {
        let (_, total) = self.ctx.mem_get_info().ok()?;
        Some(total as u64 / sharing.div_ceil(self.devices).max(1) as u64)
    }

    fn timer_start(&self) -> Result<()> {
        let e = self
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(err("recording the start event"))?;
        *self.timer.borrow_mut() = [Some(e), None];
        Ok(())
    }

    fn timer_stop(&self) -> Result<()> {
        let e =
            self.stream.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(err("recording the end event"))?;
        self.timer.borrow_mut()[1] = Some(e);
        Ok(())
    }

    fn timer_elapsed(&self) -> Result<Option<f64>> {
        let [start, end] = std::mem::take(&mut *self.timer.borrow_mut());
        match (start, end) {
            (Some(s), Some(e)) => Ok(Some(s.elapsed_ms(&e).map_err(err("reading the iteration's events"))? as f64 / 1e3)),
            _ => Ok(None),
        }
    }

    fn pci_bus_id(&self) -> Option<String> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let get = |a| self.ctx.attribute(a).ok();
        let (domain, bus, device) = (
            get(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
            get(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
            get(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
        );
        Some(format!("{domain:08x}:{bus:02x}:{device:02x}.0"))
    }
}

impl crate::backend::Storage for CudaBackend {
    type Act = DevMat<u16>;
    type Acc = DevMat<f32>;
}

impl Backend for CudaBackend {
    fn alloc_act(&self, rows: usize, cols: usize) -> Result<Self::Act> {
        self.alloc(rows, cols)
    }

    fn alloc_acc(&self, rows: usize, cols: usize) -> Result<Self::Acc> {
        self.alloc(rows, cols)
    }

    fn fill(&self, out: &mut Self::Act, dst_row0: usize, region: &Region, seed: u64, init: Init) -> Result<()> {
        self.generate_now(out, dst_row0, region, seed, init)
    }

    fn matmul(&self, x: &Self::Act, w: &Self::Act, out: &mut Self::Act) -> Result<()> {
        self.timed(true, || self.matmul_now(x, w, out))
    }

    fn rms_norm(&self, x: &Self::Act, gain: &Self::Act, out: &mut Self::Act) -> Result<()> {
        self.rms_norm_now(x, gain, out)
    }

    fn rope(&self, x: &mut Self::Act, heads: Heads, span: Span, stride: usize) -> Result<()> {
        self.rope_now(x, heads, span, stride, false)
    }

    fn gelu(&self, x: &mut Self::Act) -> Result<()> {
        self.gelu_now(x)
    }

    fn swiglu(&self, gate_up: &Self::Act, out: &mut Self::Act) -> Result<()> {
        self.swiglu_now(gate_up, out)
    }

    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()> {
        self.add_now(x, y)
    }

    fn attention_reset(&self, o: &mut Self::Acc, lse: &mut Self::Acc) -> Result<()> {
        self.fill_f32_now(o, 0.0)?;
        self.fill_f32_now(lse, f32::NEG_INFINITY)
    }

    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        qs: Span,
        ks: Span,
        causal: bool,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
    ) -> Result<()> {
        self.timed(false, || self.attention_now(q, kv, heads, qs, ks, causal, o, lse))
    }

    fn attention_store(&self, o: &Self::Acc, out: &mut Self::Act) -> Result<()> {
        self.store_now(o, out)
    }

    fn attention_decode(
        &self,
        q: &Self::Act,
        kv: &Self::Act,
        heads: Heads,
        span: crate::backend::DecodeSpan,
        o: &mut Self::Acc,
        lse: &mut Self::Acc,
        scratch: &mut Self::Acc,
    ) -> Result<()> {
        self.timed(false, || self.decode_now(q, kv, heads, span, o, lse, scratch))
    }

    fn attention_merge(&self, o: &mut Self::Acc, lse: &mut Self::Acc, o_in: &Self::Acc, lse_in: &Self::Acc, in_row0: usize) -> Result<()> {
        self.merge_now(o, lse, o_in, lse_in, in_row0)
    }

    fn pack_acc(&self, acc: &Self::Acc, wire: &mut Self::Act) -> Result<()> {
        self.pack_now(acc, wire)
    }

    fn unpack_acc(&self, wire: &Self::Act, acc: &mut Self::Acc) -> Result<()> {
        self.unpack_now(wire, acc)
    }

    fn copy_block(&self, src: &Self::Act, dst: &mut Self::Act, c: BlockCopy) -> Result<()> {
        self.copy_block_now(src, dst, c)
    }

    fn copy_rows(&self, src: &Self::Act, src_row0: usize, dst: &mut Self::Act, dst_row0: usize, rows: usize) -> Result<()> {
        self.copy_rows_on(&self.stream, src, src_row0, dst, dst_row0, rows)
    }

    fn download(&self, x: &Self::Act) -> Result<Vec<bf16>> {
        Ok(x.to_host()?.into_iter().map(bf16::from_bits).collect())
    }

    fn upload(&self, x: &mut Self::Act, data: &[bf16]) -> Result<()> {
        x.from_host(bytemuck::cast_slice(data))
    }

    fn download_acc(&self, x: &Self::Acc) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(&x.data.slice(..x.len())).map_err(err("download"))
    }

    fn upload_acc(&self, x: &mut Self::Acc, data: &[f32]) -> Result<()> {
        ensure!(data.len() == x.len(), "upload: {} values into a buffer of {}", data.len(), x.len());
        let n = x.len();
        self.stream.memcpy_htod(data, &mut x.data.slice_mut(..n)).map_err(err("upload"))?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("synchronize")).context("the GPU reported an error while running the queued work")
    }
}

/// The GEMM and attention calls themselves; the trait's methods time them when asked.
impl CudaBackend {
    /// Run `op`, between two events on the compute stream while op timing is on.
    pub(super) fn timed(&self, linear: bool, op: impl FnOnce() -> Result<()>) -> Result<()> {
        if !self.op_timing.get() {
            return op();
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).map_err(err("recording an op's start event"))?;
        op()?;
        let end = self.stream.record_event(flags).map_err(err("recording an op's end event"))?;
        self.op_events.borrow_mut().push((linear, start, end));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_and_peaks() {
        assert_eq!(arch_for(9, 0).unwrap(), "sm_90a");
        assert_eq!(arch_for(8, 0).unwrap(), "sm_80");
        assert!(arch_for(7, 5).unwrap_err().to_string().contains("sm_80 or newer"));
        // The names the driver reports for each card, and the card's own dense BF16 peak.
        for (name, tflops) in [
            ("NVIDIA H100 80GB HBM3", Some(989.0)),
            ("NVIDIA H200", Some(989.0)),
            ("NVIDIA H100 PCIe", Some(756.0)),
            ("NVIDIA H100 NVL", Some(835.0)),
            ("NVIDIA H200 NVL", Some(835.0)),
            ("NVIDIA A100-SXM4-80GB", Some(312.0)),
            ("NVIDIA A100 80GB PCIe", Some(312.0)),
            ("NVIDIA GeForce RTX 4090", None),
            ("NVIDIA H800", None),
            ("NVIDIA GH200 480GB", None),
            ("NVIDIA H100", None),
        ] {
            assert_eq!(peak_flops_for(name), tflops.map(|t| t * 1e12), "{name}");
        }
    }

    #[test]
    fn without_a_driver_the_backend_says_so() {
        if driver_available() {
            eprintln!("SKIPPED: a CUDA driver is installed here; this test is for machines without one");
            return;
        }
        let e = CudaBackend::new(0, None).err().expect("no GPU here").to_string();
        assert!(e.contains("no GPU: the CUDA driver (libcuda.so) is not installed"), "{e}");
    }
}
