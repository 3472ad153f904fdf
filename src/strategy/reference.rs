//! The single-rank reference: the whole model, every head, every token, no communication.

use super::{Stack, Strategy};
use crate::backend::Backend;
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::model::{local_attention, Shard};
use crate::topology::LocalTokens;
use anyhow::Result;

pub struct Reference<B: Backend> {
    cfg: RunConfig,
    stack: Stack<B>,
}

impl<B: Backend> Reference<B> {
    pub fn new(cfg: &RunConfig, be: &B) -> Result<Self> {
        let m = &cfg.model;
        let rows = cfg.micro_batch * m.seq_len;
        let stack = Stack::new(cfg, be, &Shard::whole(m), 0..m.layers, LocalTokens::whole(m.seq_len), rows, false)?;
        Ok(Reference { cfg: cfg.clone(), stack })
    }
}

impl<B: Backend, C: Communicator<B>> Strategy<B, C> for Reference<B> {
    fn forward(&mut self, be: &B, _comm: &C, keep: bool) -> Result<()> {
        let causal = self.cfg.causal;
        for mb in 0..self.cfg.micro_batches() {
            self.stack.generate_input(be, &self.cfg, mb)?;
            self.stack.run_layers(be, &self.cfg, mb, &mut |ws, batch| local_attention(be, ws, batch, causal), &mut |_| Ok(()))?;
            if keep {
                self.stack.keep(be, &self.cfg, mb)?;
            }
        }
        Ok(())
    }

    fn output(&self) -> Option<&B::Act> {
        self.stack.out.as_ref()
    }
}
