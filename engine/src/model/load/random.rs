//! Random-weight checkpoints shaped like well-known models, for benchmarks.
//!
//! Throughput depends on a model's shape, not on its weights, so `apl bench --model random:gpt2-large`
//! measures a 774M model without downloading one; the shapes are the HF configs the peer scripts
//! build (`GPT2Config()`, `GPTNeoXConfig(...)` of pythia-1.4b, SmolLM2-135M's `LlamaConfig`). The
//! weight names come from building the model once over an empty `VarMap`, so every architecture
//! gets exactly the tensors it reads. Values: uniform with standard deviation 0.02 (HF's
//! `initializer_range`) for matrices, ones for norm scales, zeros for biases; seeded.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::model::{ArchConfig, Checkpoint, Model, ModelError, Result};

/// The prefix that selects a random model where a model path is expected.
pub const PREFIX: &str = "random:";

/// Named shapes: (name, HF config.json).
pub const SHAPES: &[(&str, &str)] = &[
    (
        "gpt2",
        r#"{"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
            "n_head": 12, "activation_function": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256}"#,
    ),
    (
        "gpt2-large",
        r#"{"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 1280, "n_layer": 36,
            "n_head": 20, "activation_function": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256}"#,
    ),
    (
        "pythia-1.4b",
        r#"{"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 2048, "num_hidden_layers": 24,
            "num_attention_heads": 16, "intermediate_size": 8192, "hidden_act": "gelu", "rotary_pct": 0.25,
            "rotary_emb_base": 10000, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
            "use_parallel_residual": true, "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 0}"#,
    ),
    (
        "smollm2-135m",
        r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_act": "silu",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}"#,
    ),
];

/// Whether a model spec names a random model (`random:NAME`).
pub fn is_random(spec: &str) -> bool {
    spec.starts_with(PREFIX)
}

/// A checkpoint of `random:NAME` (a name from [`SHAPES`]) or `random:PATH/config.json`, without
/// a tokenizer.
pub fn random_checkpoint(spec: &str, dtype: DType, device: &Device, seed: u64) -> Result<Checkpoint> {
    let name = spec.strip_prefix(PREFIX).unwrap_or(spec);
    let text = match SHAPES.iter().find(|(n, _)| *n == name) {
        Some((_, json)) => json.to_string(),
        None if name.ends_with(".json") => {
            std::fs::read_to_string(name).map_err(ModelError::io(std::path::Path::new(name)))?
        }
        None => {
            let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
            return Err(ModelError::Input(format!(
                "unknown random model {name:?}: use random:NAME with NAME one of {}, or random:PATH/config.json",
                names.join(", ")
            )));
        }
    };
    let config = ArchConfig::from_json(&text, spec)?;
    let config_json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::format(spec, e))?;

    // The names and shapes the model reads, from one construction over an empty VarMap.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Model::new(&config, vb).map_err(|e| ModelError::format(spec, e))?;
    let mut specs: Vec<(String, Vec<usize>)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    specs.sort();

    let tensors = specs
        .into_par_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if name.ends_with(".bias") || name.ends_with("_bias") {
                vec![0.0; n]
            } else if dims.len() == 1 {
                vec![1.0; n]
            } else {
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
                let half_width = 0.02 * 3f32.sqrt();
                (0..n).map(|_| rng.random_range(-half_width..half_width)).collect()
            };
            let t = Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
            Ok((name, t))
        })
        .collect::<candle_core::Result<HashMap<String, Tensor>>>()
        .map_err(|e| ModelError::format(spec, e))?;
    Ok(Checkpoint {
        config,
        config_json,
        tensors,
        tokenizer: None,
        source: PathBuf::from(spec),
        dtype,
        device: device.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_shape_builds_and_counts_its_parameters() {
        // Only the configs are checked here (building the large ones would allocate gigabytes);
        // a small custom config is built in full.
        for (name, json) in SHAPES {
            let cfg = ArchConfig::from_json(json, name).unwrap();
            assert!(cfg.num_layers() > 0, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 2}"#,
        )
        .unwrap();
        let spec = format!("random:{}", path.display());
        let a = random_checkpoint(&spec, DType::F32, &Device::Cpu, 7).unwrap();
        let b = random_checkpoint(&spec, DType::F32, &Device::Cpu, 7).unwrap();
        // embed 64*16 + per layer (q,k,v,o: 16*16 + 2*8*16 + 16*16 ... ) checked through the model itself:
        let model = Model::from_checkpoint(&a).unwrap();
        assert_eq!(model.num_layers(), 2);
        let w = "model.layers.0.self_attn.q_proj.weight";
        assert_eq!(a.tensors[w].dims(), &[16, 16]);
        let diff = (&a.tensors[w] - &b.tensors[w]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "same seed, same weights");
        let std = a.tensors[w].sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        assert!((std - 0.02).abs() < 0.005, "std {std}");
        assert_eq!(a.tensors["model.norm.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 16]);
        assert!(
            random_checkpoint("random:gpt3", DType::F32, &Device::Cpu, 0)
                .unwrap_err()
                .to_string()
                .contains("gpt2-large")
        );
    }
}
