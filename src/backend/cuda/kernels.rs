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
        entries: &["rms_norm_bf16", "rope_bf16", "gelu_bf16", "swiglu_bf16", "add_bf16", "fill_f32", "f32_to_bf16", "copy_block_bf16"],
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
        file: "flash_wgmma.cu",
        source: include_str!("../../../kernels/flash_wgmma.cu"),
        entries: &["flash_wgmma_d64_bf16", "flash_wgmma_d128_bf16"],
        hot: true,
        only_arch: Some("sm_90a"),
    },
];

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
    Ok(Compiled { ptx: c_text(&ptx), cubin })
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
