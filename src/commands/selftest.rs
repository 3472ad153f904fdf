//! `ringbench selftest`: every backend op and kernel on this machine's GPU against the CPU backend,
//! then the communicator cases through each transport the CUDA backend has.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::device::{AttentionKernel, CudaBackend};
use crate::backend::Instruments;
use crate::comm::mpi::MpiComm;
use crate::comm::nccl::NcclComm;
use crate::launch::Launch;
use std::process::ExitCode;

pub fn run(include: Option<&std::path::Path>) -> ExitCode {
    let gpu = match CudaBackend::new(0, include) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("ringbench selftest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cpu = CpuBackend::new();
    // Every op with the default attention kernel, then the attention cases with each other one.
    let mut all = true;
    let mut kernels = vec![AttentionKernel::Auto, AttentionKernel::Flash64, AttentionKernel::Plain];
    if gpu.has_wgmma() {
        kernels.push(AttentionKernel::Wgmma);
    } else {
        crate::outln!("\n{} is {}: the wgmma kernel (sm_90a only) is not built here, not tested", gpu.device_name(), gpu.arch);
    }
    for kernel in kernels {
        if let Err(e) = gpu.set_attention_kernel(kernel) {
            // A kernel refused at load (kernels::refusal) fails its table and the rest go on.
            crate::outln!("\nringbench selftest on {}, attention kernel {kernel:?}: FAIL: {e:#}", gpu.device_name());
            all = false;
            continue;
        }
        let label = format!("{}, attention kernel {kernel:?}: {} at head dim 128", gpu.device_name(), kernel.describe(128));
        crate::outln!("\nringbench selftest on {label}");
        let keep = |name: &str| kernel == AttentionKernel::Auto || name.starts_with("attention");
        match crate::selftest::run(&cpu, &gpu, &label, kernel, &keep) {
            Ok(pass) => all &= pass,
            Err(e) => {
                eprintln!("ringbench selftest: error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    crate::outln!();
    for source in gpu.loaded_sources() {
        crate::out!("{}", source.describe());
    }
    gpu.set_attention_kernel(AttentionKernel::Auto).expect("auto runs everywhere");
    match selftest_communicators(&cpu, &gpu) {
        Ok(pass) => all &= pass,
        Err(e) => {
            eprintln!("ringbench selftest: communicator cases: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The communicator cases on this GPU, through each transport the CUDA backend has: NCCL (its own
/// communication stream) and MPI with host staging. Each rank of a launch tests on its own.
fn selftest_communicators(cpu: &CpuBackend, gpu: &CudaBackend) -> anyhow::Result<bool> {
    let launch = Launch::init()?;
    let alone = || MpiComm::new(launch.world_for_strategies()).split_comm(launch.rank, 0);
    let kernel = AttentionKernel::Auto;
    let mut all = true;
    crate::outln!("\nringbench selftest of NCCL (one rank, communication stream) on {}", gpu.device_name());
    match NcclComm::library_version() {
        Some(v) => {
            let nccl = NcclComm::new(alone()?, gpu)?;
            all &= crate::selftest::comm::run(cpu, gpu, &nccl, &format!("{}, NCCL {v}", gpu.device_name()), kernel)?;
        }
        None => {
            crate::outln!("NCCL (libnccl.so, unversioned) not found: the NCCL cases cannot run: FAIL");
            all = false;
        }
    }
    crate::outln!("\nringbench selftest of MPI with host staging (one rank) on {}", gpu.device_name());
    all &= crate::selftest::comm::run(cpu, gpu, &alone()?, &format!("{}, MPI host staging", gpu.device_name()), kernel)?;
    Ok(all)
}
