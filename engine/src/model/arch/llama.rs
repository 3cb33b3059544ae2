//! Llama family: SmolLM2, TinyLlama, Llama 3.x (with its rope scaling), Qwen2 (q/k/v biases).
//!
//! Weight names are HF's (`model.layers.N.self_attn.q_proj.weight`, ...). GGUF files are mapped
//! onto these names by the loader, q/k rows un-permuted, so one implementation serves both.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::{RopeParameters, TokenIds};
use crate::model::batch::KvCache;
use crate::model::ops::{self, Activation, Linear, RotaryTable};

/// HF `config.json` of `model_type` "llama" or "qwen2".
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(flatten)]
    pub rope: RopeParameters,
    /// Llama: biases on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub tokens: TokenIds,
    /// Inverse rotary frequencies given outright (Llama 3.x GGUF files store them precomputed).
    #[serde(skip)]
    pub inv_freq_override: Option<Vec<f32>>,
}

fn default_act() -> Activation {
    Activation::Silu
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}

impl Config {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn is_qwen2(&self) -> bool {
        self.model_type.as_deref() == Some("qwen2")
    }
    /// Qwen2 has biases on q, k, v but not o.
    fn qkv_bias(&self) -> bool {
        self.attention_bias || self.is_qwen2()
    }
    fn o_bias(&self) -> bool {
        self.attention_bias && !self.is_qwen2()
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), h, nh * d, cfg.qkv_bias())?,
            k_proj: Linear::load(&vb.pp("k_proj"), h, nkv * d, cfg.qkv_bias())?,
            v_proj: Linear::load(&vb.pp("v_proj"), h, nkv * d, cfg.qkv_bias())?,
            o_proj: Linear::load(&vb.pp("o_proj"), nh * d, h, cfg.o_bias())?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rot: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let d = self.head_dim;
        let scale = 1.0 / (d as f64).sqrt();
        let heads = (self.num_heads, self.num_kv_heads);
        if cache.is_none() {
            // Training: q, k and v as one product, read by the attention where it wrote them.
            if let Some(qkv) = Linear::forward_joined(&[&self.q_proj, &self.k_proj, &self.v_proj], xs)? {
                let y =
                    ops::attention_joined(&qkv, ops::QkvLayout::Stacked, Some((&rot.0, &rot.1)), mask, scale, heads)?;
                return self.o_proj.forward(&y);
            }
        }
        let (q, k, v) = (self.q_proj.forward(xs)?, self.k_proj.forward(xs)?, self.v_proj.forward(xs)?);
        let Some((c, layer)) = cache else {
            let y = ops::attention_rows((&q, &k, &v), Some((&rot.0, &rot.1)), mask, scale, heads)?;
            return self.o_proj.forward(&y);
        };
        let heads = |x: Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
        let (q, k, v) = (heads(q, self.num_heads)?, heads(k, self.num_kv_heads)?, heads(v, self.num_kv_heads)?);
        let q = ops::rope(&q, &rot.0, &rot.1)?;
        let k = ops::rope(&k, &rot.0, &rot.1)?.contiguous()?;
        let v = v.contiguous()?;
        let (k, v) = c.append(layer, &k, &v)?;
        let y = ops::attention(&q, &k, &v, mask, scale)?;
        let y = y.transpose(1, 2)?.reshape((b, t, self.num_heads * d))?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(&vb.pp("gate_proj"), h, i, bias)?,
            up_proj: Linear::load(&vb.pp("up_proj"), h, i, bias)?,
            down_proj: Linear::load(&vb.pp("down_proj"), i, h, bias)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(gate_up) = Linear::forward_joined(&[&self.gate_proj, &self.up_proj], xs)? {
            return self.down_proj.forward(&self.act.gated_joined(&gate_up)?);
        }
        let h = self.act.gated(&self.gate_proj.forward(xs)?, &self.up_proj.forward(xs)?)?;
        self.down_proj.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
    eps: f64,
}

impl Block {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: vb.pp("input_layernorm").get(cfg.hidden_size, "weight")?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: vb.pp("post_attention_layernorm").get(cfg.hidden_size, "weight")?,
            mlp: Mlp::load(cfg, vb.pp("mlp"))?,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rot: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let h = ops::rms_norm(xs, &self.input_layernorm, self.eps)?;
        let xs = (xs + self.self_attn.forward(&h, rot, mask, cache)?)?;
        let h = ops::rms_norm(&xs, &self.post_attention_layernorm, self.eps)?;
        xs + self.mlp.forward(&h)?
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rotary: RotaryTable,
    eps: f64,
}

impl Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let lm_head =
            ops::output_head(&vb, "lm_head", &embed, &m.pp("embed_tokens").prefix(), cfg.tie_word_embeddings)?;
        let layers =
            (0..cfg.num_hidden_layers).map(|i| Block::load(cfg, m.pp("layers").pp(i))).collect::<Result<Vec<_>>>()?;
        let inv_freq = match &cfg.inv_freq_override {
            Some(f) => f.clone(),
            None => cfg.rope.inv_freq(cfg.head_dim())?,
        };
        Ok(Self {
            embed_tokens: Embedding::new(embed, cfg.hidden_size),
            layers,
            norm: m.pp("norm").get(cfg.hidden_size, "weight")?,
            lm_head,
            rotary: RotaryTable::new(&inv_freq, cfg.max_position_embeddings, vb.dtype(), vb.device())?,
            eps: cfg.rms_norm_eps,
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
        for l in &mut self.layers {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            out.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            out.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
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
        self.embed_tokens.forward(input_ids)
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
        ops::rms_norm(xs, &self.norm, self.eps)
    }

    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}
