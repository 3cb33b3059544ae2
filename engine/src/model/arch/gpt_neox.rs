//! GPT-NeoX / Pythia (the paper's TL;DR policy, Pythia 1B): fused `query_key_value` laid out
//! per head as [q | k | v], partial rotary embedding (`rotary_pct`), parallel residual,
//! untied `embed_out`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::{RopeParameters, TokenIds};
use crate::model::batch::KvCache;
use crate::model::ops::{self, Activation, LayerNorm, Linear, RotaryTable};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// transformers 4 spelling; transformers 5 writes `partial_rotary_factor`.
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    /// transformers 4 spelling; transformers 5 writes `rope_theta`.
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    #[serde(flatten)]
    pub rope: RopeParameters,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub tokens: TokenIds,
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn rotary_dims(&self) -> usize {
        let pct = self.rope.partial_factor().or(self.rotary_pct).unwrap_or(0.25);
        (self.head_dim() as f64 * pct) as usize
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    act: Activation,
    n_head: usize,
    rot_dims: usize,
    parallel: bool,
}

impl Layer {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps, cfg.attention_bias);
        let a = vb.pp("attention");
        let m = vb.pp("mlp");
        Ok(Self {
            input_layernorm: LayerNorm::load(&vb.pp("input_layernorm"), h, eps)?,
            post_attention_layernorm: LayerNorm::load(&vb.pp("post_attention_layernorm"), h, eps)?,
            query_key_value: Linear::load(&a.pp("query_key_value"), h, 3 * h, bias)?,
            dense: Linear::load(&a.pp("dense"), h, h, bias)?,
            dense_h_to_4h: Linear::load(&m.pp("dense_h_to_4h"), h, i, true)?,
            dense_4h_to_h: Linear::load(&m.pp("dense_4h_to_h"), i, h, true)?,
            act: cfg.hidden_act,
            n_head: cfg.num_attention_heads,
            rot_dims: cfg.rotary_dims(),
            parallel: cfg.use_parallel_residual,
        })
    }

    fn attention(
        &self,
        xs: &Tensor,
        rot: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let d = h / self.n_head;
        let qkv = self.query_key_value.forward(xs)?;
        if cache.is_none() && qkv.track_op() {
            // Training: the attention reads q, k and v where the projection wrote them.
            let (rope, scale, heads) = (Some((&rot.0, &rot.1)), 1.0 / (d as f64).sqrt(), (self.n_head, self.n_head));
            let y = ops::attention_joined(&qkv, ops::QkvLayout::PerHead, rope, mask, scale, heads)?;
            return self.dense.forward(&y);
        }
        // (b, t, heads, 3 * d) -> per head [q | k | v].
        let qkv = qkv.reshape((b, t, self.n_head, 3 * d))?;
        let part = |i: usize| qkv.narrow(3, i * d, d)?.transpose(1, 2)?.contiguous();
        let q = ops::partial_rope(&part(0)?, &rot.0, &rot.1, self.rot_dims)?;
        let k = ops::partial_rope(&part(1)?, &rot.0, &rot.1, self.rot_dims)?;
        let v = part(2)?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let y = ops::attention(&q, &k, &v, mask, 1.0 / (d as f64).sqrt())?;
        self.dense.forward(&y.transpose(1, 2)?.reshape((b, t, h))?)
    }

    fn mlp(&self, xs: &Tensor) -> Result<Tensor> {
        self.dense_4h_to_h.forward(&self.act.forward(&self.dense_h_to_4h.forward(xs)?)?)
    }

    fn forward(
        &self,
        xs: &Tensor,
        rot: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let attn = self.attention(&self.input_layernorm.forward(xs)?, rot, mask, cache)?;
        if self.parallel {
            let mlp = self.mlp(&self.post_attention_layernorm.forward(xs)?)?;
            (xs + attn)? + mlp
        } else {
            let xs = (xs + attn)?;
            let mlp = self.mlp(&self.post_attention_layernorm.forward(&xs)?)?;
            xs + mlp
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    embed_in: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    embed_out: Linear,
    rotary: RotaryTable,
}

impl Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let g = vb.pp("gpt_neox");
        let embed = g.pp("embed_in").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let embed_out =
            ops::output_head(&vb, "embed_out", &embed, &g.pp("embed_in").prefix(), cfg.tie_word_embeddings)?;
        let layers =
            (0..cfg.num_hidden_layers).map(|i| Layer::load(cfg, g.pp("layers").pp(i))).collect::<Result<Vec<_>>>()?;
        let base = cfg.rotary_emb_base.unwrap_or_else(|| cfg.rope.theta(10000.0));
        let inv_freq = cfg.rope.inv_freq_with_base(cfg.rotary_dims(), base)?;
        Ok(Self {
            embed_in: Embedding::new(embed, cfg.hidden_size),
            layers,
            final_layer_norm: LayerNorm::load(&g.pp("final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            embed_out,
            rotary: RotaryTable::new(&inv_freq, cfg.max_position_embeddings, vb.dtype(), vb.device())?,
        })
    }

    /// The output head (the embedding's weight when tied).
    pub fn head(&self) -> &Linear {
        &self.embed_out
    }

    /// The output head (the embedding's weight when tied).
    pub fn head_mut(&mut self) -> &mut Linear {
        &mut self.embed_out
    }

    /// Every projection, for adapters and weight surgery.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            out.extend([&mut l.query_key_value, &mut l.dense, &mut l.dense_h_to_4h, &mut l.dense_4h_to_h]);
        }
        out
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }

    pub fn embed(&self, input_ids: &Tensor, _position_ids: &Tensor) -> Result<Tensor> {
        self.embed_in.forward(input_ids)
    }

    /// Runs the layers in `range` on `xs` (batch, seq, hidden), without the final norm.
    pub fn layers(
        &self,
        xs: Tensor,
        range: std::ops::Range<usize>,
        position_ids: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let rot = self.rotary.lookup(position_ids)?;
        let mut xs = xs;
        for (i, layer) in self.layers.iter().enumerate().take(range.end).skip(range.start) {
            xs = layer.forward(&xs, &rot, mask, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        Ok(xs)
    }

    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(xs)
    }

    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.embed_out.forward(hidden)
    }
}
