//! `ringbench info`: what this machine offers ringbench: GPUs, the CUDA driver, NVRTC, cuBLAS, NCCL
//! as they load here, and the CUDA headers NVRTC would use. Every line says "not found" rather
//! than failing, so it is the first thing to run on a new machine.

use crate::backend::cuda::{device, kernels};
use std::fmt::Write;

/// How the backend loads its kernels on GPU 0: every source compiled by NVRTC for the device's
/// architecture and loaded as a run loads them, with each kernel's registers and local memory,
/// NVRTC's log where it warned, and any kernel refused.
fn kernel_report(include: Option<&std::path::Path>) -> String {
    match device::CudaBackend::new(0, include) {
        Ok(be) => {
            let mut o = format!("kernels on GPU 0 ({}):\n", be.arch);
            for s in be.loaded_sources() {
                o.push_str(&s.describe());
            }
            o
        }
        Err(e) => format!("kernels on GPU 0: cannot be built: {e:#}\n"),
    }
}

fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// `include`: the --cuda-include directory, if given.
pub fn report(include: Option<&std::path::Path>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ringbench {} (commit {})", env!("CARGO_PKG_VERSION"), env!("RINGBENCH_GIT_COMMIT"));
    let _ = writeln!(
        o,
        "CUDA bindings: {} (the CUDA API this binary was built against)",
        version_string(cudarc::driver::sys::CUDA_VERSION as i32)
    );
    let include_dirs = kernels::include_dirs(include);
    // The simulated GPU's libraries stand in for the driver, cuBLAS and NCCL together; their
    // versions are the APIs they implement, not installed NVIDIA libraries.
    let mut simulated = false;
    if device::driver_available() {
        let mut v = 0;
        // SAFETY: the driver library is loaded (checked above); the call writes one int.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        let _ = writeln!(o, "CUDA driver: {} (libcuda.so; {r:?})", version_string(v));
        // (A simulated device says so in its name, on the GPU lines below.)
        match device::device_count() {
            Ok(n) => {
                for i in 0..n {
                    match cudarc::driver::CudaContext::new(i) {
                        Ok(ctx) => {
                            let name = ctx.name().unwrap_or_default();
                            simulated |= crate::backend::is_simulated_device(&name);
                            let (maj, min) = ctx.compute_capability().unwrap_or((0, 0));
                            let mem = ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
                            let peak = device::peak_flops_for(&name)
                                .map(|p| format!(", {:.0} TFLOP/s BF16 dense", p / 1e12))
                                .unwrap_or_else(|| ", BF16 peak unknown (MFU left empty)".into());
                            let _ = writeln!(o, "GPU {i}: {name}, compute capability {maj}.{min}, {mem:.1} GiB{peak}");
                            if i == 0 {
                                o.push_str(&kernel_report(include));
                            }
                        }
                        Err(e) => {
                            let _ = writeln!(o, "GPU {i}: cannot create a context: {e:?}");
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(o, "GPUs: {e:#}");
            }
        }
    } else {
        let _ = writeln!(
            o,
            "CUDA driver: not found (libcuda.so): no NVIDIA GPU is usable on this machine; --backend cuda and selftest need one"
        );
    }
    if kernels::nvrtc_available() {
        let (mut maj, mut min) = (0, 0);
        // SAFETY: NVRTC is loaded (checked above); the call writes two ints.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut maj, &mut min) };
        let _ = writeln!(o, "NVRTC: {maj}.{min}");
    } else {
        let _ = writeln!(o, "NVRTC: not found (libnvrtc.so); kernels cannot be compiled here");
    }
    if device::cublas_available() {
        use cudarc::cublas::sys::{cublasGetProperty, libraryPropertyType};
        let mut v = [0i32; 3];
        for (slot, p) in
            v.iter_mut().zip([libraryPropertyType::MAJOR_VERSION, libraryPropertyType::MINOR_VERSION, libraryPropertyType::PATCH_LEVEL])
        {
            // SAFETY: cuBLAS is loaded (checked above); the call writes one int and needs no handle.
            unsafe { cublasGetProperty(p, slot) };
        }
        let what = if simulated { "the simulated GPU's stand-in" } else { "libcublas.so" };
        let _ = writeln!(o, "cuBLAS: {}.{}.{} ({what})", v[0], v[1], v[2]);
    } else {
        let _ = writeln!(o, "cuBLAS: not found (libcublas.so)");
    }
    match include_dirs.first() {
        Some(d) => {
            let _ = writeln!(o, "CUDA headers: {}", d.display());
        }
        None => {
            let _ = writeln!(o, "CUDA headers: not found (give --cuda-include DIR, or set CUDA_HOME or CUDA_PATH)");
        }
    }
    match crate::comm::nccl::NcclComm::library_version() {
        Some(v) => {
            let what = if simulated { "the simulated GPU's stand-in: NCCL between processes through shared memory" } else { "libnccl.so" };
            let _ = writeln!(o, "NCCL: {v} ({what})");
        }
        None => {
            let _ = writeln!(o, "NCCL: not found (libnccl.so, unversioned); --comm nccl needs it, --comm mpi does not");
        }
    }
    o
}
