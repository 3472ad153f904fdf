//! The CUDA backend. `device`: the context, the loaded kernels and the `Backend` impl; the
//! launchers beside their kernels' families (`elementwise`, `attention`, `gemm`), each planning
//! its grid and checked arguments; and the parts CI checks without a GPU: the kernel registry and
//! its NVRTC build (`kernels`) and the pure arithmetic of launching (`launch`).

pub mod attention;
pub mod attention_backward;
pub mod backward;
pub mod choice;
pub mod decode;
pub mod device;
pub mod elementwise;
pub mod gemm;
pub mod kernels;
pub mod launch;
