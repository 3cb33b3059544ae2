//! The policy being trained, beside the frozen reference it started from.
//!
//! What trains is chosen once: every parameter, the top k layers (the frozen layers below are
//! identical in policy and reference, so what they compute is cached per sequence), or LoRA
//! adapters on chosen projections (every base weight frozen). Frozen tensors are never turned
//! into variables, so no gradient is computed for them and no optimiser touches them.
//!
//! Two views share the same storage: `train_model` (variables, for gradients) and `model`
//! (detached, for sampling and scoring with fused kernels and the KV cache). Optimiser updates
//! are in place, so both always see the current weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::ops::LoraAdapter;
use crate::model::{Checkpoint, Model, ModelError, Result};

pub use apl_shared::settings::Trainable;

/// The layer index in an HF weight name (`model.layers.7.`, `transformer.h.7.`,
/// `gpt_neox.layers.7.`), if it has one.
pub fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find(|w| w[0] == "layers" || w[0] == "h").and_then(|w| w[1].parse().ok())
}

pub struct Policy {
    base: Checkpoint,
    reference: Model,
    trainable: Trainable,
    vars: Vec<(String, Var)>,
    initial: Vec<Tensor>,
    train_model: Model,
    model: Model,
    prefix_layer: usize,
}

impl Policy {
    /// A policy equal to `base`, with `trainable` parameters; `seed` initialises LoRA's A.
    pub fn new(base: Checkpoint, trainable: Trainable, seed: u64) -> Result<Self> {
        let reference = Model::from_checkpoint(&base)?;
        let n_layers = reference.num_layers();
        let (train_model, model, vars, prefix_layer) = match &trainable {
            Trainable::All => {
                let (m, vars) = Model::trainable(&base, |_| true)?;
                (m, detached_view(&base, &vars)?, vars, 0)
            }
            Trainable::TopLayers { k } => {
                if *k == 0 || *k > n_layers {
                    return Err(ModelError::Input(format!("top_layers k = {k}: the model has {n_layers} layers")));
                }
                let first = n_layers - k;
                let (m, vars) = Model::trainable(&base, |n| layer_of(n).is_some_and(|l| l >= first))?;
                (m, detached_view(&base, &vars)?, vars, first)
            }
            Trainable::Lora { rank, alpha, targets } => {
                let (train_model, model, vars) = with_lora(&reference, *rank, *alpha, targets, seed)?;
                (train_model, model, vars, 0)
            }
        };
        if vars.is_empty() {
            return Err(ModelError::Input(format!("{trainable:?} selects no parameter of this model")));
        }
        let initial = vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { base, reference, trainable, vars, initial, train_model, model, prefix_layer })
    }

    /// Runs every layer on every step instead of caching the frozen ones (for comparisons).
    pub fn without_prefix_cache(mut self) -> Self {
        self.prefix_layer = 0;
        self
    }

    /// The starting model, frozen.
    pub fn reference(&self) -> &Model {
        &self.reference
    }

    /// The current policy, for sampling and scoring (no gradients).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The current policy with its trainable parameters as variables.
    pub fn train_model(&self) -> &Model {
        &self.train_model
    }

    pub fn base(&self) -> &Checkpoint {
        &self.base
    }

    pub fn trainable(&self) -> &Trainable {
        &self.trainable
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn num_trainable(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Layers below this index are frozen and shared with the reference (0 if none is).
    pub fn prefix_layer(&self) -> usize {
        self.prefix_layer
    }

    /// Back to the starting weights (adapters back to their initial values).
    pub fn reset(&mut self) -> Result<()> {
        for ((_, v), init) in self.vars.iter().zip(&self.initial) {
            v.set(init)?;
        }
        Ok(())
    }

    /// The trainable tensors' current values, by name (what resuming needs).
    pub fn trainable_tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?))).collect()
    }

    /// Saves the trainable tensors as safetensors.
    pub fn save_trainable(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.trainable_tensors()?, path).map_err(|e| ModelError::format(path, e))
    }

    /// Restores trainable tensors saved by [`Policy::save_trainable`].
    pub fn load_trainable(&mut self, path: &Path) -> Result<()> {
        let saved =
            candle_core::safetensors::load(path, self.reference.device()).map_err(|e| ModelError::format(path, e))?;
        self.set_trainable(&saved, path)
    }

    /// Sets every trainable tensor from `saved` (by name; `source` names where they came from
    /// in errors): all must be there, with their shapes.
    pub fn set_trainable(&mut self, saved: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let path = source;
        for (name, v) in &self.vars {
            let t = saved.get(name).ok_or_else(|| ModelError::format(path, format!("tensor {name} is missing")))?;
            if t.dims() != v.dims() {
                return Err(ModelError::format(path, format!("{name}: shape {:?}, expected {:?}", t.dims(), v.dims())));
            }
            v.set(&t.to_dtype(v.dtype())?)?;
        }
        Ok(())
    }

    /// Every weight of the current policy in HF names, adapters merged.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.base.tensors.clone();
        match &self.trainable {
            Trainable::Lora { .. } => {
                let mut m = self.model.clone();
                for lin in m.linears_mut() {
                    if lin.lora.is_some() {
                        out.insert(format!("{}.weight", lin.name), lin.merged_weight()?);
                    }
                }
            }
            _ => {
                // Copies, not views of the variables: a model built from these (which packs
                // its weights for bf16 products, `Model::from_checkpoint`) must not see the
                // optimiser's next step.
                for (n, v) in &self.vars {
                    out.insert(n.clone(), v.as_tensor().copy()?);
                }
            }
        }
        Ok(out)
    }

    /// Writes an HF checkpoint directory (config.json, model.safetensors, tokenizer.json) of the
    /// current policy, adapters merged, loadable by this engine and by `transformers`.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        self.base.save_hf_with(&self.merged_tensors()?, dir)
    }
}

/// The inference view: the checkpoint's tensors with the variables' storage, detached.
fn detached_view(base: &Checkpoint, vars: &[(String, Var)]) -> Result<Model> {
    let mut tensors = base.tensors.clone();
    for (n, v) in vars {
        tensors.insert(n.clone(), v.as_tensor().detach());
    }
    let vb = VarBuilder::from_tensors(tensors, base.dtype, &base.device);
    let mut model = Model::new(&base.config, vb).map_err(|e| ModelError::format(&base.source, e))?;
    // The trained tensors are views of the variables, which the optimiser overwrites in place.
    model.pack_frozen(|name| !vars.iter().any(|(n, _)| n == name));
    Ok(model)
}

/// A training view, an inference view, and the named variables they share.
type Views = (Model, Model, Vec<(String, Var)>);

/// Attaches LoRA adapters (A random, B zero, as PEFT does) to the targeted projections.
fn with_lora(reference: &Model, rank: usize, alpha: f64, targets: &[String], seed: u64) -> Result<Views> {
    if rank == 0 {
        return Err(ModelError::Input("LoRA rank must be at least 1".into()));
    }
    let mut train_model = reference.clone();
    let mut model = reference.clone();
    let mut vars = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (dtype, device) = (reference.dtype(), reference.device().clone());
    let scale = alpha / rank as f64;
    for (tl, il) in train_model.linears_mut().into_iter().zip(model.linears_mut()) {
        let module = tl.name.rsplit('.').next().unwrap_or_default();
        if !targets.iter().any(|t| t == module) {
            continue;
        }
        let (din, dout) = (tl.in_dim(), tl.out_dim());
        // PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0.
        let bound = 1.0 / (din as f64).sqrt();
        let a: Vec<f32> = (0..rank * din).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, din), &device)?.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&Tensor::zeros((dout, rank), dtype, &device)?)?;
        tl.lora = Some(LoraAdapter { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale });
        il.lora = Some(LoraAdapter { a: a.as_tensor().detach(), b: b.as_tensor().detach(), scale });
        vars.push((format!("{}.lora_A.weight", tl.name), a));
        vars.push((format!("{}.lora_B.weight", tl.name), b));
    }
    if vars.is_empty() {
        return Err(ModelError::Input(format!("LoRA targets {targets:?} match no projection of this model")));
    }
    Ok((train_model, model, vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_layer_indices_in_hf_names() {
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_of("transformer.h.3.attn.c_attn.bias"), Some(3));
        assert_eq!(layer_of("h.0.ln_1.weight"), Some(0));
        assert_eq!(layer_of("gpt_neox.layers.5.attention.dense.weight"), Some(5));
        assert_eq!(layer_of("model.norm.weight"), None);
        assert_eq!(layer_of("lm_head.weight"), None);
    }
}
