//! GPT-2 (the paper's IMDB policy, gpt2-large-imdb): learned positions, LayerNorm, Conv1D
//! weights stored (in, out), head tied to `wte`.
//!
//! Checkpoints name weights either `transformer.h.N...` (saved from `GPT2LMHeadModel`) or
//! `h.N...` (the original OpenAI upload); both load.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::TokenIds;
use crate::model::batch::KvCache;
use crate::model::ops::{self, Activation, LayerNorm, Linear};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub tokens: TokenIds,
}

fn default_act() -> Activation {
    Activation::GeluTanh
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_c_proj: Linear,
    act: Activation,
    n_head: usize,
    scale: f64,
}

impl Block {
    fn load(cfg: &Config, vb: VarBuilder, layer: usize) -> Result<Self> {
        let h = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * h);
        let mut scale = if cfg.scale_attn_weights { 1.0 / ((h / cfg.n_head) as f64).sqrt() } else { 1.0 };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            ln_1: LayerNorm::load(&vb.pp("ln_1"), h, cfg.layer_norm_epsilon)?,
            c_attn: Linear::load_conv1d(&vb.pp("attn").pp("c_attn"), h, 3 * h)?,
            attn_c_proj: Linear::load_conv1d(&vb.pp("attn").pp("c_proj"), h, h)?,
            ln_2: LayerNorm::load(&vb.pp("ln_2"), h, cfg.layer_norm_epsilon)?,
            c_fc: Linear::load_conv1d(&vb.pp("mlp").pp("c_fc"), h, inner)?,
            mlp_c_proj: Linear::load_conv1d(&vb.pp("mlp").pp("c_proj"), inner, h)?,
            act: cfg.activation_function,
            n_head: cfg.n_head,
            scale,
        })
    }

    fn attn(&self, xs: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let d = h / self.n_head;
        let qkv = self.c_attn.forward(xs)?;
        if cache.is_none() && qkv.track_op() {
            // Training: the attention reads q, k and v where `c_attn` wrote them, [q | k | v].
            let heads = (self.n_head, self.n_head);
            let y = ops::attention_joined(&qkv, ops::QkvLayout::Stacked, None, mask, self.scale, heads)?;
            return self.attn_c_proj.forward(&y);
        }
        let heads = |i: usize| qkv.narrow(2, i * h, h)?.reshape((b, t, self.n_head, d))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let y = ops::attention(&q, &k, &v, mask, self.scale)?;
        self.attn_c_proj.forward(&y.transpose(1, 2)?.reshape((b, t, h))?)
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let xs = (xs + self.attn(&self.ln_1.forward(xs)?, mask, cache)?)?;
        let h = self.act.forward(&self.c_fc.forward(&self.ln_2.forward(&xs)?)?)?;
        xs + self.mlp_c_proj.forward(&h)?
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    wte: Embedding,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let t = if vb.contains_tensor("transformer.wte.weight") { vb.pp("transformer") } else { vb.clone() };
        let wte = t.pp("wte").get((cfg.vocab_size, cfg.n_embd), "weight")?;
        let lm_head = ops::output_head(&vb, "lm_head", &wte, &t.pp("wte").prefix(), cfg.tie_word_embeddings)?;
        let h = (0..cfg.n_layer).map(|i| Block::load(cfg, t.pp("h").pp(i), i)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wte: Embedding::new(wte, cfg.n_embd),
            wpe: t.pp("wpe").get((cfg.n_positions, cfg.n_embd), "weight")?,
            h,
            ln_f: LayerNorm::load(&t.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?,
            lm_head,
        })
    }

    /// The output head (the embedding's weight when tied).
    pub fn head(&self) -> &Linear {
        &self.lm_head
    }

    /// The output head (the embedding's weight when tied).
    pub fn head_mut(&mut self) -> &mut Linear {
        &mut self.lm_head
    }

    /// Every projection, for adapters and weight surgery.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for b in &mut self.h {
            out.extend([&mut b.c_attn, &mut b.attn_c_proj, &mut b.c_fc, &mut b.mlp_c_proj]);
        }
        out
    }

    pub fn num_layers(&self) -> usize {
        self.h.len()
    }

    pub fn max_positions(&self) -> usize {
        self.wpe.dim(0).unwrap_or(0)
    }

    pub fn embed(&self, input_ids: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = position_ids.dims2()?;
        let top = position_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if top >= self.max_positions() {
            candle_core::bail!("position {top} is beyond the model's {} positions", self.max_positions());
        }
        let pos = self.wpe.index_select(&position_ids.flatten_all()?, 0)?.reshape((b, t, ()))?;
        self.wte.forward(input_ids)? + pos
    }

    /// Runs the layers in `range` on `xs` (batch, seq, hidden), without the final norm.
    pub fn layers(
        &self,
        xs: Tensor,
        range: std::ops::Range<usize>,
        _position_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut xs = xs;
        for (i, block) in self.h.iter().enumerate().take(range.end).skip(range.start) {
            xs = block.forward(&xs, mask, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        Ok(xs)
    }

    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.ln_f.forward(xs)
    }

    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}
