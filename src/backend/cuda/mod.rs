//! The CUDA backend's parts that need no GPU, so that CI checks them on every change: the kernel
//! registry and its NVRTC build (`kernels`), and the pure arithmetic of launching them and of
//! calling cuBLAS on row-major buffers (`launch`).

pub mod device;
pub mod kernels;
pub mod launch;
