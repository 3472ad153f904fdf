//! The kernels in `kernels/*.cu`, embedded in the binary and compiled by NVRTC at start-up for the
//! device's architecture (STYLE.md, item 5): one source per op family, `extern "C"` entry points
//! named `op_dtype`, errors that carry the source's name and NVRTC's log. The shared headers are
//! spliced in here, so a build needs only the CUDA headers (cuda_bf16.h) on its include path.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The shared headers, spliced in where a source includes them.
const HEADERS: &[(&str, &str)] =
    &[("common.cuh", include_str!("../../../kernels/common.cuh")), ("mma.cuh", include_str!("../../../kernels/mma.cuh"))];

/// A kernel source and the entry points it defines.
pub struct KernelSource {
    pub file: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
    /// Kernels on every layer's critical path: ptxas must not spill them to local memory.
    pub hot: bool,
}

pub const SOURCES: &[KernelSource] = &[
    KernelSource { file: "generate.cu", source: include_str!("../../../kernels/generate.cu"), entries: &["generate_bf16"], hot: false },
    KernelSource {
        file: "elementwise.cu",
        source: include_str!("../../../kernels/elementwise.cu"),
        entries: &["rms_norm_bf16", "rope_bf16", "gelu_bf16", "add_bf16", "fill_f32", "f32_to_bf16"],
        hot: true,
    },
    KernelSource { file: "attention.cu", source: include_str!("../../../kernels/attention.cu"), entries: &["attention_bf16"], hot: true },
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

/// PTX of one kernel source for `arch` (e.g. "sm_90a").
pub fn compile(k: &KernelSource, arch: &'static str, include: &[PathBuf]) -> Result<String> {
    if !nvrtc_available() {
        bail!("NVRTC (libnvrtc.so) not found: install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib directory on LD_LIBRARY_PATH");
    }
    if include.is_empty() {
        bail!("CUDA headers (cuda_bf16.h) not found: give --cuda-include DIR, set CUDA_HOME or CUDA_PATH, or install the CUDA toolkit under /usr/local/cuda");
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: include.iter().map(|p| p.display().to_string()).collect(),
        // IEEE division and square root, as the CPU twins compute them.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec!["--std=c++17".into(), "-default-device".into()],
        name: Some(k.file.to_string()),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(full_source(k), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            bail!("{} for {arch}: NVRTC failed:\n{}", k.file, log.to_string_lossy())
        }
        Err(e) => Err(anyhow::anyhow!("{e:?}")).with_context(|| format!("{} for {arch}", k.file)),
    }
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
            let src = full_source(k);
            assert!(!src.contains("#include \""), "{}: headers spliced", k.file);
            assert!(src.contains("#define WARPS"), "{}: header present", k.file);
        }
    }
}
