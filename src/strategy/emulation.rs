//! What an emulated rank (`--emulate-world P --as-rank K`) needs of its strategy's table: the
//! job's splits and the scratch buffer its messages go through, handed to `comm::emulated`.

use super::{scratch_shape, spec};
use crate::comm::emulated::EmulatedJob;
use crate::config::RunConfig;

/// The job rank `as_rank` of `cfg` stands in.
pub fn job(cfg: &RunConfig, as_rank: usize) -> EmulatedJob {
    let world = cfg.world();
    EmulatedJob {
        world,
        splits: (0..world).map(|r| (spec(cfg.strategy).splits)(cfg, r)).collect(),
        scratch: scratch_shape(cfg, as_rank),
        seed: cfg.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::comm::emulated::Emulated;
    use crate::comm::{Communicator, HostCollectives};
    use crate::config::{Preset, StrategyKind};
    use crate::strategy::scratch_bytes;
    use half::bf16;

    #[test]
    fn messages_keep_their_sizes_and_the_tp_group_its_shape() {
        let be = CpuBackend::new();
        let cfg = RunConfig::of_preset(Preset::Tiny, StrategyKind::TpPp, 2, 2, 4);
        let world = Emulated::new(&be, &job(&cfg, 3), 3).unwrap();
        assert_eq!((world.rank(), world.size()), (3, 4));
        let group = Communicator::<CpuBackend>::split(&world, 1, 1).unwrap();
        assert_eq!((group.rank(), group.size()), (1, 2));
        let rows = cfg.micro_batch * cfg.model.seq_len;
        let mut x = be.alloc_act(rows, cfg.model.d_model).unwrap();
        // A receive hands over what the scratch holds: generated activations, not zeros.
        Communicator::<CpuBackend>::recv(&world, &mut x, 1).unwrap();
        assert!(x.as_slice().iter().any(|v| v.to_f32() != 0.0));
        Communicator::<CpuBackend>::all_reduce_sum(&group, &mut x).unwrap();
        assert!(Communicator::<CpuBackend>::send(&world, &x, 4).is_err(), "rank 4 is outside a world of 4");

        // Uneven ring blocks: 5 rows in, 3 rows out.
        let ring = RunConfig::of_preset(Preset::Tiny, StrategyKind::Ring, 1, 1, 4);
        let comm = Emulated::new(&be, &job(&ring, 2), 2).unwrap();
        let mut send = be.alloc_act(3, 2).unwrap();
        send.as_mut_slice().iter_mut().enumerate().for_each(|(i, v)| *v = bf16::from_f32(i as f32));
        let mut recv = be.alloc_act(5, 2).unwrap();
        let mut ran = false;
        Communicator::<CpuBackend>::exchange(&comm, &send, 3, &mut recv, 1, &mut || {
            ran = true;
            Ok(())
        })
        .unwrap();
        assert!(ran);
        let got: Vec<f32> = recv.as_slice().iter().map(|v| v.to_f32()).collect();
        assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(scratch_bytes(&ring, 2), 0);
    }
}
