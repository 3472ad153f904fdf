//! The layers a rank runs, with their buffers: what every strategy drives per micro-batch.

use super::spec::{Placement, Spec};
use crate::backend::{Backend, Matrix};
use crate::config::RunConfig;
use crate::model::Buffers;
use crate::model::{generate_input, layer_forward, Batch, LayerWeights, Saved, Workspace};
use crate::topology::LocalTokens;
use anyhow::Result;

/// A strategy's attention of one layer (the index within the stack) on a micro-batch.
pub(crate) type LayerAttention<'f, B> = dyn FnMut(&mut Workspace<B>, &Batch, usize) -> Result<()> + 'f;

/// Micro-batch `micro_batch`: sequences micro_batch x mb .. (micro_batch + 1) x mb, on `tokens`.
fn micro_batch_of<'a>(cfg: &RunConfig, micro_batch: usize, tokens: &'a LocalTokens) -> Batch<'a> {
    Batch { first_seq: micro_batch * cfg.micro_batch, seqs: cfg.micro_batch, tokens }
}

/// A run of consecutive layers on one rank with its buffers: what every strategy drives per
/// micro-batch (the whole model for reference and ring, one pipeline stage for tp-pp).
pub(crate) struct Stack<B: Backend> {
    pub layers: Vec<LayerWeights<B>>,
    pub ws: Workspace<B>,
    /// The micro-batch's hidden states, updated in place layer by layer.
    pub x: B::Act,
    /// Kept final hidden states of the whole batch (allocated on the first kept forward).
    pub out: Option<B::Act>,
    pub tokens: LocalTokens,
}

impl<B: Backend> Stack<B> {
    /// The layers, shard and tokens `placement` states, with the workspace `buffers` states.
    pub fn new(cfg: &RunConfig, be: &B, placement: &Placement, buffers: &Buffers) -> Result<Self> {
        let m = &cfg.model;
        let rows = cfg.micro_batch * placement.tokens.len();
        Ok(Stack {
            layers: placement
                .layers
                .clone()
                .map(|l| LayerWeights::generate(be, m, &placement.shard, l, cfg.seed))
                .collect::<Result<_>>()?,
            ws: Workspace::new(be, m, &placement.shard, rows, buffers)?,
            x: be.alloc_act(rows, m.d_model)?,
            out: None,
            tokens: placement.tokens.clone(),
        })
    }

    /// The stack the strategy's table `s` states for `rank`.
    pub fn of(s: &Spec, cfg: &RunConfig, be: &B, rank: usize) -> Result<Self> {
        Self::new(cfg, be, &(s.placement)(cfg, rank), &(s.buffers)(cfg, rank))
    }

    pub fn batch(&self, cfg: &RunConfig, micro_batch: usize) -> Batch<'_> {
        micro_batch_of(cfg, micro_batch, &self.tokens)
    }

    pub fn generate_input(&mut self, be: &B, cfg: &RunConfig, micro_batch: usize) -> Result<()> {
        let batch = micro_batch_of(cfg, micro_batch, &self.tokens);
        generate_input(be, &cfg.model, cfg.seed, &batch, &mut self.x)
    }

    /// Every layer of the stack on the current micro-batch in x; with `saved` (one per layer),
    /// keeping what each layer's backward reads.
    pub fn run_layers(
        &mut self,
        be: &B,
        cfg: &RunConfig,
        micro_batch: usize,
        attention: &mut LayerAttention<B>,
        reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
        mut saved: Option<&mut [Saved<B>]>,
    ) -> Result<()> {
        let batch = micro_batch_of(cfg, micro_batch, &self.tokens);
        for (l, w) in self.layers.iter().enumerate() {
            let keep = saved.as_deref_mut().map(|s| &mut s[l]);
            layer_forward(be, w, &mut self.ws, &mut self.x, &batch, &mut |ws| attention(ws, &batch, l), reduce, keep)?;
        }
        Ok(())
    }

    /// Every micro-batch through the stack, its input generated on this rank, attention by
    /// `attention` (given the index of the layer within the stack), nothing to reduce: the whole forward pass of every strategy without tensor
    /// or pipeline parallelism (they differ only in how a layer's attention sees other ranks).
    pub fn forward_all(&mut self, be: &B, cfg: &RunConfig, keep: bool, attention: &mut LayerAttention<B>) -> Result<()> {
        for mb in 0..cfg.micro_batches() {
            self.generate_input(be, cfg, mb)?;
            self.run_layers(be, cfg, mb, attention, &mut |_| Ok(()), None)?;
            if keep {
                self.keep(be, cfg, mb)?;
            }
        }
        Ok(())
    }

    /// Copy the micro-batch's final hidden states into the kept output.
    pub fn keep(&mut self, be: &B, cfg: &RunConfig, micro_batch: usize) -> Result<()> {
        let rows = self.x.rows();
        if self.out.is_none() {
            self.out = Some(be.alloc_act(cfg.model.batch * self.tokens.len(), cfg.model.d_model)?);
        }
        let out = self.out.as_mut().expect("allocated above");
        be.copy_rows(&self.x, 0, out, micro_batch * rows, rows)
    }
}
