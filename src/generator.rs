//! The normative generator (docs/design.md, "The model, exactly"): every weight and input value is a pure
//! function of (seed, tensor id, global index), so a shard generates exactly its slice of the whole
//! tensor with no communication, on any backend.

use half::bf16;

/// splitmix64 finaliser, wrapping arithmetic on u64.
pub fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// u(seed, tensor, index): uniform in [-1, 1), exact in FP32 (24 random bits).
pub fn uniform(seed: u64, tensor: u64, index: u64) -> f32 {
    let stream = splitmix64(seed.wrapping_add(tensor.wrapping_shl(32)));
    let bits = splitmix64(stream.wrapping_add(index)) >> 40;
    (bits as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
}

/// How a tensor's values derive from u.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// The input hidden states: u itself.
    Uniform,
    /// A weight matrix with `fan_in` rows: u / sqrt(fan_in), the scale rounded to FP32 first.
    Weight { fan_in: usize },
    /// An RMSNorm gain: 1 + u / 16.
    Gain,
}

impl Init {
    /// The FP32 value before the BF16 rounding.
    pub fn value(self, u: f32) -> f32 {
        match self {
            Init::Uniform => u,
            Init::Weight { fan_in } => u * (1.0 / (fan_in as f64).sqrt()) as f32,
            Init::Gain => 1.0 + u / 16.0,
        }
    }
}

/// The stored BF16 value at one global index (round to nearest, ties to even).
pub fn value_bf16(seed: u64, tensor: u64, index: u64, init: Init) -> bf16 {
    bf16::from_f32(init.value(uniform(seed, tensor, index)))
}

/// Tensor id of the input hidden states, shape [batch, seq, d_model].
pub const INPUT_TENSOR: u64 = 1;

/// Tensor id of the decode steps' input rows, step-major [decode tokens, batch, d_model]: step
/// i's row for sequence b is row i x batch + b, so a step's inputs do not depend on how many
/// steps a run takes.
pub const DECODE_TENSOR: u64 = 2;

/// Tensor id of a training step's upstream gradient dL/dY, shaped and indexed as the input
/// hidden states (the loss is sum(Y G), docs/design.md, "Training").
pub const GRAD_TENSOR: u64 = 3;

/// The per-layer tensors, in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    Norm1 = 0,
    Qkv = 1,
    Out = 2,
    Norm2 = 3,
    Up = 4,
    Down = 5,
}

/// Tensor id of a layer's tensor: 16 + 16 l + k.
pub fn layer_tensor_id(layer: usize, t: LayerTensor) -> u64 {
    16 + 16 * layer as u64 + t as u64
}

/// A rectangular piece of a row-major global tensor: rows `row0 .. row0 + rows` of a tensor
/// `global_cols` wide, and of those rows the column ranges in `col_blocks` (start, width),
/// laid side by side. One block is the usual case; W_qkv's TP shard takes three (Q, K, V of its heads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub tensor: u64,
    pub global_cols: usize,
    pub row0: usize,
    pub rows: usize,
    /// Rows of the tensor between consecutive rows of the region (1; P for a striped layout's
    /// tokens): region row r is tensor row row0 + r x row_stride.
    pub row_stride: usize,
    pub col_blocks: Vec<(usize, usize)>,
}

impl Region {
    /// Whole rows of a tensor `cols` wide.
    pub fn rows(tensor: u64, cols: usize, row0: usize, rows: usize) -> Self {
        Region { tensor, global_cols: cols, row0, rows, row_stride: 1, col_blocks: vec![(0, cols)] }
    }

    /// Width of the region: the sum of its column blocks.
    pub fn cols(&self) -> usize {
        self.col_blocks.iter().map(|&(_, w)| w).sum()
    }

    /// Generate the region row-major into `out` (rows x cols()).
    pub fn generate_into(&self, seed: u64, init: Init, out: &mut [bf16]) {
        let width = self.cols();
        assert_eq!(out.len(), self.rows * width, "region buffer size");
        for r in 0..self.rows {
            let row = &mut out[r * width..(r + 1) * width];
            let base = ((self.row0 + r * self.row_stride) * self.global_cols) as u64;
            let mut c = 0;
            for &(start, w) in &self.col_blocks {
                for j in 0..w {
                    row[c] = value_bf16(seed, self.tensor, base + (start + j) as u64, init);
                    c += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_test_vectors_for_the_input() {
        let want_u = [0.49966490268707275, -0.8649013042449951, 0.0012716054916381836, 0.12681293487548828];
        let want_bf16 = [0.5, -0.86328125, 0.00127410888671875, 0.126953125];
        for i in 0..4 {
            assert_eq!(uniform(0, INPUT_TENSOR, i as u64) as f64, want_u[i], "u index {i}");
            assert_eq!(value_bf16(0, INPUT_TENSOR, i as u64, Init::Uniform).to_f64(), want_bf16[i], "bf16 index {i}");
        }
    }

    #[test]
    fn design_test_vectors_for_layer0_with_d64() {
        let qkv = layer_tensor_id(0, LayerTensor::Qkv);
        let want = [-0.1162109375, 0.11279296875, -0.08740234375];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(value_bf16(0, qkv, i as u64, Init::Weight { fan_in: 64 }).to_f64(), *w);
        }
        let norm = layer_tensor_id(0, LayerTensor::Norm1);
        let want = [0.96484375, 1.0234375, 1.015625];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(value_bf16(0, norm, i as u64, Init::Gain).to_f64(), *w);
        }
    }

    #[test]
    fn uniform_stays_in_range_and_is_not_constant() {
        let vals: Vec<f32> = (0..10_000).map(|i| uniform(7, 3, i)).collect();
        assert!(vals.iter().all(|&v| (-1.0..1.0).contains(&v)));
        let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
    }

    #[test]
    fn a_shard_is_the_slice_of_the_whole_tensor() {
        // W_qkv of a d=8, 2-head model: the TP shard of head 1 takes columns 4..8 of Q, K and V.
        let (d, seed) = (8usize, 5);
        let id = layer_tensor_id(2, LayerTensor::Qkv);
        let init = Init::Weight { fan_in: d };
        let whole_region = Region::rows(id, 3 * d, 0, d);
        let mut whole = vec![bf16::ZERO; d * 3 * d];
        whole_region.generate_into(seed, init, &mut whole);
        let shard_region =
            Region { tensor: id, global_cols: 3 * d, row0: 2, rows: 5, row_stride: 1, col_blocks: vec![(4, 4), (12, 4), (20, 4)] };
        let mut shard = vec![bf16::ZERO; 5 * 12];
        shard_region.generate_into(seed, init, &mut shard);
        for r in 0..5 {
            for (b, start) in [4usize, 12, 20].iter().enumerate() {
                for j in 0..4 {
                    assert_eq!(shard[r * 12 + b * 4 + j], whole[(r + 2) * 3 * d + start + j]);
                }
            }
        }
    }
}
