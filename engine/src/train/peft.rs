//! LoRA adapters in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`, the
//! pair `peft.PeftModel.from_pretrained` reads and vLLM loads by name (`--enable-lora`,
//! `POST /v1/load_lora_adapter`). A policy trained with `Trainable::Lora` is written as one;
//! an adapter PEFT wrote is read back into a policy.
//!
//! The tensors are the policy's own, under PEFT's names: `base_model.model.` + the HF module
//! path + `.lora_A.weight` (rank, in) / `.lora_B.weight` (out, rank); the update is
//! `W + (lora_alpha / r) B A`, as the engine computes it. Only plain LoRA is read: adapters
//! with DoRA, rsLoRA, per-layer ranks, trained biases or extra saved modules are refused by
//! name rather than loaded into something that computes differently.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::policy::{Policy, Trainable};
use crate::model::{Checkpoint, ModelError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts before a module's HF path in a causal LM's adapter.
const PREFIX: &str = "base_model.model.";

/// The fields of `adapter_config.json` this engine writes and reads (PEFT ignores none of
/// them, and fills the rest with its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    /// Module names (the last component of their HF path) carrying an adapter.
    pub target_modules: TargetModules,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "no_bias")]
    pub bias: String,
    /// GPT-2's Conv1D stores weights (in, out): PEFT notes it so merging transposes.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    /// Newer PEFT options that change what the adapter computes; read only to refuse them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lora_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_token_indices: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_replication: Option<serde_json::Value>,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn no_bias() -> String {
    "none".into()
}

/// PEFT writes `target_modules` as a list, or as one regular expression string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Pattern(String),
}

impl AdapterConfig {
    /// The engine's LoRA settings, or why this adapter is not plain LoRA.
    pub fn trainable(&self, source: &Path) -> Result<Trainable> {
        let refuse = |what: &str| Err(ModelError::format(source, format!("{what}: only plain LoRA adapters are read")));
        if self.peft_type != "LORA" {
            return refuse(&format!("peft_type {:?}", self.peft_type));
        }
        if self.use_dora {
            return refuse("use_dora (DoRA)");
        }
        if self.use_rslora {
            return refuse("use_rslora (rank-stabilised scaling)");
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return refuse("rank_pattern / alpha_pattern (per-module ranks)");
        }
        if self.bias != "none" {
            return refuse(&format!("bias {:?} (trained biases)", self.bias));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("modules_to_save (fully trained modules)");
        }
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        for (name, v) in [
            ("layers_to_transform", &self.layers_to_transform),
            ("target_parameters", &self.target_parameters),
            ("trainable_token_indices", &self.trainable_token_indices),
            ("layer_replication", &self.layer_replication),
        ] {
            if set(v) {
                return refuse(name);
            }
        }
        if self.lora_bias {
            return refuse("lora_bias (a bias on lora_B)");
        }
        let targets = match &self.target_modules {
            TargetModules::List(t) => t.clone(),
            TargetModules::Pattern(p) => return refuse(&format!("target_modules as a pattern ({p:?})")),
        };
        if self.r == 0 {
            return Err(ModelError::format(source, "r is 0"));
        }
        Ok(Trainable::Lora { rank: self.r, alpha: self.lora_alpha, targets })
    }
}

/// Writes `policy`'s LoRA adapters into `dir` in PEFT's format; `base_model` names the model
/// they apply to (`base_model_name_or_path`, e.g. an HF hub id or the served model's name).
pub fn save(policy: &Policy, dir: &Path, base_model: &str) -> Result<()> {
    let Trainable::Lora { rank, alpha, targets } = policy.trainable() else {
        return Err(ModelError::Input(format!(
            "a PEFT adapter holds LoRA weights; this policy trains {:?} (use `apl convert` without --peft for a whole checkpoint)",
            policy.trainable()
        )));
    };
    std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
    let tensors: HashMap<String, candle_core::Tensor> = policy
        .trainable_tensors()?
        .into_iter()
        .map(|(name, t)| Ok((format!("{PREFIX}{name}"), t.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<_>>()?;
    let weights = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| ModelError::format(&weights, e))?;
    // Targets as PEFT lists them: sorted, once each.
    let targets: BTreeSet<String> = targets.iter().cloned().collect();
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r: *rank,
        lora_alpha: *alpha,
        target_modules: TargetModules::List(targets.into_iter().collect()),
        lora_dropout: 0.0,
        bias: no_bias(),
        fan_in_fan_out: conv1d_targets(policy),
        base_model_name_or_path: Some(base_model.to_string()),
        inference_mode: true,
        use_rslora: false,
        use_dora: false,
        modules_to_save: None,
        rank_pattern: HashMap::new(),
        alpha_pattern: HashMap::new(),
        layers_to_transform: None,
        lora_bias: false,
        target_parameters: None,
        trainable_token_indices: None,
        layer_replication: None,
    };
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::format(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(ModelError::io(&path))
}

/// Whether any adapted projection is a GPT-2 Conv1D (weights stored (in, out)).
fn conv1d_targets(policy: &Policy) -> bool {
    let mut m = policy.model().clone();
    m.linears_mut().into_iter().any(|l| l.lora.is_some() && l.in_out)
}

/// Reads `dir`'s adapter config.
pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(ModelError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(&path, e))
}

/// The policy `base` + the PEFT adapter in `dir`.
pub fn load(base: Checkpoint, dir: &Path) -> Result<Policy> {
    let config = read_config(dir)?;
    let trainable = config.trainable(&dir.join(CONFIG_FILE))?;
    let mut policy = Policy::new(base, trainable, 0)?;
    let path = dir.join(WEIGHTS_FILE);
    let saved =
        candle_core::safetensors::load(&path, policy.reference().device()).map_err(|e| ModelError::format(&path, e))?;
    let mut ours = HashMap::with_capacity(saved.len());
    for (name, t) in saved {
        // PEFT may keep the adapter's name in keys (`.lora_A.default.weight`) when saved by hand.
        let name = name.replace(".default.weight", ".weight");
        let Some(stripped) = name.strip_prefix(PREFIX) else {
            return Err(ModelError::format(&path, format!("tensor {name}: expected names starting with {PREFIX}")));
        };
        ours.insert(stripped.to_string(), t);
    }
    let expected = policy.vars().len();
    if ours.len() != expected {
        let mine: BTreeSet<&String> = policy.vars().iter().map(|(n, _)| n).collect();
        let extra: Vec<&String> = ours.keys().filter(|k| !mine.contains(k)).take(3).collect();
        return Err(ModelError::format(
            &path,
            format!("{} tensors, this model's targets make {expected} (not in this model: {extra:?})", ours.len()),
        ));
    }
    policy.set_trainable(&ours, &path)?;
    Ok(policy)
}
