//! A training step on a rank's stack (docs/design.md, "Training"): per micro-batch the forward
//! with every layer's activations kept, then the backward from the fixed upstream gradient
//! (tensor 3) through the layers in reverse, the weight gradients accumulating in FP32; after
//! the last micro-batch, the FP32 all-reduce of the gradients of weights that ranks with other
//! tokens hold too (over NCCL, each layer's started under the backward of the layers before it).
//! What a strategy adds is its attention's backward and whom it reduces with (`TrainSpec`).

pub use super::spec::{Gradients, StepPhases, TrainSpec};
use super::stack::{LayerAttention, Stack};
use super::traffic::{Op, Transfer};
use crate::backend::{Backend, Matrix};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::generator::GRAD_TENSOR;
use crate::model::backward::{grad_workspace_bytes, grads_bytes, layer_backward, GradWorkspace, LayerGrads};
use crate::model::{generate_rows, layer_forward, saved_bytes, Batch, Saved, Shard, Workspace};
use anyhow::Result;
use std::time::Instant;

/// The trainer of a strategy built for a config with `train`.
pub(crate) fn need<B: Backend>(trainer: &mut Option<Trainer<B>>) -> Result<&mut Trainer<B>> {
    trainer.as_mut().ok_or_else(|| anyhow::anyhow!("a training step of a strategy set up without --train"))
}

/// A strategy's attention backward of layer `l` (index within the stack) on a micro-batch.
pub type BackwardAttention<'f, B> = dyn FnMut(&mut Workspace<B>, &mut GradWorkspace<B>, &Saved<B>, &Batch, usize) -> Result<()> + 'f;

/// The extra split (color, key) of a training run whose rank holds copies of K/V heads with
/// `replicas` (world ranks, itself included): the group that sums their W_kv gradients.
pub fn replica_split(cfg: &RunConfig, rank: usize, replicas: Vec<usize>) -> Option<(usize, usize)> {
    let key = replicas.iter().position(|&r| r == rank)?;
    (cfg.train && replicas.len() > 1).then(|| (replicas[0], key))
}

/// The gradient all-reduce of `rank`: first W_kv's over the ranks holding copies of its K/V
/// heads (where tensor parallelism copies them; after the backward), then one FP32 all-reduce
/// per weight tensor and layer over its gradient peers (`overlapped`: over NCCL each layer's
/// starts under the backward of the layers before it), as `comm::metered` counts a ring
/// all-reduce (2 (n - 1) / n of the buffer each way); none where it has no peers.
pub fn grad_traffic(cfg: &RunConfig, rank: usize, spec: &TrainSpec, shard: &Shard, layers: usize) -> Vec<Transfer> {
    let all_reduce = |what, bytes: u64, peers: &Vec<usize>, overlapped: bool| {
        let n = peers.len() as u64;
        Transfer {
            op: Op::AllReduce,
            what,
            peers: peers.clone(),
            buffer_bytes: bytes,
            sent: 2 * (n - 1) * bytes / n,
            received: 2 * (n - 1) * bytes / n,
            calls: layers as u64,
            overlapped,
        }
    };
    let mut out = Vec::new();
    let replicas = (spec.kv_replicas)(cfg, rank);
    if replicas.len() > 1 {
        out.push(all_reduce("W_kv gradient of copied K/V heads (FP32)", tensor_bytes(cfg, shard)[2].1, &replicas, false));
    }
    let peers = (spec.grad_peers)(cfg, rank);
    let n = peers.len() as u64;
    if n < 2 {
        return out;
    }
    out.extend(tensor_bytes(cfg, shard).into_iter().map(|(what, bytes)| all_reduce(what, bytes, &peers, true)));
    out
}

/// (name, FP32 bytes) of each weight gradient of one layer of `shard`, in `LayerGrads::each`'s order.
fn tensor_bytes(cfg: &RunConfig, shard: &Shard) -> [(&'static str, u64); 7] {
    let m = &cfg.model;
    let heads = shard.heads(m);
    let (d, w, kvw, f) = (m.d_model as u64, heads.width() as u64, heads.kv_width() as u64, shard.mlp.len() as u64);
    [
        ("norm1 gradient (FP32)", 4 * d),
        ("W_q gradient (FP32)", 4 * d * w),
        ("W_kv gradient (FP32)", 4 * d * 2 * kvw),
        ("W_o gradient (FP32)", 4 * w * d),
        ("norm2 gradient (FP32)", 4 * d),
        ("W_up gradient (FP32)", 4 * d * f * m.mlp_act.up_factor() as u64),
        ("W_down gradient (FP32)", 4 * f * d),
    ]
}

/// Bytes a rank's training step allocates beyond its forward's: the kept activations of every
/// layer (of one micro-batch, or of every one where `spec` pipelines), the gradients, the
/// backward's workspace, and with `keep` the input gradients of the whole batch.
#[allow(clippy::too_many_arguments)]
pub fn train_bytes(
    cfg: &RunConfig,
    spec: &TrainSpec,
    shard: &Shard,
    layers: usize,
    rows: usize,
    (acc_rows, acc_heads): (usize, usize),
    dkv_rows: usize,
    keep: bool,
) -> u64 {
    let m = &cfg.model;
    let heads = shard.heads(m);
    let (d, w, kvw) = (m.d_model as u64, heads.width() as u64, heads.kv_width() as u64);
    let up = (shard.mlp.len() * m.mlp_act.up_factor()) as u64;
    let saved = saved_bytes(rows as u64, d, w, kvw, up, (acc_rows as u64, acc_heads as u64));
    let kept = if keep { 2 * (rows / cfg.micro_batch * m.batch) as u64 * d } else { 0 };
    let kept_mbs = kept_micro_batches(cfg, spec) as u64;
    // Recomputing: each layer's input kept, and one layer's activations while its backward runs.
    let activations = match cfg.recompute {
        false => layers as u64 * kept_mbs * saved,
        true => layers as u64 * kept_mbs * 2 * rows as u64 * d + saved,
    };
    activations + layers as u64 * grads_bytes(m, shard) + grad_workspace_bytes(m, shard, rows as u64, dkv_rows.max(rows) as u64) + kept
}

/// A rank's training state beside its stack: the kept activations, the gradients, the
/// backward's workspace and (with keep) the input gradients of the whole batch.
pub struct Trainer<B: Backend> {
    /// What each layer's backward reads, per kept micro-batch and layer; recomputing, the one
    /// layer's whose backward runs.
    saved: Vec<Saved<B>>,
    /// Recomputing: each layer's input, per kept micro-batch and layer.
    inputs: Vec<B::Act>,
    pub grads: Vec<LayerGrads<B>>,
    gws: GradWorkspace<B>,
    /// dL/dX of every row the rank holds, [batch x tokens, d_model], sequence-major (with keep).
    pub input_grad: Option<B::Act>,
}

impl<B: Backend> Trainer<B> {
    /// For `stack` of rank `rank` of the strategy `spec` states (its dK|dV accumulator's rows;
    /// the activations of every micro-batch kept where it pipelines, of one otherwise).
    pub(crate) fn new(be: &B, cfg: &RunConfig, stack: &Stack<B>, shard: &Shard, spec: &super::spec::Spec, rank: usize) -> Result<Self> {
        let rows = cfg.micro_batch * stack.tokens.len();
        let dkv_rows = (spec.train.dkv_rows)(cfg, rank);
        let kept = kept_micro_batches(cfg, &spec.train) * stack.layers.len();
        let (saved, inputs) = if cfg.recompute { (1, kept) } else { (kept, 0) };
        Ok(Trainer {
            saved: (0..saved).map(|_| Saved::new(be, &stack.ws, rows)).collect::<Result<_>>()?,
            inputs: (0..inputs).map(|_| be.alloc_act(rows, cfg.model.d_model)).collect::<Result<_>>()?,
            grads: stack.layers.iter().map(|w| LayerGrads::new(be, w)).collect::<Result<_>>()?,
            gws: GradWorkspace::new(be, &cfg.model, shard, rows, dkv_rows.max(rows))?,
            input_grad: None,
        })
    }

    /// The kept gradients (`Strategy::gradients`).
    pub fn gradients(&self) -> Gradients<'_, B> {
        Gradients { input: self.input_grad.as_ref(), layers: &self.grads }
    }

    /// The gradients to zero: the start of a step.
    pub fn zero(&mut self, be: &B) -> Result<()> {
        self.grads.iter_mut().try_for_each(|g| g.each_mut().into_iter().try_for_each(|a| be.zero_acc(a)))
    }

    /// The forward of micro-batch `mb` from stack.x (its input, generated or received), keeping
    /// its activations in slot `slot`; `reduce` as `Stack::run_layers` takes it.
    pub(crate) fn forward_mb(
        &mut self,
        stack: &mut Stack<B>,
        be: &B,
        cfg: &RunConfig,
        (mb, slot): (usize, usize),
        attention: &mut LayerAttention<B>,
        reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
    ) -> Result<()> {
        let layers = stack.layers.len();
        if self.inputs.is_empty() {
            return stack.run_layers(be, cfg, mb, attention, reduce, Some(&mut self.saved[slot * layers..(slot + 1) * layers]));
        }
        let batch = Batch { first_seq: mb * cfg.micro_batch, seqs: cfg.micro_batch, tokens: &stack.tokens };
        for (l, w) in stack.layers.iter().enumerate() {
            let input = &mut self.inputs[slot * layers + l];
            input.set_rows(stack.x.rows());
            be.copy_rows(&stack.x, 0, input, 0, stack.x.rows())?;
            layer_forward(be, w, &mut stack.ws, &mut stack.x, &batch, &mut |ws| attention(ws, &batch, l), reduce, None)?;
        }
        Ok(())
    }

    /// dL/d(output) of micro-batch `mb`: the upstream gradient (tensor 3) into `dx()`, for the
    /// rank that holds the model's output.
    pub(crate) fn upstream(&mut self, stack: &Stack<B>, be: &B, cfg: &RunConfig, mb: usize) -> Result<()> {
        let batch = Batch { first_seq: mb * cfg.micro_batch, seqs: cfg.micro_batch, tokens: &stack.tokens };
        generate_rows(be, &cfg.model, cfg.seed, GRAD_TENSOR, &batch, &mut self.gws.dx)
    }

    /// The gradient flowing between layers (and stages): dL/d(output) before `backward_mb`,
    /// dL/d(input) after.
    pub fn dx(&mut self) -> &mut B::Act {
        &mut self.gws.dx
    }

    /// The backward of micro-batch `mb` through the stack's layers from `dx()`, with the
    /// activations of slot `slot` (recomputing, each layer's forward first from its kept input,
    /// with `attention`); `reduce` sums the row-parallel outputs and the column-parallel GEMMs'
    /// input gradients over the TP group. With `keep`, dL/dX of its rows is kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_mb(
        &mut self,
        stack: &mut Stack<B>,
        be: &B,
        cfg: &RunConfig,
        (mb, slot): (usize, usize),
        keep: bool,
        (attention, backward): (&mut LayerAttention<B>, &mut BackwardAttention<B>),
        reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
        layer_done: &mut dyn FnMut(&mut LayerGrads<B>) -> Result<()>,
    ) -> Result<()> {
        let batch = Batch { first_seq: mb * cfg.micro_batch, seqs: cfg.micro_batch, tokens: &stack.tokens };
        let layers = stack.layers.len();
        for l in (0..layers).rev() {
            let s = if self.inputs.is_empty() {
                &self.saved[slot * layers + l]
            } else {
                let input = &self.inputs[slot * layers + l];
                stack.x.set_rows(input.rows());
                be.copy_rows(input, 0, &mut stack.x, 0, input.rows())?;
                let (w, x) = (&stack.layers[l], &mut stack.x);
                layer_forward(be, w, &mut stack.ws, x, &batch, &mut |ws| attention(ws, &batch, l), reduce, Some(&mut self.saved[0]))?;
                &self.saved[0]
            };
            let mut attn = |ws: &mut Workspace<B>, gws: &mut GradWorkspace<B>, s: &Saved<B>| backward(ws, gws, s, &batch, l);
            let (w, g) = (&stack.layers[l], &mut self.grads[l]);
            layer_backward(be, w, g, s, &mut stack.ws, &mut self.gws, &batch, &mut attn, reduce)?;
            layer_done(g)?;
        }
        if keep {
            let rows = self.gws.dx.rows();
            if self.input_grad.is_none() {
                self.input_grad = Some(be.alloc_act(cfg.model.batch * stack.tokens.len(), cfg.model.d_model)?);
            }
            be.copy_rows(&self.gws.dx, 0, self.input_grad.as_mut().expect("allocated above"), mb * rows, rows)?;
        }
        Ok(())
    }

    /// W_kv's gradients summed over `comm` (the ranks holding copies of the same K/V heads).
    pub fn reduce_kv<C: Communicator<B>>(&mut self, comm: &C) -> Result<()> {
        self.grads.iter_mut().try_for_each(|g| comm.all_reduce_acc(&mut g.w_kv))
    }

    /// Every weight gradient summed over `comm` (the gradient peers), in FP32.
    pub fn reduce_grads<C: Communicator<B>>(&mut self, comm: &C) -> Result<()> {
        self.grads.iter_mut().try_for_each(|g| g.each_mut().into_iter().try_for_each(|a| comm.all_reduce_acc(a)))
    }

    /// One training step of a strategy without a pipeline: per micro-batch the forward
    /// (`attention`), the backward (`backward`), `tp_reduce` summing the row-parallel outputs
    /// and column-parallel input gradients over a TP group (identity without); then every
    /// weight gradient all-reduced over `grad_comm` (the gradient peers). Where that transport
    /// overlaps reductions (NCCL), each layer's all-reduce starts as soon as the last
    /// micro-batch's backward of that layer is done, under the backward of the layers before it,
    /// and the gradient phase is the wait for what is left of them. `comm` is the strategy's
    /// transport, whose phase times (`StepPhases::take_comm`) split the step's communication by
    /// phase. With `keep`, the input gradients are kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step<C: Communicator<B>>(
        &mut self,
        stack: &mut Stack<B>,
        be: &B,
        cfg: &RunConfig,
        keep: bool,
        attention: &mut LayerAttention<B>,
        backward: &mut BackwardAttention<B>,
        tp_reduce: &mut dyn FnMut(&mut B::Act) -> Result<()>,
        (comm, grad_comm): (&C, Option<&C>),
    ) -> Result<StepPhases> {
        let mut phases = StepPhases::default();
        let overlapped = grad_comm.filter(|g| g.overlaps_reductions());
        self.zero(be)?;
        comm.take_phase_times()?;
        for mb in 0..cfg.micro_batches() {
            let t0 = Instant::now();
            stack.generate_input(be, cfg, mb)?;
            self.forward_mb(stack, be, cfg, (mb, 0), attention, tp_reduce)?;
            phases.forward_s += clock(be, t0)?;
            phases.take_comm(comm, 0)?;
            let t0 = Instant::now();
            self.upstream(stack, be, cfg, mb)?;
            let last = mb + 1 == cfg.micro_batches();
            let mut layer_done = |g: &mut LayerGrads<B>| match overlapped {
                Some(c) if last => c.start_all_reduce_accs(&mut g.each_mut()),
                _ => Ok(()),
            };
            self.backward_mb(stack, be, cfg, (mb, 0), keep, (&mut *attention, &mut *backward), tp_reduce, &mut layer_done)?;
            phases.backward_s += clock(be, t0)?;
            phases.take_comm(comm, 1)?;
        }
        let t0 = Instant::now();
        match (overlapped, grad_comm) {
            (Some(g), _) => g.finish_reductions()?,
            (None, Some(g)) => self.reduce_grads(g)?,
            (None, None) => {}
        }
        phases.grad_reduce_s = clock(be, t0)?;
        phases.take_comm(comm, 2)?;
        Ok(phases)
    }
}

/// Seconds since `t0` once the device has finished what was queued: a phase's time.
pub fn clock<B: Backend>(be: &B, t0: Instant) -> Result<f64> {
    be.synchronize()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Micro-batches whose activations a rank keeps at once: all of them where the strategy
/// pipelines (every forward before the first backward), else one.
fn kept_micro_batches(cfg: &RunConfig, spec: &TrainSpec) -> usize {
    if spec.pipelined {
        cfg.micro_batches()
    } else {
        1
    }
}
