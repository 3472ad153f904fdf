//! The communicator's device paths on this machine's one GPU: a rank that sends to and receives
//! from itself in one group on the communication stream while attention runs on the compute
//! stream (the ring step's shape), and a one-rank all-reduce (the TP path). A single-GPU machine
//! allows no more of NCCL (GPU.md), and it is enough to have run both paths' calls, launches,
//! stream waits and buffers once. Written against `Communicator`, so the case itself is tested on
//! the CPU with the in-process communicator.

use super::{attention_tolerance, compare, expected, values, Output, Step, Tolerance, POISON_BF16};
use crate::backend::cuda::device::AttentionKernel;
use crate::backend::{Backend, Heads, Span};
use crate::comm::Communicator;
use anyhow::Result;

/// The attention step a ring rank runs during its exchange: keys before the queries, then the
/// diagonal block, both into one pair of accumulators.
fn ring_step_attention() -> Step {
    let (rows, heads) = (257usize, Heads::mha(2, 128));
    let w = heads.width();
    let split = rows / 2;
    let q = Span { row0: split, len: rows - split, pos0: 2000 + split };
    Step::Attention {
        rows,
        heads,
        q: values(120, rows * w, 3.0),
        kv: values(121, rows * 2 * w, 3.0),
        first: (q, Span { row0: 0, len: split, pos0: 2000 }),
        second: (q, q),
        causal: true,
    }
}

/// The attention step's calls on `be`, the second one queued as the overlap of an exchange of
/// `block` (rows x cols) with this rank itself. Returns the attention output as `execute` does,
/// and the block received.
fn exchange_during_attention<B: Backend, C: Communicator<B>>(
    be: &B,
    comm: &C,
    step: &Step,
    block: (usize, usize, &[half::bf16]),
) -> Result<(Output, Output)> {
    let Step::Attention { rows, heads, q, kv, first, second, causal } = step else { unreachable!("an attention step") };
    let w = heads.width();
    let (mut qb, mut kvb) = (be.alloc_act(*rows, w)?, be.alloc_act(*rows, 2 * w)?);
    be.upload(&mut qb, q)?;
    be.upload(&mut kvb, kv)?;
    let (mut o, mut lse) = (be.alloc_acc(*rows, w)?, be.alloc_acc(*rows, heads.heads)?);
    be.attention_reset(&mut o, &mut lse)?;
    be.attention(&qb, &kvb, *heads, first.0, first.1, *causal, &mut o, &mut lse)?;
    let (brows, bcols, data) = block;
    let mut send = be.alloc_act(brows, bcols)?;
    be.upload(&mut send, data)?;
    let mut recv = be.alloc_act(brows, bcols)?;
    be.upload(&mut recv, &vec![POISON_BF16; brows * bcols])?;
    let me = comm.rank();
    comm.exchange(&send, me, &mut recv, me, &mut || be.attention(&qb, &kvb, *heads, second.0, second.1, *causal, &mut o, &mut lse))?;
    let mut stored = be.alloc_act(*rows, w)?;
    be.attention_store(&o, &mut stored)?;
    be.synchronize()?;
    let mut all = be.download_acc(&o)?;
    all.extend(be.download_acc(&lse)?);
    all.extend(be.download(&stored)?.iter().map(|v| v.to_f32()));
    Ok((Output::F32(all), Output::Bf16(be.download(&recv)?)))
}

/// Run the communicator cases on `tested` through `comm` (a communicator of one rank), with
/// `reference` computing the expected attention; print one row per check; true when all pass.
pub fn run<R: Backend, T: Backend, C: Communicator<T>>(
    reference: &R,
    tested: &T,
    comm: &C,
    label: &str,
    kernel: AttentionKernel,
) -> Result<bool> {
    anyhow::ensure!(comm.size() == 1, "the communicator cases need a communicator of one rank, not {}", comm.size());
    let mut rows = Vec::new();
    let step = ring_step_attention();
    let (brows, bcols) = (97usize, 2 * 2 * 128);
    let block = values(122, brows * bcols, 2.0);
    let (want, tol) = expected(reference, &step, &attention_tolerance(kernel, 128))?;
    let (got, received) = exchange_during_attention(tested, comm, &step, (brows, bcols, &block))?;
    rows.push(("attention during a self-exchange (257 rows, 2 x 128, causal)", compare(&want, &got, &tol)));
    rows.push(("self-exchange in one group, block received (97 x 512)", compare(&Output::Bf16(block), &received, &Tolerance::Exact)));
    let sum_in = values(123, 1023 * 512, 4.0);
    let mut x = tested.alloc_act(1023, 512)?;
    tested.upload(&mut x, &sum_in)?;
    comm.all_reduce_sum(&mut x)?;
    tested.synchronize()?;
    // The sum over one rank is the rank's own values, bit for bit.
    rows.push((
        "all-reduce (sum) over one rank (1023 x 512)",
        compare(&Output::Bf16(sum_in), &Output::Bf16(tested.download(&x)?), &Tolerance::Exact),
    ));
    let mut all = true;
    for (name, (abs, rel, pass)) in rows {
        all &= pass;
        crate::outln!("{name:<58} {abs:>12.3e} {rel:>12.3e} {:>10}  {}", "", if pass { "PASS" } else { "FAIL" });
    }
    crate::outln!("selftest of the communicator on {label}: {}", if all { "PASS" } else { "FAIL" });
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::comm::local::LocalComm;

    #[test]
    fn the_communicator_case_passes_cpu_against_cpu() {
        let comm = LocalComm::world(1).pop().unwrap();
        assert!(run(&CpuBackend::new(), &CpuBackend::new(), &comm, "cpu, in-process", AttentionKernel::Plain).unwrap());
    }
}
