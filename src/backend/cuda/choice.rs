//! Which attention kernel the backend launches (`--kernel`), and what each choice runs at a head
//! dim: pure, so the command line, the benchmarks and the self-test read it without a GPU.

use super::launch;

/// Which attention kernel the backend launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The tensor-core flash kernel where it has the head dim (64, 128), else the plain one. Its
    /// block shape is 128 query rows, by the prediction in kernels/NOTES.md until measured.
    Auto,
    /// The flash kernel with 128 query rows per block (8 warps).
    Flash128,
    /// The flash kernel with 64 query rows per block (4 warps).
    Flash64,
    /// The Hopper flash kernel (wgmma + TMA, sm_90a only; kernels/flash_wgmma.cu), 128 query
    /// rows per block; the plain kernel for head dims other than 64 and 128.
    Wgmma,
    /// The plain one-warp-per-query kernel, for comparison.
    Plain,
}

impl AttentionKernel {
    /// The name `--kernel` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Auto => "auto",
            AttentionKernel::Flash128 => "flash128",
            AttentionKernel::Flash64 => "flash64",
            AttentionKernel::Wgmma => "wgmma",
            AttentionKernel::Plain => "plain",
        }
    }

    /// Query rows per block of the mma.sync flash kernel, or None (the plain kernel, or wgmma).
    pub fn flash_rows(self) -> Option<usize> {
        match self {
            AttentionKernel::Auto | AttentionKernel::Flash128 => Some(128),
            AttentionKernel::Flash64 => Some(64),
            AttentionKernel::Plain | AttentionKernel::Wgmma => None,
        }
    }

    /// The wgmma entry point that runs head dim `head_dim` under this choice, if any.
    pub fn wgmma_kernel(self, head_dim: usize) -> Option<&'static str> {
        (self == AttentionKernel::Wgmma).then(|| launch::wgmma_kernel(head_dim)).flatten()
    }

    /// The flash backward entry point that runs head dim `head_dim` under this choice: every
    /// choice but `Plain` (which runs the plain backward too, for comparison) where the kernel
    /// has the head dim.
    pub fn backward_flash(self, head_dim: usize) -> Option<&'static str> {
        (self != AttentionKernel::Plain).then(|| launch::flash_backward_kernel(head_dim)).flatten()
    }

    /// The key tile of the flash kernel that runs head dim `head_dim` (its CPU twin takes keys in
    /// the same tiles), or None where the plain kernel runs it.
    pub fn twin_tile(self, head_dim: usize) -> Option<usize> {
        if self.wgmma_kernel(head_dim).is_some() {
            return Some(crate::backend::flash_twin::WGMMA_TILE);
        }
        self.flash_rows().and_then(|r| launch::flash_kernel(head_dim, r)).map(|_| crate::backend::flash_twin::MMA_SYNC_TILE)
    }

    /// What runs attention's backward at head dim `head_dim` under this choice.
    pub fn describe_backward(self, head_dim: usize) -> String {
        match self.backward_flash(head_dim) {
            Some(_) => "flash backward, 64 keys per block, 64-query tiles (mma.sync, dQ by FP32 atomics)".to_string(),
            None => "plain backward (one warp per query row for dQ, per key row for dK and dV)".to_string(),
        }
    }

    /// What runs attention of head dim `head_dim` under this choice.
    pub fn describe(self, head_dim: usize) -> String {
        if self.wgmma_kernel(head_dim).is_some() {
            return format!("flash, {} query rows per block (wgmma + TMA, sm_90a)", launch::WGMMA_ROWS);
        }
        match self.flash_rows().filter(|&r| launch::flash_kernel(head_dim, r).is_some()) {
            Some(rows) => format!("flash, {rows} query rows per block (mma.sync)"),
            None => "plain (one warp per query row)".to_string(),
        }
    }
}
