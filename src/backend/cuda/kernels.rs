//! The kernels in `kernels/*.cu`, embedded in the binary and compiled by NVRTC at start-up for the
//! device's architecture (STYLE.md, item 5): one source per op family, `extern "C"` entry points
//! named `op_dtype`, errors that carry the source's name and NVRTC's log. The shared headers are
//! spliced in here, so a build needs only the CUDA headers (cuda_bf16.h) on its include path.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The shared headers, spliced in where a source includes them.
const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("mma.cuh", include_str!("../../../kernels/mma.cuh")),
    ("wgmma.cuh", include_str!("../../../kernels/wgmma.cuh")),
    ("flash_common.cuh", include_str!("../../../kernels/flash_common.cuh")),
];

/// A kernel source and the entry points it defines.
pub struct KernelSource {
    pub file: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
    /// Kernels on every layer's critical path: ptxas must not spill them to local memory.
    pub hot: bool,
    /// The one architecture the source is built for, where it uses that architecture's own
    /// instructions (wgmma, TMA and setmaxnreg exist only on sm_90a); None: every architecture.
    pub only_arch: Option<&'static str>,
}

impl KernelSource {
    /// Whether this source is built for (and loaded on) `arch`.
    pub fn builds_for(&self, arch: &str) -> bool {
        self.only_arch.is_none_or(|a| a == arch)
    }
}

pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "generate.cu",
        source: include_str!("../../../kernels/generate.cu"),
        entries: &["generate_bf16"],
        hot: false,
        only_arch: None,
    },
    KernelSource {
        file: "elementwise.cu",
        source: include_str!("../../../kernels/elementwise.cu"),
        entries: &[
            "rms_norm_bf16",
            "rope_bf16",
            "gelu_bf16",
            "swiglu_bf16",
            "add_bf16",
            "fill_f32",
            "f32_to_bf16",
            "copy_block_bf16",
            "lse_merge_f32",
        ],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "attention.cu",
        source: include_str!("../../../kernels/attention.cu"),
        entries: &["attention_bf16"],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "decode_attention.cu",
        source: include_str!("../../../kernels/decode_attention.cu"),
        entries: &["decode_split_bf16", "decode_combine_f32"],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "flash_attention.cu",
        source: include_str!("../../../kernels/flash_attention.cu"),
        entries: &[
            "flash_attention_d64_m64_bf16",
            "flash_attention_d128_m64_bf16",
            "flash_attention_d64_m128_bf16",
            "flash_attention_d128_m128_bf16",
        ],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "backward.cu",
        source: include_str!("../../../kernels/backward.cu"),
        entries: &["rms_norm_backward_bf16", "gelu_backward_bf16", "swiglu_backward_bf16", "attention_delta_f32", "add_f32"],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "attention_backward.cu",
        source: include_str!("../../../kernels/attention_backward.cu"),
        entries: &["attention_backward_dq_bf16", "attention_backward_dkv_bf16"],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "flash_backward.cu",
        source: include_str!("../../../kernels/flash_backward.cu"),
        entries: &["flash_backward_d64_bf16", "flash_backward_d128_bf16"],
        hot: true,
        only_arch: None,
    },
    KernelSource {
        file: "flash_wgmma.cu",
        source: include_str!("../../../kernels/flash_wgmma.cu"),
        entries: &["flash_wgmma_d64_bf16", "flash_wgmma_d128_bf16"],
        hot: true,
        only_arch: Some("sm_90a"),
    },
];

/// The scalars a launcher pushes, as the kernel's signature declares them after its buffers (the
/// launchers' tests hold each launcher to its kernel's source).
#[cfg(test)]
pub(crate) fn declared_scalars(kernel: &str) -> usize {
    let src = SOURCES.iter().map(|k| k.source).collect::<String>();
    let at = src.find(&format!(" {kernel}(")).unwrap_or_else(|| panic!("{kernel} is defined"));
    let sig = &src[at..at + src[at..].find(')').unwrap()];
    sig.split(',').filter(|p| !p.contains('*')).count()
}

/// The architectures CI compiles for: Ampere and up, and Hopper with its arch-specific features.
pub const CHECKED_ARCHS: &[&str] = &["sm_80", "sm_90a"];

/// `source` with the shared headers spliced in where they are included.
pub fn full_source(k: &KernelSource) -> String {
    HEADERS.iter().fold(k.source.to_string(), |src, (name, text)| src.replace(&format!("#include \"{name}\""), text))
}

/// Directories to search for the CUDA headers NVRTC needs, in order: `explicit` (a flag),
/// $CUDA_HOME and $CUDA_PATH, then the usual install locations.
pub fn include_dirs(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    roots.extend(["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(PathBuf::from));
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut dirs = Vec::new();
    for root in roots {
        for sub in ["include", "targets/x86_64-linux/include", "targets/sbsa-linux/include", ""] {
            let d = if sub.is_empty() { root.clone() } else { root.join(sub) };
            if d.join("cuda_bf16.h").is_file() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Whether NVRTC's library can be loaded (it is found through the usual library path).
pub fn nvrtc_available() -> bool {
    // SAFETY: this only tries to dlopen the library under its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// One kernel source compiled for one architecture: its PTX, and its CUBIN (machine code for that
/// exact architecture) where NVRTC could produce one.
pub struct Compiled {
    pub ptx: String,
    /// None when NVRTC cannot emit machine code for `arch` (then only PTX is loadable).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log of a compile that succeeded, trimmed: empty unless NVRTC warned. Kept because
    /// a warning here (a spill, an ignored `setmaxnreg`) is what a new toolkit says first.
    pub log: String,
}

/// How a module was handed to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleFormat {
    /// Machine code for the device's exact architecture: no JIT at load, and no dependence on the
    /// driver accepting this NVRTC's PTX version.
    Cubin,
    /// PTX, JIT-compiled by the driver, with the reason the CUBIN was not used.
    Ptx { why: String },
}

impl std::fmt::Display for ModuleFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleFormat::Cubin => write!(f, "CUBIN"),
            ModuleFormat::Ptx { why } => write!(f, "PTX (JIT by the driver; no CUBIN: {why})"),
        }
    }
}

/// The NVRTC options every kernel is built with for `arch` (a real architecture, e.g. "sm_90a",
/// so that NVRTC emits machine code beside the PTX).
fn options(arch: &str, include: &[PathBuf]) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={arch}")];
    o.extend(include.iter().map(|p| format!("--include-path={}", p.display())));
    // IEEE division and square root, as the CPU twins compute them.
    o.extend(["--prec-div=true", "--prec-sqrt=true", "--std=c++17", "-default-device"].map(String::from));
    o
}

/// The text of a NUL-terminated buffer NVRTC filled.
fn c_text(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One kernel source compiled for `arch` (e.g. "sm_90a"): PTX, and CUBIN where NVRTC has it.
pub fn compile(k: &KernelSource, arch: &str, include: &[PathBuf]) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_available() {
        bail!("NVRTC (libnvrtc.so) not found: install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib directory on LD_LIBRARY_PATH");
    }
    if include.is_empty() {
        bail!("CUDA headers (cuda_bf16.h) not found: give --cuda-include DIR, set CUDA_HOME or CUDA_PATH, or install the CUDA toolkit under /usr/local/cuda");
    }
    let src = std::ffi::CString::new(full_source(k)).with_context(|| format!("{}: a NUL byte in the source", k.file))?;
    let name = std::ffi::CString::new(k.file).expect("file names have no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| anyhow!("{}: nvrtcCreateProgram: {e:?}", k.file))?;
    /// Destroys the program however the compile ends.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created above and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let prog = Program(prog);
    // SAFETY: `prog` is a live program (created above, destroyed on drop); the options are C strings.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options(arch, include)) } {
        // SAFETY: as above; the log exists once a compile has been attempted.
        let log = unsafe { result::get_program_log(prog.0) }.map(|l| c_text(&l)).unwrap_or_default();
        bail!("{} for {arch}: NVRTC failed ({e:?}):\n{log}", k.file);
    }
    // SAFETY: as above, after a successful compile.
    let ptx = unsafe { result::get_ptx(prog.0) }.map_err(|e| anyhow!("{} for {arch}: nvrtcGetPTX: {e:?}", k.file))?;
    let mut size = 0usize;
    // SAFETY: as above; NVRTC writes the CUBIN's size, then exactly that many bytes into a buffer
    // of that size. It refuses (NVRTC_ERROR_INVALID_INPUT) when the architecture is virtual.
    let cubin = unsafe {
        (sys::nvrtcGetCUBINSize(prog.0, &mut size).result().is_ok() && size > 0)
            .then(|| {
                let mut buf = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()).result().ok().map(|_| buf)
            })
            .flatten()
    };
    // SAFETY: as above; a successful compile leaves a log too, empty unless NVRTC warned.
    let log = unsafe { result::get_program_log(prog.0) }.map(|l| c_text(&l).trim().to_string()).unwrap_or_default();
    Ok(Compiled { ptx: c_text(&ptx), cubin, log })
}

/// Registers per thread the producer warpgroup of the wgmma kernel keeps, and each consumer
/// warpgroup takes (`setmaxnreg_dec<24>` and `setmaxnreg_inc<240>` in kernels/flash_wgmma.cu).
pub const WGMMA_PRODUCER_REGISTERS: u32 = 24;
pub const WGMMA_CONSUMER_REGISTERS: u32 = 240;

/// The fewest registers per thread the wgmma kernel must be launched with: `setmaxnreg.inc`
/// waits until the block's pool holds what it asks for, and the pool is what the block was
/// launched with, so the one warpgroup's 24 and the two warpgroups' 240 must fit in it:
/// 24 x 128 + 240 x 256 = 64,512 = 168 x 384. Fewer, and the consumers wait forever.
pub fn wgmma_min_registers() -> u32 {
    (WGMMA_PRODUCER_REGISTERS * 128 + WGMMA_CONSUMER_REGISTERS * 256).div_ceil(super::launch::WGMMA_THREADS)
}

/// What the driver says one loaded kernel uses per thread (`CU_FUNC_ATTRIBUTE_NUM_REGS` and
/// `CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub registers: u32,
    pub local_bytes: u32,
}

/// Why `entry`, loaded with `r`, must not be launched, if it must not: the wgmma kernels, whose
/// register budget is exact (a launch with fewer registers would hang, not fail) and whose
/// prediction assumes no local memory. Checked at load, so a refusal names the kernel before
/// any work rather than a job that never ends.
pub fn refusal(entry: &str, r: Resources) -> Option<String> {
    if !entry.starts_with("flash_wgmma_") {
        return None;
    }
    let need = wgmma_min_registers();
    if r.registers < need {
        return Some(format!(
            "{entry} was loaded with {} registers per thread, fewer than the {need} its warpgroups' setmaxnreg budget needs \
             ({WGMMA_PRODUCER_REGISTERS} x 128 + {WGMMA_CONSUMER_REGISTERS} x 256 = {need} x {}): setmaxnreg.inc would wait forever, so it is not launched",
            r.registers,
            super::launch::WGMMA_THREADS
        ));
    }
    if r.local_bytes > 0 {
        return Some(format!(
            "{entry} was loaded with {} bytes of local memory per thread (a stack frame or spills): its register budget did not hold as compiled, so it is not launched",
            r.local_bytes
        ));
    }
    None
}

/// A note for a hot kernel that the driver loaded with local memory (a stack frame or spills,
/// both off-chip): it runs, slower than its prediction assumes.
pub fn spill_note(k: &KernelSource, entry: &str, r: Resources) -> Option<String> {
    (k.hot && r.local_bytes > 0).then(|| {
        format!("note: {entry} uses {} bytes of local memory per thread (a stack frame or spills, off-chip) in a hot kernel", r.local_bytes)
    })
}

/// Load one compiled source into `ctx`: its CUBIN where there is one and the driver takes it,
/// else its PTX (JIT), saying why.
pub fn load(
    ctx: &std::sync::Arc<cudarc::driver::CudaContext>,
    k: &KernelSource,
    arch: &str,
    compiled: Compiled,
) -> Result<(std::sync::Arc<cudarc::driver::CudaModule>, ModuleFormat)> {
    let why = match compiled.cubin {
        Some(cubin) => match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
            Ok(m) => return Ok((m, ModuleFormat::Cubin)),
            Err(e) => format!("the driver refused it: {e:?}"),
        },
        None => format!("NVRTC emits none for {arch}"),
    };
    let m = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(compiled.ptx))
        .map_err(|e| anyhow!("loading {} for {arch} (CUBIN not used: {why}; PTX refused too): {e:?}", k.file))?;
    Ok((m, ModuleFormat::Ptx { why }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wgmma_register_budget_is_the_sources_and_a_short_one_is_refused() {
        let src = SOURCES.iter().find(|k| k.file == "flash_wgmma.cu").unwrap().source;
        assert!(src.contains(&format!("setmaxnreg_dec<{WGMMA_PRODUCER_REGISTERS}>()")), "producer's count");
        assert!(src.contains(&format!("setmaxnreg_inc<{WGMMA_CONSUMER_REGISTERS}>()")), "consumers' count");
        assert!(src.contains(&format!("#define FW_THREADS {}", super::super::launch::WGMMA_THREADS)));
        assert_eq!(wgmma_min_registers(), 168);
        let fits = Resources { registers: 168, local_bytes: 0 };
        assert_eq!(refusal("flash_wgmma_d128_bf16", fits), None);
        assert_eq!(refusal("flash_wgmma_d64_bf16", Resources { registers: 200, local_bytes: 0 }), None);
        let short = refusal("flash_wgmma_d128_bf16", Resources { registers: 160, local_bytes: 0 }).unwrap();
        assert!(short.contains("flash_wgmma_d128_bf16 was loaded with 160 registers") && short.contains("wait forever"), "{short}");
        let spilled = refusal("flash_wgmma_d64_bf16", Resources { registers: 168, local_bytes: 16 }).unwrap();
        assert!(spilled.contains("16 bytes of local memory"), "{spilled}");
        // Other kernels are never refused; a hot one that spills is noted.
        assert_eq!(refusal("flash_attention_d128_m128_bf16", Resources { registers: 64, local_bytes: 32 }), None);
        let flash = SOURCES.iter().find(|k| k.file == "flash_attention.cu").unwrap();
        assert!(spill_note(flash, "flash_attention_d128_m128_bf16", Resources { registers: 255, local_bytes: 32 }).is_some());
        assert!(spill_note(flash, "flash_attention_d128_m128_bf16", Resources { registers: 255, local_bytes: 0 }).is_none());
    }

    #[test]
    fn every_entry_point_is_defined_as_extern_c_in_its_source() {
        for k in SOURCES {
            for e in k.entries {
                // A kernel is defined as `extern "C" __global__ void name(`, or through a macro that
                // writes that line, invoked as `MACRO(name, ...)`.
                let defined = k.source.lines().any(|l| {
                    (l.starts_with("extern \"C\" __global__ ") && l.contains(&format!(" {e}("))) || l.contains(&format!("_ENTRY({e},"))
                });
                assert!(defined, "{} lacks extern \"C\" __global__ ... {e}(", k.file);
            }
            // And the converse: a kernel in the source that the registry lacks could never be launched.
            for l in k.source.lines().filter(|l| l.starts_with("extern \"C\" __global__ void ")) {
                let name = l["extern \"C\" __global__ void ".len()..].split('(').next().unwrap_or_default();
                assert!(k.entries.contains(&name), "{}: kernel {name} is defined but not in the registry", k.file);
            }
            let src = full_source(k);
            assert!(!src.contains("#include \""), "{}: headers spliced", k.file);
            assert!(src.contains("#define WARPS"), "{}: header present", k.file);
        }
    }
}
