//! The K/V cache a rank keeps for decode: every layer's K (after RoPE) and V of the tokens the
//! strategy placed on it, for every sequence of the batch, and the rows it appends as decode
//! steps produce new tokens. A sequence's rows are contiguous; their order does not matter, as
//! a new token attends to every earlier position, so the causal mask has nothing to hide.

use crate::backend::{Backend, BlockCopy, DecodeSpan, Heads};
use crate::model::Blocks;
use anyhow::{ensure, Result};

/// The sizes of one rank's cache: per sequence, the prompt's rows it holds and the decode rows it
/// will append; each row K|V of `kv_cols` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub batch: usize,
    pub prompt: usize,
    pub slots: usize,
    pub kv_cols: usize,
}

impl CacheShape {
    /// Rows reserved per sequence.
    pub fn capacity(&self) -> usize {
        self.prompt + self.slots
    }

    /// [rows, cols] of each layer's buffer.
    pub fn layer_shape(&self) -> (usize, usize) {
        (self.batch * self.capacity(), self.kv_cols)
    }

    /// BF16 bytes of the whole cache, at its full length.
    pub fn bytes(&self) -> u64 {
        let (r, c) = self.layer_shape();
        (self.layers * r * c * 2) as u64
    }
}

/// Query rows row .. row + count holding the new tokens of sequences seq .. seq + count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub row: usize,
    pub seq: usize,
    pub count: usize,
}

/// The runs of consecutive rows of consecutive sequences in `rows` (row k the new token of
/// sequence rows[k], or padding): one decode attention call each.
pub fn runs(rows: &[Option<usize>]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (k, seq) in rows.iter().enumerate() {
        let Some(seq) = *seq else { continue };
        match out.last_mut() {
            Some(r) if r.row + r.count == k && r.seq + r.count == seq => r.count += 1,
            _ => out.push(Run { row: k, seq, count: 1 }),
        }
    }
    out
}

pub struct KvCache<B: Backend> {
    shape: CacheShape,
    layers: Vec<B::Act>,
    /// Rows appended per sequence so far in this run's decode.
    appended: usize,
    /// Whether the current step appends on this rank.
    appending: bool,
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, shape: CacheShape) -> Result<Self> {
        let (r, c) = shape.layer_shape();
        let layers = (0..shape.layers).map(|_| be.alloc_act(r, c)).collect::<Result<_>>()?;
        Ok(KvCache { shape, layers, appended: 0, appending: false })
    }

    /// A new prefill overwrites the prompt's rows; nothing is appended yet.
    pub fn restart(&mut self) {
        self.appended = 0;
        self.appending = false;
    }

    /// Rows of every sequence in use.
    pub fn rows(&self) -> usize {
        self.shape.prompt + self.appended
    }

    /// Begin a decode step: whether this rank appends its new K/V rows.
    pub fn begin_step(&mut self, appends: bool) -> Result<()> {
        if appends {
            ensure!(
                self.appended < self.shape.slots,
                "K/V cache: a decode step beyond the {} rows reserved per sequence",
                self.shape.slots
            );
            self.appended += 1;
        }
        self.appending = appends;
        Ok(())
    }

    pub fn appending(&self) -> bool {
        self.appending
    }

    /// The prompt's K/V of layer `layer` for sequences first_seq .. first_seq + blocks.seqs, held
    /// in `src` as `blocks` lays them out (a rank's own rows, or the parts an exchange brought).
    pub fn store_prompt(&mut self, be: &B, layer: usize, src: &B::Act, blocks: &Blocks, first_seq: usize) -> Result<()> {
        let cap = self.shape.capacity();
        for s in 0..blocks.seqs {
            let mut at = 0;
            for (row0, tokens) in &blocks.parts {
                let n = tokens.len();
                be.copy_rows(src, row0 + s * n, &mut self.layers[layer], (first_seq + s) * cap + at, n)?;
                at += n;
            }
            ensure!(at == self.shape.prompt, "K/V cache: {at} prompt rows stored per sequence, {} expected", self.shape.prompt);
        }
        Ok(())
    }

    /// Append sequence `seq`'s new K|V row: row `src_row` of `src`, from column `src_col0`.
    pub fn append(&mut self, be: &B, layer: usize, src: &B::Act, src_row: usize, src_col0: usize, seq: usize) -> Result<()> {
        debug_assert!(self.appending);
        let cols = self.shape.kv_cols;
        let dst_row0 = seq * self.shape.capacity() + self.rows() - 1;
        be.copy_block(src, &mut self.layers[layer], BlockCopy { src_row0: src_row, src_col0, dst_row0, dst_col0: 0, rows: 1, cols })
    }

    /// Attention of the new tokens of `run` (queries in rows `run.row` .. of `q`, of sequences
    /// `run.seq` ..) against every cached row of each one's sequence, merged into the same rows
    /// of (o, lse); `scratch` holds the split partials (`Backend::attention_decode`).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        be: &B,
        layer: usize,
        q: &B::Act,
        run: Run,
        heads: Heads,
        o: &mut B::Acc,
        lse: &mut B::Acc,
        scratch: &mut B::Acc,
    ) -> Result<()> {
        let span = DecodeSpan { q_row0: run.row, count: run.count, seq0: run.seq, stride: self.shape.capacity(), len: self.rows() };
        be.attention_decode(q, &self.layers[layer], heads, span, o, lse, scratch)
    }

    pub fn shape(&self) -> CacheShape {
        self.shape
    }
}
