//! One strategy's warm-up and measured iterations through the timing engine (`crate::timing`):
//! each starts at a barrier, and its record goes into the journal as soon as it is taken.

use super::console::progress_bar;
use crate::backend::Backend;
use crate::comm::metered::Metered;
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::fault::Fault;
use crate::journal::Journal;
use crate::metrics::{flops, DecodeRecord, IterationRecord};
use crate::strategy;
use crate::timing::{self, Protocol, Timed, Timing};
use anyhow::Result;
use std::time::Instant;

/// Warm-up and measured iterations of one strategy. Each iteration starts at a barrier; its record
/// holds this rank's time to the end of its forward pass and what the metered communicator saw,
/// and goes into the journal (the last run there) as soon as it is taken.
pub(super) fn measure<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a>(
    cfg: &RunConfig,
    be: &B,
    comm: &C,
    metered: &Metered<S>,
    show: bool,
    fault: Option<Fault>,
    journal: &Journal,
) -> Result<()> {
    let strat = strategy::build(cfg, be, metered)?;
    let mut iteration = Iteration {
        cfg,
        be,
        comm,
        metered,
        fault,
        journal,
        strat,
        bar: progress_bar(cfg.warmup + cfg.iters, cfg.strategy.name(), !show),
        last_checkpoint: Instant::now(),
        sampler: None,
        // The last warm-up iteration times its GEMMs and attention op by op (for `plan
        // --calibrate`): outside the measured ones, which the events would perturb.
        profiled: cfg.warmup.checked_sub(1),
        counted_before: (0.0, 0.0),
        phases: Default::default(),
    };
    timing::run(be, Protocol { warmup: cfg.warmup, iters: cfg.iters }, &mut iteration)?;
    comm.set_phase(None);
    iteration.bar.finish_and_clear();
    if let Some(s) = iteration.sampler {
        match s.finish() {
            Ok(u) => journal.set_gpu_util(u),
            Err(why) => crate::console::say(&format!("ringbench: rank {}: GPU utilization not measured: {why}", comm.rank())),
        }
    }
    Ok(())
}

impl<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a> Iteration<'_, 'a, B, C, S> {
    /// The decode steps after iteration `i`'s prefill, each through the timing engine.
    fn decode(&mut self, i: usize, warm: bool) -> Result<DecodeRecord> {
        let mut steps = DecodeSteps {
            iteration: i,
            warm,
            strat: &mut self.strat,
            be: self.be,
            comm: self.comm,
            metered: self.metered,
            cfg: self.cfg,
            record: DecodeRecord::default(),
        };
        timing::run(self.be, Protocol { warmup: 0, iters: self.cfg.decode_tokens }, &mut steps)?;
        Ok(steps.record)
    }
}

/// The decode steps of one iteration: each started at a barrier (as an iteration is: a rank that
/// finished the step before early would otherwise count its wait for the others in this one),
/// timed from its start to the end of its work on the device (as a server waits for each token
/// before the next), with the communication the metered transport saw in it.
struct DecodeSteps<'r, 'a, B: Backend + 'a, C, S> {
    iteration: usize,
    warm: bool,
    strat: &'r mut Box<dyn strategy::Strategy<B, Metered<S>> + 'a>,
    be: &'r B,
    comm: &'r C,
    metered: &'r Metered<S>,
    cfg: &'r RunConfig,
    record: DecodeRecord,
}

impl<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a> Timed for DecodeSteps<'_, 'a, B, C, S> {
    fn before(&mut self, step: usize, _: bool) -> Result<()> {
        if self.comm.size() > 1 {
            let kind = if self.warm { "warm-up" } else { "measured" };
            self.comm.set_phase(Some(format!(
                "decode step {step} of iteration {} of {} ({kind})",
                self.iteration,
                self.cfg.strategy.name()
            )));
        }
        self.comm.barrier()?;
        self.metered.take_iteration::<B>().map(|_| ())
    }

    fn work(&mut self, step: usize) -> Result<()> {
        self.strat.decode_step(self.be, self.metered, step, false)
    }

    fn wait(&mut self) -> Result<()> {
        let be = self.be;
        self.comm.guard_wait("device synchronize (end of a decode step)", &mut || be.synchronize())
    }

    fn after(&mut self, _: usize, _: bool, t: Timing) -> Result<()> {
        let (comm_s, _, sent, received) = self.metered.take_iteration::<B>()?;
        self.record.step_s.push(t.seconds);
        self.record.comm_s.push(comm_s);
        self.record.bytes_sent += sent;
        self.record.bytes_received += received;
        Ok(())
    }
}

/// One strategy's iteration, as the timing engine runs it.
struct Iteration<'r, 'a, B: Backend + 'a, C, S> {
    cfg: &'r RunConfig,
    be: &'r B,
    comm: &'r C,
    metered: &'r Metered<S>,
    fault: Option<Fault>,
    journal: &'r Journal,
    strat: Box<dyn strategy::Strategy<B, Metered<S>> + 'a>,
    bar: indicatif::ProgressBar,
    last_checkpoint: Instant,
    sampler: Option<crate::metrics::gpu_util::Sampler>,
    profiled: Option<usize>,
    counted_before: (f64, f64),
    /// The phases of the training step in flight (zeros for a forward pass).
    phases: strategy::train::StepPhases,
}

impl<'a, B: Backend + 'a, C: Communicator<B>, S: Communicator<B> + 'a> Timed for Iteration<'_, 'a, B, C, S> {
    fn before(&mut self, i: usize, warm: bool) -> Result<()> {
        let (cfg, be, comm) = (self.cfg, self.be, self.comm);
        be.set_op_timing(Some(i) == self.profiled);
        if i == cfg.warmup {
            self.sampler = be.pci_bus_id().map(crate::metrics::gpu_util::Sampler::start);
        }
        self.bar.set_message(if warm { "warm-up" } else { "measured" });
        // With peers to wait for it, a rank that stops outside communication is a stall the
        // watchdog names (an emulated rank alone has none).
        if comm.size() > 1 {
            comm.set_phase(Some(format!("iteration {i} of {} ({})", cfg.strategy.name(), if warm { "warm-up" } else { "measured" })));
        }
        comm.barrier()?;
        Fault::strike(self.fault, comm.rank(), i)?;
        self.metered.take_iteration::<B>()?;
        self.counted_before = be.counted_flops();
        Ok(())
    }

    fn work(&mut self, _: usize) -> Result<()> {
        if self.cfg.train {
            self.phases = self.strat.train_step(self.be, self.metered, false)?;
            return Ok(());
        }
        self.strat.forward(self.be, self.metered, false)
    }

    fn wait(&mut self) -> Result<()> {
        // Guarded: queued transfers to a dead peer would otherwise hold the wait forever.
        let be = self.be;
        self.comm.guard_wait("device synchronize (end of iteration)", &mut || be.synchronize())
    }

    fn after(&mut self, i: usize, warm: bool, t: Timing) -> Result<()> {
        let be = self.be;
        let total_s = t.seconds;
        let (comm_s, hidden_s, bytes_sent, bytes_received) = self.metered.take_iteration::<B>()?;
        let compute_s = (total_s - comm_s).max(0.0);
        let p = std::mem::take(&mut self.phases);
        let phases =
            crate::metrics::PhaseRecord { seconds: [p.forward_s, p.backward_s, p.grad_reduce_s], comm_s: p.comm_s, hidden_s: p.hidden_s };
        let record = IterationRecord { total_s, comm_s, hidden_s, compute_s, bytes_sent, bytes_received, phases };
        let (counted, before) = (be.counted_flops(), self.counted_before);
        let counted = flops::Flops { linear: counted.0 - before.0, attention: counted.1 - before.1 };
        if Some(i) == self.profiled {
            be.set_op_timing(false);
            let (linear_s, attention_s) = be.take_op_seconds()?;
            self.journal.set_op_profile(crate::metrics::OpProfile {
                linear_s,
                attention_s,
                linear_flops: counted.linear,
                attention_flops: counted.attention,
            });
        }
        // The decode steps follow the prefill they continue (its cache), outside its timing:
        // the prefill's time is the time to first token.
        let decode = if self.cfg.decode_tokens > 0 { Some(self.decode(i, warm)?) } else { None };
        self.journal.record(be.memory(), (!warm).then_some((record, counted, decode)));
        // Outside the timed region: keeps what was measured if the process is killed without warning.
        self.journal.checkpoint(&mut self.last_checkpoint)?;
        self.bar.inc(1);
        Ok(())
    }
}
