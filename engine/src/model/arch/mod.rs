//! Architecture configs read straight from a checkpoint's `config.json`, as HF writes them.
//!
//! Pieces several architectures share (rotary parameters in both the transformers 4 and 5
//! spellings, special token ids that may be one id or a list) live here; each architecture's own
//! fields live beside its model code.

use serde::Deserialize;

pub mod gpt2;
pub mod gpt_neox;
pub mod llama;

use crate::model::error::ModelError;

/// One config per supported `model_type`.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    Llama(llama::Config),
    Gpt2(gpt2::Config),
    GptNeoX(gpt_neox::Config),
}

/// The `model_type` values this engine accepts, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, qwen2, gpt2, gpt_neox";

impl ArchConfig {
    /// Parses a `config.json`, dispatching on its `model_type`.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        let bad = |e: serde_json::Error| ModelError::Config { origin: origin.to_string(), message: e.to_string() };
        #[derive(Deserialize)]
        struct Probe {
            model_type: Option<String>,
        }
        let probe: Probe = serde_json::from_str(text).map_err(bad)?;
        let model_type = probe.model_type.unwrap_or_default();
        Ok(match model_type.as_str() {
            "llama" | "qwen2" => Self::Llama(serde_json::from_str(text).map_err(bad)?),
            "gpt2" => Self::Gpt2(serde_json::from_str(text).map_err(bad)?),
            "gpt_neox" => Self::GptNeoX(serde_json::from_str(text).map_err(bad)?),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{origin}: model_type {other:?} is not supported (supported: {SUPPORTED_MODEL_TYPES})"
                )));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::Gpt2(_) => "gpt2",
            Self::GptNeoX(_) => "gpt_neox",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(c) => c.vocab_size,
            Self::Gpt2(c) => c.vocab_size,
            Self::GptNeoX(c) => c.vocab_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Llama(c) => c.num_hidden_layers,
            Self::Gpt2(c) => c.n_layer,
            Self::GptNeoX(c) => c.num_hidden_layers,
        }
    }

    pub fn tokens(&self) -> &TokenIds {
        match self {
            Self::Llama(c) => &c.tokens,
            Self::Gpt2(c) => &c.tokens,
            Self::GptNeoX(c) => &c.tokens,
        }
    }
}

/// Special token ids as configs give them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenIds {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
            None => vec![],
        }
    }
}

/// Rotary parameters: `rope_theta` + `rope_scaling` (transformers 4) or `rope_parameters`
/// (transformers 5), flattened into an architecture's config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, rename = "type")]
    pub legacy_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

impl RopeParameters {
    /// The rotary base, `default` when the config names none.
    pub fn theta(&self, default: f64) -> f64 {
        self.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(self.rope_theta).unwrap_or(default)
    }

    /// The fraction of each head that is rotated, if the config gives one.
    pub fn partial_factor(&self) -> Option<f64> {
        self.rope_parameters.as_ref().and_then(|p| p.partial_rotary_factor).or(self.partial_rotary_factor)
    }

    fn scaling(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// Inverse frequencies for `rot_dims` rotated dims, with the config's scaling applied.
    pub fn inv_freq_with_base(&self, rot_dims: usize, base: f64) -> candle_core::Result<Vec<f32>> {
        let inv: Vec<f64> = (0..rot_dims / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / rot_dims as f64)).collect();
        let Some(s) = self.scaling() else {
            return Ok(inv.into_iter().map(|f| f as f32).collect());
        };
        let kind = s.rope_type.as_deref().or(s.legacy_type.as_deref()).unwrap_or("default");
        let factor = s.factor.unwrap_or(1.0);
        let out: Vec<f64> = match kind {
            "default" => inv,
            "linear" => inv.into_iter().map(|f| f / factor).collect(),
            "llama3" => {
                // As HF `_compute_llama3_parameters`.
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old_ctx = s.original_max_position_embeddings.unwrap_or(8192.0);
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                inv.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            other => candle_core::bail!("rope scaling type {other:?} is not supported (default, linear, llama3)"),
        };
        Ok(out.into_iter().map(|f| f as f32).collect())
    }

    pub fn inv_freq(&self, rot_dims: usize) -> candle_core::Result<Vec<f32>> {
        self.inv_freq_with_base(rot_dims, self.theta(10000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rope_spellings() {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0,"eos_token_id":[1,2]}"#;
        let ArchConfig::Llama(c) = ArchConfig::from_json(v4, "v4").unwrap() else { panic!() };
        assert_eq!(c.rope.theta(10000.0), 500000.0);
        assert_eq!(c.tokens.eos_ids(), vec![1, 2]);
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,
            "rope_parameters":{"rope_theta":1000.0,"rope_type":"default"},"eos_token_id":3}"#;
        let ArchConfig::Llama(c) = ArchConfig::from_json(v5, "v5").unwrap() else { panic!() };
        assert_eq!(c.rope.theta(10000.0), 1000.0);
        assert_eq!(c.tokens.eos_ids(), vec![3]);
    }

    #[test]
    fn unknown_model_type_names_what_is_supported() {
        let err = ArchConfig::from_json(r#"{"model_type":"t5"}"#, "x/config.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t5") && msg.contains("gpt_neox") && msg.contains("x/config.json"), "{msg}");
    }
}
