//! Launch geometry, checked kernel arguments and cuBLAS argument mapping: the arithmetic of
//! running the kernels on row-major buffers, pure and unit-tested without a GPU. Each kernel
//! family's launchers (`elementwise`, `attention`) plan a launch with these: the grid, and the
//! scalar arguments converted with their ranges checked, in signature order.

use anyhow::{bail, Result};

/// Threads per block of the element-wise and row kernels (BLOCK in kernels/common.cuh).
pub const BLOCK: u32 = 256;
/// Query rows per attention block: one warp each (WARPS in kernels/common.cuh).
pub const ATTENTION_WARPS: u32 = 4;
/// Largest head dim the attention kernel takes: 32 lanes x MAX_PER_LANE.
pub const MAX_HEAD_DIM: usize = 32 * 8;

/// A launch: grid and block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// Largest grid x-dimension (2^31 - 1).
pub const MAX_GRID_X: u64 = (1 << 31) - 1;
/// Largest grid y-dimension.
pub const MAX_GRID_Y: usize = 65535;

/// A kernel's scalar argument, as the C type its signature takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Int(i32),
    Long(i64),
    U64(u64),
    Float(f32),
}

/// A kernel's scalar arguments in signature order, each converted to the kernel's C type with its
/// range checked: a value past `int` is refused with the kernel and argument named, never
/// wrapped as `as i32` would.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalars {
    pub kernel: &'static str,
    pub values: Vec<Scalar>,
}

impl Scalars {
    pub fn new(kernel: &'static str) -> Self {
        Scalars { kernel, values: Vec::new() }
    }

    /// `v` as the kernel's `int`.
    pub fn int(mut self, name: &str, v: usize) -> Result<Self> {
        match i32::try_from(v) {
            Ok(x) => self.values.push(Scalar::Int(x)),
            Err(_) => bail!("{}: {name} = {v} exceeds the kernel's int argument (at most {})", self.kernel, i32::MAX),
        }
        Ok(self)
    }

    /// `v` as the kernel's `long long`.
    pub fn long(mut self, name: &str, v: usize) -> Result<Self> {
        match i64::try_from(v) {
            Ok(x) => self.values.push(Scalar::Long(x)),
            Err(_) => bail!("{}: {name} = {v} exceeds the kernel's 64-bit argument", self.kernel),
        }
        Ok(self)
    }

    /// `v` as the kernel's `int`, signed (RoPE's backward runs at negated positions).
    pub fn signed(mut self, name: &str, v: i64) -> Result<Self> {
        match i32::try_from(v) {
            Ok(x) => self.values.push(Scalar::Int(x)),
            Err(_) => bail!("{}: {name} = {v} exceeds the kernel's int argument", self.kernel),
        }
        Ok(self)
    }

    /// A flag or a code the kernel takes as `int` (0 or 1, a small enumeration).
    pub fn code(mut self, v: i32) -> Self {
        self.values.push(Scalar::Int(v));
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.values.push(Scalar::U64(v));
        self
    }

    pub fn float(mut self, v: f32) -> Self {
        self.values.push(Scalar::Float(v));
        self
    }
}

/// A launch as its launcher planned it: the grid and the checked scalar arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub geometry: Geometry,
    pub scalars: Scalars,
}

/// The grid of one thread per element of `n` for `kernel`, refused where one launch cannot
/// cover them.
pub fn checked_elementwise(kernel: &str, n: usize) -> Result<Geometry> {
    if (n as u64).div_ceil(BLOCK as u64) > MAX_GRID_X {
        bail!("{kernel}: {n} elements exceed one launch ({} blocks of {BLOCK} at most)", MAX_GRID_X);
    }
    Ok(elementwise(n))
}

/// `heads` as a grid's y dimension for `kernel`, refused beyond its limit.
pub fn check_grid_heads(kernel: &str, heads: usize) -> Result<()> {
    if heads > MAX_GRID_Y {
        bail!("{kernel}: {heads} heads exceed the grid's y dimension ({MAX_GRID_Y})");
    }
    Ok(())
}

/// One thread per element of `n`.
pub fn elementwise(n: usize) -> Geometry {
    let blocks = (n as u64).div_ceil(BLOCK as u64).max(1);
    assert!(blocks <= MAX_GRID_X, "{n} elements exceed one launch");
    Geometry { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1) }
}

/// One block per row (RMSNorm).
pub fn per_row(rows: usize) -> Geometry {
    assert!(rows as u64 <= MAX_GRID_X);
    Geometry { grid: (rows.max(1) as u32, 1, 1), block: (BLOCK, 1, 1) }
}

/// One warp per query row and head: x covers the rows in groups of ATTENTION_WARPS, y the heads
/// (at most 65535).
pub fn attention(q_len: usize, heads: usize, head_dim: usize) -> Geometry {
    assert!(head_dim <= MAX_HEAD_DIM, "head dim {head_dim} above the kernel's {MAX_HEAD_DIM}");
    assert!(heads <= 65535, "{heads} heads exceed the grid's y dimension");
    let blocks = (q_len as u64).div_ceil(ATTENTION_WARPS as u64).max(1);
    Geometry { grid: (blocks as u32, heads as u32, 1), block: (32 * ATTENTION_WARPS, 1, 1) }
}

/// The flash-attention entry point for a head dim and a block of `rows` query rows (BM in
/// kernels/flash_attention.cu: 64 or 128, in warps of 16 rows), where the kernel has one.
pub fn flash_kernel(head_dim: usize, rows: usize) -> Option<&'static str> {
    match (head_dim, rows) {
        (64, 64) => Some("flash_attention_d64_m64_bf16"),
        (128, 64) => Some("flash_attention_d128_m64_bf16"),
        (64, 128) => Some("flash_attention_d64_m128_bf16"),
        (128, 128) => Some("flash_attention_d128_m128_bf16"),
        _ => None,
    }
}

/// Query rows per block of the wgmma kernel (FW_BM in kernels/flash_wgmma.cu), its threads
/// (FW_THREADS: a producer and two consumer warpgroups), its keys per TMA box row count (FW_BN)
/// and columns per box (FW_SLAB: one 128-byte swizzle row of BF16).
pub const WGMMA_ROWS: usize = 128;
pub const WGMMA_THREADS: u32 = 384;
pub const WGMMA_BOX: [u32; 2] = [64, 128];

/// The wgmma entry point for a head dim, where there is one.
pub fn wgmma_kernel(head_dim: usize) -> Option<&'static str> {
    match head_dim {
        64 => Some("flash_wgmma_d64_bf16"),
        128 => Some("flash_wgmma_d128_bf16"),
        _ => None,
    }
}

/// Dynamic shared memory of the wgmma kernel at a head dim (FwSmem<D>::LAUNCH_BYTES): the Q tile
/// and two stages of K and V tiles (128 rows x D BF16 each), seven 8-byte mbarriers, and 1024
/// bytes to align the base to the 128-byte swizzle's 1024-byte grid.
pub fn wgmma_shared_bytes(head_dim: usize) -> u32 {
    let tile = WGMMA_ROWS * head_dim * 2;
    (tile * 5 + 8 * 7 + 1024) as u32
}

/// The dynamic shared memory an entry point may ask for, set as its attribute at load (a launch
/// past the default 48 KB fails without it); None for kernels with static shared memory only.
pub fn dynamic_shared_limit(entry: &str) -> Option<u32> {
    match entry {
        "rms_norm_backward_bf16" => Some((RMS_BACKWARD_MAX_COLS * 4) as u32),
        _ => [64, 128].into_iter().find_map(|hd| {
            (wgmma_kernel(hd) == Some(entry))
                .then(|| wgmma_shared_bytes(hd))
                .or_else(|| (flash_backward_kernel(hd) == Some(entry)).then(|| flash_backward_shared_bytes(hd)))
        }),
    }
}

/// The wgmma kernel's grid: one block of 128 query rows per head.
pub fn wgmma_attention(q_len: usize, heads: usize) -> Geometry {
    assert!(heads <= 65535, "{heads} heads exceed the grid's y dimension");
    let blocks = (q_len as u64).div_ceil(WGMMA_ROWS as u64).max(1);
    assert!(blocks <= MAX_GRID_X);
    Geometry { grid: (blocks as u32, heads as u32, 1), block: (WGMMA_THREADS, 1, 1) }
}

/// One block per `rows` query rows and head, 32 threads per 16 rows.
pub fn flash_attention(q_len: usize, heads: usize, rows: usize) -> Geometry {
    assert!(heads <= 65535, "{heads} heads exceed the grid's y dimension");
    let blocks = (q_len as u64).div_ceil(rows as u64).max(1);
    assert!(blocks <= MAX_GRID_X);
    Geometry { grid: (blocks as u32, heads as u32, 1), block: (2 * rows as u32, 1, 1) }
}

/// A column-major cuBLAS GEMM C = op(A) op(B), C m x n with leading dimension ldc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColMajorGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is this operand's buffer, transposed (op = T) where `ta`, lda its leading dimension.
    pub a: Operand,
    pub ta: bool,
    pub lda: usize,
    pub b: Operand,
    pub tb: bool,
    pub ldb: usize,
    pub ldc: usize,
}

/// An op's two inputs, in its argument order: (x, w) of `matmul`, (dy, w) of
/// `matmul_backward_input`, (x, dy) of `matmul_backward_weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    X,
    W,
}

/// Row-major out[m, n] = x[m, k] w[k, n] as a column-major GEMM without transposes: a row-major
/// matrix is its transpose in column-major, so out^T = w^T x^T: cuBLAS's A is w (n x k, ld n),
/// its B is x (k x m, ld k), its C is out (n x m, ld n).
pub fn row_major_gemm(m: usize, k: usize, n: usize) -> ColMajorGemm {
    ColMajorGemm { m: n, n: m, k, a: Operand::W, ta: false, lda: n, b: Operand::X, tb: false, ldb: k, ldc: n }
}

/// Row-major dx[m, k] = dy[m, n] w[k, n]^T (`matmul_backward_input`): dx^T = w dy^T, where w is
/// read as its column-major n x k self transposed (A = w, op T, ld n) and dy^T is dy's buffer
/// (B, n x m, ld n); C is dx (k x m, ld k).
pub fn row_major_gemm_input_grad(m: usize, n: usize, k: usize) -> ColMajorGemm {
    ColMajorGemm { m: k, n: m, k: n, a: Operand::W, ta: true, lda: n, b: Operand::X, tb: false, ldb: n, ldc: k }
}

/// Row-major dw[k, n] (+)= x[m, k]^T dy[m, n] (`matmul_backward_weight`): dw^T = dy^T x, where
/// dy^T is dy's buffer (A, n x m, ld n) and x is its column-major k x m self transposed (B, op T,
/// ld k); C is dw (n x k, ld n).
pub fn row_major_gemm_weight_grad(m: usize, k: usize, n: usize) -> ColMajorGemm {
    ColMajorGemm { m: n, n: k, k: m, a: Operand::W, ta: false, lda: n, b: Operand::X, tb: true, ldb: k, ldc: n }
}

/// Keys per block of the flash backward kernel (FB_BN in kernels/flash_backward.cu), its threads
/// (FB_THREADS: 4 warps of 16 keys) and queries per tile (FB_BM).
pub const FLASH_BACKWARD_KEYS: usize = 64;
pub const FLASH_BACKWARD_THREADS: u32 = 128;
pub const FLASH_BACKWARD_QUERIES: usize = 64;

/// The flash backward entry point for a head dim, where there is one.
pub fn flash_backward_kernel(head_dim: usize) -> Option<&'static str> {
    match head_dim {
        64 => Some("flash_backward_d64_bf16"),
        128 => Some("flash_backward_d128_bf16"),
        _ => None,
    }
}

/// Dynamic shared memory of the flash backward kernel (FbSmem<D>::BYTES): K, V, Q and dO tiles of
/// 64 rows with rows padded to D + 8, dS^T (64 x 72), all BF16, then the tile's lse and delta.
pub fn flash_backward_shared_bytes(head_dim: usize) -> u32 {
    let halves = 4 * 64 * (head_dim + 8) + FLASH_BACKWARD_KEYS * (FLASH_BACKWARD_QUERIES + 8);
    (halves * 2 + 2 * FLASH_BACKWARD_QUERIES * 4) as u32
}

/// The flash backward grid: one block per 64 keys and K/V head.
pub fn flash_backward(k_len: usize, kv_heads: usize) -> Geometry {
    assert!(kv_heads <= 65535, "{kv_heads} K/V heads exceed the grid's y dimension");
    let blocks = (k_len as u64).div_ceil(FLASH_BACKWARD_KEYS as u64).max(1);
    assert!(blocks <= MAX_GRID_X);
    Geometry { grid: (blocks as u32, kv_heads as u32, 1), block: (FLASH_BACKWARD_THREADS, 1, 1) }
}

/// Rows per block of rms_norm_backward_bf16 (RMS_ROWS in kernels/backward.cu), and the widest
/// row it takes: its dynamic shared memory holds a row's FP32 gain gradient, and the backend asks
/// for this much at load (the default is 48 KB; every architecture from sm_80 allows more).
pub const RMS_BACKWARD_ROWS: usize = 32;
pub const RMS_BACKWARD_MAX_COLS: usize = 24 * 1024;

/// rms_norm_backward_bf16's grid: one block per RMS_BACKWARD_ROWS rows.
pub fn rms_norm_backward(rows: usize) -> Geometry {
    let blocks = (rows as u64).div_ceil(RMS_BACKWARD_ROWS as u64).max(1);
    assert!(blocks <= MAX_GRID_X);
    Geometry { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cuBLAS computes for a column-major GEMM C = op(A) op(B) (cuBLAS's definition).
    fn col_major(g: &ColMajorGemm, a: &[f64], b: &[f64]) -> Vec<f64> {
        let at = |i: usize, p: usize| if g.ta { a[p + i * g.lda] } else { a[i + p * g.lda] };
        let bt = |p: usize, j: usize| if g.tb { b[j + p * g.ldb] } else { b[p + j * g.ldb] };
        let mut c = vec![0.0; g.ldc * g.n];
        for j in 0..g.n {
            for i in 0..g.m {
                c[i + j * g.ldc] = (0..g.k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    /// The operands in the mapping's order, from the op's (first, second) inputs.
    fn operands<'a>(g: &ColMajorGemm, first: &'a [f64], second: &'a [f64]) -> (&'a [f64], &'a [f64]) {
        let pick = |o: Operand| if o == Operand::X { first } else { second };
        (pick(g.a), pick(g.b))
    }

    #[test]
    fn the_backward_gemm_mappings_compute_the_row_major_gradients() {
        let (m, k, n) = (5, 3, 7);
        let v = |len: usize, f: f64| (0..len).map(|i| (i as f64 * f).sin()).collect::<Vec<f64>>();
        let (x, w, dy) = (v(m * k, 0.7), v(k * n, 1.3), v(m * n, 0.4));
        // dx[m, k] = dy w^T.
        let g = row_major_gemm_input_grad(m, n, k);
        let (a, b) = operands(&g, &dy, &w);
        let dx = col_major(&g, a, b);
        for r in 0..m {
            for c in 0..k {
                let want: f64 = (0..n).map(|p| dy[r * n + p] * w[c * n + p]).sum();
                assert!((dx[r * k + c] - want).abs() < 1e-12, "dx[{r},{c}]");
            }
        }
        // dw[k, n] = x^T dy.
        let g = row_major_gemm_weight_grad(m, k, n);
        let (a, b) = operands(&g, &x, &dy);
        let dw = col_major(&g, a, b);
        for r in 0..k {
            for c in 0..n {
                let want: f64 = (0..m).map(|p| x[p * k + r] * dy[p * n + c]).sum();
                assert!((dw[r * n + c] - want).abs() < 1e-12, "dw[{r},{c}]");
            }
        }
    }

    #[test]
    fn the_flash_backward_launch_covers_every_key_with_its_shared_memory() {
        for (k_len, kvh) in [(1usize, 1usize), (64, 8), (65, 8), (100_000, 8)] {
            let g = flash_backward(k_len, kvh);
            assert_eq!((g.grid.1 as usize, g.block.0), (kvh, FLASH_BACKWARD_THREADS));
            let keys = g.grid.0 as usize * FLASH_BACKWARD_KEYS;
            assert!(keys >= k_len && keys < k_len + FLASH_BACKWARD_KEYS);
        }
        // FbSmem<D>::BYTES: 4 tiles of 64 x (D + 8) and 64 x 72 BF16, 2 x 64 floats.
        assert_eq!(flash_backward_shared_bytes(64), 46_592);
        assert_eq!(flash_backward_shared_bytes(128), 79_360);
        assert_eq!(rms_norm_backward(65).grid.0, 3);
    }

    #[test]
    fn the_gemm_mapping_computes_the_row_major_product() {
        let (m, k, n) = (5, 3, 7);
        let x: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 3.0).collect();
        let w: Vec<f64> = (0..k * n).map(|i| (i as f64).sin()).collect();
        let g = row_major_gemm(m, k, n);
        let (a, b) = match (g.a, g.b) {
            (Operand::W, Operand::X) => (&w, &x),
            _ => (&x, &w),
        };
        let out = col_major(&g, a, b);
        for r in 0..m {
            for c in 0..n {
                let want: f64 = (0..k).map(|p| x[r * k + p] * w[p * n + c]).sum();
                assert!((out[r * n + c] - want).abs() < 1e-12, "[{r},{c}]");
            }
        }
    }

    #[test]
    fn geometries_cover_every_element_once_and_stay_in_bounds() {
        for n in [1usize, 255, 256, 257, 100_003] {
            let g = elementwise(n);
            let threads = g.grid.0 as usize * g.block.0 as usize;
            assert!(threads >= n && threads < n + BLOCK as usize, "n {n}");
        }
        for (q, heads) in [(1usize, 1usize), (6250, 32), (6251, 4), (100_000, 32)] {
            let g = attention(q, heads, 128);
            assert_eq!(g.grid.1 as usize, heads);
            let rows = g.grid.0 as usize * ATTENTION_WARPS as usize;
            assert!(rows >= q && rows < q + ATTENTION_WARPS as usize);
            assert_eq!(g.block.0, 32 * ATTENTION_WARPS);
        }
        assert_eq!(per_row(6250).grid.0, 6250);
    }

    #[test]
    fn flash_blocks_cover_every_query_row_and_head() {
        for block in [64usize, 128] {
            for (q_len, heads) in [(1usize, 1usize), (63, 2), (64, 32), (65, 32), (6250, 32)] {
                let g = flash_attention(q_len, heads, block);
                assert_eq!((g.grid.1 as usize, g.block.0 as usize), (heads, 2 * block));
                let rows = g.grid.0 as usize * block;
                assert!(rows >= q_len && rows < q_len + block, "{q_len}: {rows} rows");
            }
        }
        assert_eq!(flash_kernel(128, 128), Some("flash_attention_d128_m128_bf16"));
        // The wgmma kernel: 160 KB + barriers + alignment at d128 (within the H100's 227 KB).
        assert_eq!(wgmma_shared_bytes(128), 163_840 + 56 + 1024);
        assert_eq!(wgmma_shared_bytes(64), 81_920 + 56 + 1024);
        assert_eq!(wgmma_kernel(96), None);
        let g = wgmma_attention(6250, 32);
        assert_eq!((g.grid, g.block), ((49, 32, 1), (384, 1, 1)));
        assert_eq!(flash_kernel(96, 64), None);
        assert_eq!(flash_kernel(64, 32), None);
    }

    #[test]
    #[should_panic(expected = "head dim 512 above")]
    fn a_head_dim_beyond_the_kernel_is_refused() {
        attention(10, 1, 512);
    }
}
