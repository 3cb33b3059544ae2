//! Checkpoint loaders: an HF directory (config.json + safetensors, single or sharded, +
//! tokenizer.json) or a GGUF file (weights dequantised, names mapped onto HF's, tokenizer
//! rebuilt from metadata).
//!
//! Both produce a [`Checkpoint`]: a config plus HF-named tensors already in the target dtype and
//! device. Models are built from it for inference, or with some tensors turned into variables
//! for training; the tensors are shared, not copied.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

pub mod random;
pub mod tokenizer;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::model::arch::ArchConfig;
use crate::model::arch::llama;
use crate::model::error::{ModelError, Result};
use tokenizer::Tokenizer;

/// A loaded checkpoint: what a model is built from.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: ArchConfig,
    /// The HF `config.json` document (as read, or synthesised from GGUF metadata), written
    /// back when a trained checkpoint is saved.
    pub config_json: serde_json::Value,
    /// HF weight names -> tensors in `dtype` on `device`.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Option<Tokenizer>,
    pub source: PathBuf,
    pub dtype: DType,
    pub device: Device,
}

impl Checkpoint {
    /// Loads a checkpoint directory or a `.gguf` file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if path.is_dir() {
            load_hf_dir(path, dtype, device)
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            load_gguf(path, dtype, device)
        } else if !path.exists() {
            Err(ModelError::Input(format!(
                "model path {} does not exist (give an HF checkpoint directory or a .gguf file)",
                path.display()
            )))
        } else {
            Err(ModelError::Input(format!("model path {} is neither a directory nor a .gguf file", path.display())))
        }
    }

    /// The tokenizer, or an error naming the checkpoint that lacks one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Input(format!("{} has no tokenizer (tokenizer.json)", self.source.display())))
    }

    /// Writes an HF checkpoint directory (config.json, model.safetensors, tokenizer.json)
    /// holding `tensors` (HF names) with this checkpoint's config and tokenizer; loadable by
    /// this engine and by `transformers`.
    pub fn save_hf_with(&self, tensors: &HashMap<String, Tensor>, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        let mut cfg = self.config_json.clone();
        cfg["torch_dtype"] = json!(match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        });
        let cfg_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::format(&cfg_path, e))?;
        std::fs::write(&cfg_path, text).map_err(ModelError::io(&cfg_path))?;
        let cpu: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        let st = dir.join("model.safetensors");
        candle_core::safetensors::save(&cpu, &st).map_err(|e| ModelError::format(&st, e))?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        Ok(())
    }

    /// Writes this checkpoint as an HF directory (e.g. a GGUF file as safetensors).
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        self.save_hf_with(&self.tensors, dir)
    }

    /// Total number of parameters held.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(ModelError::io(path))
}

/// Loads an HF checkpoint directory.
pub fn load_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config_text = read_to_string(&config_path)?;
    let config = ArchConfig::from_json(&config_text, &config_path.display().to_string())?;
    let config_json: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| ModelError::format(&config_path, e))?;

    let files = weight_files(dir)?;
    let mut tensors = HashMap::new();
    for file in &files {
        // SAFETY: the file is only read; a checkpoint modified while loading is the user's error.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }
            .map_err(|e| ModelError::format(file, e))?;
        for (name, _) in st.tensors() {
            if is_buffer(&name) {
                continue;
            }
            let t = st.load(&name, &Device::Cpu).map_err(|e| ModelError::format(file, format!("{name}: {e}")))?;
            tensors.insert(name, t.to_dtype(dtype)?.to_device(device)?);
        }
    }

    let tok_path = dir.join("tokenizer.json");
    let mut tokenizer = if tok_path.exists() { Some(Tokenizer::from_file(&tok_path)?) } else { None };
    if let Some(tok) = tokenizer.as_mut() {
        tok.add_eos_ids(&config.tokens().eos_ids());
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen_cfg: crate::model::arch::TokenIds =
                serde_json::from_str(&read_to_string(&gen_path)?).map_err(|e| ModelError::format(&gen_path, e))?;
            tok.add_eos_ids(&gen_cfg.eos_ids());
        }
    }
    Ok(Checkpoint { config, config_json, tensors, tokenizer, source: dir.to_path_buf(), dtype, device: device.clone() })
}

/// Non-parameter buffers some checkpoints carry (GPT-2's causal masks, Pythia's bool masks and
/// rotary frequencies): never weights, sometimes in dtypes candle cannot read, so never loaded.
fn is_buffer(name: &str) -> bool {
    [".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq"]
        .iter()
        .any(|b| name.ends_with(b))
}

/// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v: serde_json::Value =
            serde_json::from_str(&read_to_string(&index)?).map_err(|e| ModelError::format(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::format(&index, "no \"weight_map\" object"))?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(ModelError::format(&index, format!("shard {} is missing", missing.display())));
        }
        return Ok(files);
    }
    if dir.join("pytorch_model.bin").exists() {
        return Err(ModelError::Unsupported(format!(
            "{}: only safetensors weights are read; convert pytorch_model.bin with \
             `python -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('DIR').save_pretrained('DIR')\"`",
            dir.display()
        )));
    }
    Err(ModelError::Input(format!("{}: no model.safetensors or model.safetensors.index.json", dir.display())))
}

/// Loads a GGUF file: Llama (q/k rows un-permuted) or Qwen2 architecture.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Checkpoint> {
    let mut reader = BufReader::new(File::open(path).map_err(ModelError::io(path))?);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::format(path, e))?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| ModelError::format(path, "metadata key general.architecture is missing"))?;
    if arch != "llama" && arch != "qwen2" {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture {arch:?} is not supported (llama, qwen2); use an HF checkpoint directory",
            path.display()
        )));
    }
    let tokenizer = Tokenizer::from_gguf(&content, path)?;
    let key = |k: &str| format!("{arch}.{k}");
    let num = |k: &str| -> Result<u64> {
        md.get(&key(k))
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .ok_or_else(|| ModelError::format(path, format!("metadata key {} is missing", key(k))))
    };
    let float = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok());
    let n_head = num("attention.head_count")? as usize;
    let n_kv =
        md.get(&key("attention.head_count_kv")).map_or(Ok(n_head as u64), |_| num("attention.head_count_kv"))? as usize;
    let hidden = num("embedding_length")? as usize;
    let head_dim = md.get(&key("attention.key_length")).and_then(|v| v.to_u32().ok()).map(|v| v as usize);
    let has_output = content.tensor_infos.contains_key("output.weight");
    // The embedding's rows, which may exceed the tokenizer's entries (padded vocabularies).
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| ModelError::format(path, "tensor token_embd.weight is missing"))?;
    let eos = md.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
    let bos = md.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok());
    let cfg_json = json!({
        "model_type": arch,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": num("feed_forward_length")?,
        "num_hidden_layers": num("block_count")?,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": num("context_length")?,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": float("rope.freq_base").unwrap_or(10000.0),
        "tie_word_embeddings": !has_output,
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    let mut config: llama::Config =
        serde_json::from_value(cfg_json.clone()).map_err(|e| ModelError::format(path, e))?;
    let mut config_json = cfg_json;
    config_json["architectures"] = json!([if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }]);
    config_json["torch_dtype"] = json!("float32");
    let head_dim = config.head_dim();

    let mut tensors = HashMap::new();
    for (name, _) in content.tensor_infos.iter() {
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| ModelError::format(path, format!("{name}: {e}")))?;
        let t = q.dequantize(&Device::Cpu)?;
        if name == "rope_freqs.weight" {
            // Llama 3.x: llama.cpp stores the rope scaling as per-frequency divisors.
            let factors = t.to_vec1::<f32>()?;
            let inv = crate::model::ops::RotaryTable::default_inv_freq(head_dim, config.rope.theta(10000.0));
            config.inv_freq_override = Some(inv.iter().zip(&factors).map(|(f, d)| f / d).collect());
            continue;
        }
        let Some(hf) = hf_name(name) else {
            return Err(ModelError::Unsupported(format!("{}: unexpected GGUF tensor {name}", path.display())));
        };
        let t = if arch == "llama" && name.contains("attn_q.") {
            unpermute(&t, n_head, head_dim)?
        } else if arch == "llama" && name.contains("attn_k.") {
            unpermute(&t, n_kv, head_dim)?
        } else {
            t
        };
        tensors.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(Checkpoint {
        config: ArchConfig::Llama(config),
        config_json,
        tensors,
        tokenizer: Some(tokenizer),
        source: path.to_path_buf(),
        dtype,
        device: device.clone(),
    })
}

/// llama.cpp tensor names -> HF names.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's q/k row permutation (interleaved rope -> HF's rotate-half layout).
fn unpermute(t: &Tensor, n_head: usize, head_dim: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let out = t.reshape((n_head, head_dim / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_buffers_but_not_biases() {
        assert!(is_buffer("h.0.attn.bias") && is_buffer("gpt_neox.layers.3.attention.bias"));
        assert!(is_buffer("gpt_neox.layers.3.attention.rotary_emb.inv_freq"));
        assert!(!is_buffer("transformer.h.0.attn.c_attn.bias") && !is_buffer("gpt_neox.layers.0.attention.dense.bias"));
        assert!(!is_buffer("gpt_neox.layers.0.attention.query_key_value.bias"));
    }

    #[test]
    fn maps_gguf_names() {
        assert_eq!(hf_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.attn_q.bias").unwrap(), "model.layers.0.self_attn.q_proj.bias");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.0.weird.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_the_conversion_permutation() {
        // convert_hf_to_gguf: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(w.shape)
        let (n_head, hd, cols) = (2, 4, 3);
        let w = Tensor::arange(0f32, (n_head * hd * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((n_head * hd, cols))
            .unwrap();
        let permuted = w
            .reshape((n_head, 2, hd / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((n_head * hd, cols))
            .unwrap();
        let back = unpermute(&permuted, n_head, hd).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
