//! The single-rank reference: the whole model, every head, every token, no communication.

use super::decode::{self, Decoder};
use super::spec::{CommProjection, Placement, ProjectionInput, Spec, Strategy, Transfer};
use super::stack::Stack;
use super::train::{StepPhases, TrainSpec, Trainer};
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::{ConfigError, RunConfig, StrategyKind};
use crate::model::backward::local_attention_backward;
use crate::model::{local_attention, Shard};
use crate::topology::LocalTokens;
use anyhow::Result;

pub const SPEC: Spec = Spec {
    kind: StrategyKind::Reference,
    size_names: &[],
    sizes: |_| Vec::new(),
    resolve_sizes: super::shared::no_sizes,
    uses_layout: false,
    world: |_| 1,
    check,
    placement,
    traffic: |_, _| Vec::<Transfer>::new(),
    buffers,
    splits: super::shared::no_splits,
    project,
    decode: |cfg, _| super::decode::whole(cfg),
    train: TrainSpec {
        grad_peers: |_, rank| vec![rank],
        kv_replicas: |_, rank| vec![rank],
        backward_traffic: |_, _| Vec::new(),
        dkv_rows: |cfg, _| cfg.micro_batch * cfg.model.seq_len,
        extra_bytes: |_, _| 0,
        pipelined: false,
    },
};

fn check(_: &RunConfig, world: usize) -> Result<(), ConfigError> {
    if world != 1 {
        return Err(ConfigError(format!(
            "--strategy reference runs on 1 rank, but the job has {world} ranks (launch it without mpirun or with -np 1)"
        )));
    }
    Ok(())
}

fn buffers(cfg: &RunConfig, rank: usize) -> crate::model::Buffers {
    super::shared::local_buffers(cfg, &placement(cfg, rank))
}

fn placement(cfg: &RunConfig, _rank: usize) -> Placement {
    let m = &cfg.model;
    Placement {
        tokens: LocalTokens::whole(m.seq_len),
        shard: Shard::whole(m),
        layers: 0..m.layers,
        attention_tokens: LocalTokens::whole(m.seq_len),
        attention_heads: 0..m.heads,
        outputs: true,
    }
}

fn project(_: &RunConfig, x: &ProjectionInput) -> CommProjection {
    CommProjection { link_bytes_per_s: x.nvlink_bytes_per_s, hidden_fraction: 1.0, ..Default::default() }
}

pub struct Reference<B: Backend> {
    cfg: RunConfig,
    stack: Stack<B>,
    decoder: Option<Decoder<B>>,
    trainer: Option<Trainer<B>>,
}

impl<B: Backend> Reference<B> {
    pub fn new(cfg: &RunConfig, be: &B) -> Result<Self> {
        let stack = Stack::of(&SPEC, cfg, be, 0)?;
        let trainer = if cfg.train { Some(Trainer::new(be, cfg, &stack, &Shard::whole(&cfg.model), &SPEC, 0)?) } else { None };
        Ok(Reference { cfg: cfg.clone(), stack, decoder: decode::decoder_for(cfg, be, SPEC.decode, 0)?, trainer })
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Reference<B> {
    fn forward(&mut self, be: &B, _comm: &C, keep: bool) -> Result<()> {
        let causal = self.cfg.causal;
        let dec = &mut self.decoder;
        dec.iter_mut().for_each(Decoder::restart);
        self.stack.forward_all(be, &self.cfg, keep, &mut |ws, batch, l| {
            decode::keep_own(dec, be, l, ws, batch)?;
            local_attention(be, ws, batch, causal)
        })
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }

    fn decode_step(&mut self, be: &B, _comm: &C, step: usize, keep: bool) -> Result<()> {
        decode::step_own(decode::need(&mut self.decoder)?, be, &self.stack.layers, step, keep, &decode::no_comms::<C>())
    }

    fn decode_output(&self) -> Option<&B::Act> {
        self.decoder.as_ref().and_then(Decoder::output)
    }

    fn train_step(&mut self, be: &B, comm: &C, keep: bool) -> Result<StepPhases> {
        let causal = self.cfg.causal;
        let trainer = super::train::need(&mut self.trainer)?;
        trainer.step(
            &mut self.stack,
            be,
            &self.cfg,
            keep,
            &mut |ws, batch, _| local_attention(be, ws, batch, causal),
            &mut |ws, gws, saved, batch, _| local_attention_backward(be, gws, saved, ws.heads, batch, causal),
            &mut |_| Ok(()),
            (comm, None),
        )
    }

    fn gradients(&self) -> Option<super::train::Gradients<'_, B>> {
        self.trainer.as_ref().map(|t| t.gradients())
    }
}
