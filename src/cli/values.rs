//! The command line's help for the plain enums of the layers below (clap's `ValueEnum`,
//! implemented here so that those layers never see clap): each value is named by the layer's own
//! `name()`, the one it prints, so a name is stated once; its help is a line for `--help`.

use crate::backend::cuda::device::AttentionKernel;
use crate::config::{BackendKind, CommKind, Layout, MlpAct, Preset, StrategyKind, StrategySelection};
use crate::plan::Profile;
use clap::builder::PossibleValue;
use clap::ValueEnum;

/// `impl ValueEnum for T` from a list of (value, help); the name is the value's `name()`.
macro_rules! values {
    ($ty:ident { $($v:expr => $help:expr;)* }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($v),*]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                let all: &[($ty, &str)] = &[$(($v, $help)),*];
                all.iter().find(|(v, _)| v == self).map(|(v, help)| PossibleValue::new(v.name()).help(*help))
            }
        }
    };
}

values!(StrategySelection {
    StrategySelection::One(StrategyKind::Reference) => "One rank, the whole model: the numerical reference";
    StrategySelection::One(StrategyKind::TpPp) => "Megatron tensor parallel (--tp) x pipeline parallel (--pp)";
    StrategySelection::One(StrategyKind::Ring) => "Sequence parallel with ring attention over --ring ranks";
    StrategySelection::One(StrategyKind::Allgather) => "Context parallel with all-gathered K/V (as Llama 3 was trained) over --ring ranks";
    StrategySelection::One(StrategyKind::Ulysses) => "DeepSpeed-Ulysses: all-to-all from tokens to heads and back, over --ring ranks";
    StrategySelection::One(StrategyKind::Usp) => "Ulysses groups of --ulysses consecutive ranks x a ring of --ring over the groups";
    StrategySelection::One(StrategyKind::TpCp) => "Tensor parallel groups of --tp consecutive ranks x a context ring of --cp";
    StrategySelection::One(StrategyKind::DoubleRing) => "LoongTrain's double ring over --ring ranks: inner rings of --window consecutive ranks inside a node, an outer ring across the windows";
    StrategySelection::All => "Every multi-rank strategy whose sizes fit the world (tp-pp, ring, allgather, ulysses, usp, tp-cp, double-ring), on the same model; tp-pp and ring must fit (their sizes are explicit flags), and so must usp, tp-cp and double-ring where --ulysses, --cp or --window is given; the others run where the model allows them (ulysses needs the ranks to divide the heads; usp, tp-cp and double-ring need a two-dimensional split)";
});

values!(Layout {
    Layout::Zigzag => "2P chunks, rank r holds chunks r and 2P-1-r: causal work balanced across the ring";
    Layout::Contiguous => "P chunks, rank r holds chunk r: the naive split, for comparison";
    Layout::Striped => "Token i on rank i mod P (Striped Attention): causal work balanced within a token per rank";
});

values!(Preset {
    Preset::Paper => "The reference workload: 16 layers, d_model 4096, 32 heads, MLP 16384, 100K tokens, batch 128";
    Preset::Llama3_8b => "Llama 3 8B's blocks: 32 layers, d_model 4096, 32 heads, 8 K/V heads, SwiGLU MLP 14336";
    Preset::Llama3_70b => "Llama 3 70B's blocks: 80 layers, d_model 8192, 64 heads, 8 K/V heads, SwiGLU MLP 28672";
    Preset::Llama3_405b => "Llama 3 405B's blocks: 126 layers, d_model 16384, 128 heads, 8 K/V heads, SwiGLU MLP 53248";
    Preset::Small => "A CPU-sized demo: 4 layers, d_model 256, 8 heads, MLP 1024, 2048 tokens, batch 4";
    Preset::Tiny => "For tests and verify: 2 layers, d_model 64, 4 heads, MLP 256, 256 tokens, batch 2";
});

values!(BackendKind {
    BackendKind::Cpu => "FP32 arithmetic on BF16-rounded host buffers, MPI between ranks";
    BackendKind::Cuda => "One GPU per rank (local rank modulo the visible GPUs): cuBLAS and NVRTC kernels; MPI with host staging between ranks";
});

values!(CommKind {
    CommKind::Mpi => "MPI on host buffers (the CUDA backend stages through the host; several ranks may share a GPU)";
    CommKind::Nccl => "NCCL between GPUs, on a communication stream of its own (CUDA backend; one rank per GPU)";
});

values!(MlpAct {
    MlpAct::Gelu => "x W_up, GELU (tanh form), W_down: the seed's dense MLP";
    MlpAct::Swiglu => "(silu(x W_gate) * (x W_up)) W_down, with W_up [d, 2 F] = [gate | up]";
});

values!(Profile {
    Profile::H100Sxm => "NVIDIA H100 SXM 80GB: 989 TFLOP/s BF16 dense, 3.35 TB/s, NVLink 450 GB/s, IB 50 GB/s per GPU";
    Profile::A100Sxm => "NVIDIA A100 SXM 80GB: 312 TFLOP/s BF16 dense, 2.04 TB/s, NVLink 300 GB/s, IB 25 GB/s per GPU";
    Profile::H200Sxm => "NVIDIA H200 SXM 141GB: 989 TFLOP/s BF16 dense, 4.8 TB/s, NVLink 450 GB/s, IB 50 GB/s per GPU (the H100's compute and links with more and faster memory)";
    Profile::Cpu => "This host's CPU, for plans from CPU runs: every rate from --calibrate or a flag (--peak-tflops, --hbm-tbps, --memory-gib, --ib-gbps, ...)";
});

values!(AttentionKernel {
    AttentionKernel::Auto => "The tensor-core flash kernel where it has the head dim (64, 128), else the plain one. Its block shape is 128 query rows, by the prediction in kernels/NOTES.md until measured";
    AttentionKernel::Flash128 => "The flash kernel with 128 query rows per block (8 warps)";
    AttentionKernel::Flash64 => "The flash kernel with 64 query rows per block (4 warps)";
    AttentionKernel::Wgmma => "The Hopper flash kernel (wgmma + TMA, sm_90a only; kernels/flash_wgmma.cu), 128 query rows per block; the plain kernel for head dims other than 64 and 128";
    AttentionKernel::Plain => "The plain one-warp-per-query kernel, for comparison";
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value parses from the name its layer prints.
    fn parses_by_name<T: ValueEnum + PartialEq + std::fmt::Debug>() {
        for v in T::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(T::from_str(&name, false).as_ref(), Ok(v), "{name}");
        }
    }

    #[test]
    fn every_value_parses_from_the_name_its_layer_prints() {
        parses_by_name::<StrategySelection>();
        parses_by_name::<Layout>();
        parses_by_name::<Preset>();
        parses_by_name::<BackendKind>();
        parses_by_name::<CommKind>();
        parses_by_name::<MlpAct>();
        parses_by_name::<Profile>();
        parses_by_name::<AttentionKernel>();
        assert_eq!(StrategySelection::One(StrategyKind::TpCp).to_possible_value().unwrap().get_name(), "tp-cp");
        assert_eq!(Profile::H100Sxm.to_possible_value().unwrap().get_name(), "h100-sxm");
    }
}
