//! The model engine: checkpoints in, a differentiable causal LM out, plus the two things the
//! learning loop needs from it: batched sampling with a KV cache ([`sample`]) and exact
//! completion log-probabilities ([`logprobs`]).
//!
//! One implementation per architecture serves scoring, training and sampling; the sampler
//! only adds a cache. [`Model`] hides which architecture is inside.

pub mod arch;
pub mod batch;
pub mod cpu;
pub mod error;
pub mod load;
pub mod logprobs;
pub mod ops;
pub mod sample;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use arch::{gpt_neox, gpt2, llama};
use cpu::half;
use cpu::packed::PackedWeight;

pub use arch::ArchConfig;
pub use batch::{Batch, KvCache, Padding};
pub use error::{ModelError, Result};
pub use load::Checkpoint;
pub use load::tokenizer::Tokenizer;
pub use logprobs::{SequenceLogprobs, sequence_logprobs};
pub use sample::{Decoder, FinishReason, Sample, SampleRequest, SamplingConfig, sample};

#[derive(Debug, Clone)]
enum Arch {
    Llama(llama::Model),
    Gpt2(gpt2::Model),
    GptNeoX(gpt_neox::Model),
}

/// A causal language model of any supported architecture.
#[derive(Debug, Clone)]
pub struct Model {
    arch: Arch,
    dtype: DType,
    device: Device,
    vocab_size: usize,
    num_layers: usize,
}

macro_rules! dispatch {
    ($self:expr, $m:ident => $e:expr) => {
        match &$self.arch {
            Arch::Llama($m) => $e,
            Arch::Gpt2($m) => $e,
            Arch::GptNeoX($m) => $e,
        }
    };
}

impl Model {
    /// Builds a model from a config and weights in HF names.
    pub fn new(cfg: &ArchConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let arch = match cfg {
            ArchConfig::Llama(c) => Arch::Llama(llama::Model::new(c, vb)?),
            ArchConfig::Gpt2(c) => Arch::Gpt2(gpt2::Model::new(c, vb)?),
            ArchConfig::GptNeoX(c) => Arch::GptNeoX(gpt_neox::Model::new(c, vb)?),
        };
        Ok(Self { arch, dtype, device, vocab_size: cfg.vocab_size(), num_layers: cfg.num_layers() })
    }

    /// Builds the model for inference over a checkpoint's tensors (shared, not copied), its
    /// weights frozen (packed for bf16 products when first read: `pack_frozen`), so the
    /// checkpoint's tensors must never change in place (no views of a trained variable).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let vb = VarBuilder::from_tensors(ck.tensors.clone(), ck.dtype, &ck.device);
        let mut model = Self::new(&ck.config, vb).map_err(|e| ModelError::format(&ck.source, e))?;
        model.pack_frozen(|_| true);
        Ok(model)
    }

    /// Builds the model with the tensors selected by `trainable` turned into variables, and
    /// returns those variables (HF names) for an optimiser. Other tensors stay frozen: no
    /// gradient is computed for them.
    pub fn trainable(ck: &Checkpoint, trainable: impl Fn(&str) -> bool) -> Result<(Self, Vec<(String, Var)>)> {
        let mut tensors = HashMap::with_capacity(ck.tensors.len());
        let mut vars = Vec::new();
        let mut names: Vec<&String> = ck.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &ck.tensors[name];
            if trainable(name) {
                let v = Var::from_tensor(t)?;
                tensors.insert(name.clone(), v.as_tensor().clone());
                vars.push((name.clone(), v));
            } else {
                tensors.insert(name.clone(), t.clone());
            }
        }
        let vb = VarBuilder::from_tensors(tensors, ck.dtype, &ck.device);
        let mut model = Self::new(&ck.config, vb).map_err(|e| ModelError::format(&ck.source, e))?;
        model.pack_frozen(|name| !vars.iter().any(|(n, _)| n == name));
        Ok((model, vars))
    }

    fn head_mut(&mut self) -> &mut ops::Linear {
        match &mut self.arch {
            Arch::Llama(a) => a.head_mut(),
            Arch::Gpt2(a) => a.head_mut(),
            Arch::GptNeoX(a) => a.head_mut(),
        }
    }

    /// Every attention and MLP projection of the model, with its HF module name.
    pub fn linears_mut(&mut self) -> Vec<&mut ops::Linear> {
        match &mut self.arch {
            Arch::Llama(m) => m.linears_mut(),
            Arch::Gpt2(m) => m.linears_mut(),
            Arch::GptNeoX(m) => m.linears_mut(),
        }
    }

    /// A copy of this model in which every CPU f32 projection and the head, except those
    /// `keep_f32` names (HF module path), also hold an f16 copy of their weight for decoding up
    /// to 8 rows at a time (`half.rs`): batch-1 sampling reads half the bytes. Only for weights
    /// that stay as they are; other devices and dtypes get an unchanged copy.
    pub fn with_half_weights(&self, keep_f32: impl Fn(&str) -> bool) -> candle_core::Result<Self> {
        let mut m = self.clone();
        if !(m.device.is_cpu() && m.dtype == DType::F32) {
            return Ok(m);
        }
        let head = m.head_mut();
        if !keep_f32(&head.name) {
            head.half = Some(half::HalfMatrix::from_weight(&head.weight, head.in_out)?);
        }
        for l in m.linears_mut() {
            if !keep_f32(&l.name) {
                l.half = Some(half::HalfMatrix::from_weight(&l.weight, l.in_out)?);
            }
        }
        Ok(m)
    }

    /// Gives every projection and the head whose weight `frozen` names (HF tensor name, e.g.
    /// `model.layers.3.mlp.up_proj.weight`) forms packed for bf16 products, made when first
    /// read (`packed.rs`). The caller vouches that those tensors never change in place (a
    /// detached view of a trained variable does); other devices and dtypes are left as they are.
    pub fn pack_frozen(&mut self, frozen: impl Fn(&str) -> bool) {
        let pack = |l: &mut ops::Linear| {
            if frozen(&format!("{}.weight", l.name)) {
                l.packed = PackedWeight::of(&l.weight);
            }
        };
        pack(self.head_mut());
        for l in self.linears_mut() {
            pack(l);
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    /// Longest sequence (prompt + completion) the model has positions for.
    pub fn max_positions(&self) -> usize {
        dispatch!(self, m => m.max_positions())
    }

    /// Token (and, for GPT-2, position) embeddings: (batch, seq, hidden).
    pub fn embed(&self, input_ids: &Tensor, position_ids: &Tensor) -> candle_core::Result<Tensor> {
        dispatch!(self, m => m.embed(input_ids, position_ids))
    }

    /// Runs the layers in `range` (no final norm). Running `0..k` once and `k..` many times is
    /// how a trainer caches what frozen lower layers compute.
    pub fn layers(
        &self,
        xs: Tensor,
        range: std::ops::Range<usize>,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        dispatch!(self, m => m.layers(xs, range, position_ids, mask, cache))
    }

    /// Layers `from..` and the final norm.
    pub fn blocks(
        &self,
        xs: Tensor,
        from: usize,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let xs = self.layers(xs, from..self.num_layers, position_ids, mask, cache)?;
        dispatch!(self, m => m.final_norm(&xs))
    }

    /// The output head's layer (the embedding's weight when tied).
    pub fn head(&self) -> &ops::Linear {
        dispatch!(self, m => m.head())
    }

    /// Output head: (..., hidden) -> (..., vocab).
    pub fn lm_head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        dispatch!(self, m => m.lm_head(hidden))
    }

    /// Final hidden states (batch, seq, hidden) for token ids with positions and mask.
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let xs = self.embed(input_ids, position_ids)?;
        self.blocks(xs, 0, position_ids, mask, cache)
    }

    /// Logits for every position of a batch: (batch, seq, vocab).
    pub fn forward(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let h = self.hidden(&batch.input_ids, &batch.position_ids, &batch.mask, None)?;
        self.lm_head(&h)
    }

    /// Checks that token ids fit the vocabulary, naming the first offender.
    pub fn check_ids(&self, what: &str, ids: &[u32]) -> Result<()> {
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= self.vocab_size) {
            return Err(ModelError::Input(format!(
                "{what}: token {i} has id {id}, beyond the vocabulary of {}",
                self.vocab_size
            )));
        }
        Ok(())
    }
}
