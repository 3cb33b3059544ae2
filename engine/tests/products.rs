//! bf16 products on AMX (`cpu/amx.rs`) through the whole model: scores and a DPO-style
//! gradient against the same computation in f32; frozen weights packed once (`cpu/packed.rs`)
//! against weights packed per call, and never for a weight that training changes. Its own test
//! binary, because the precision is chosen for the whole process (each test holds `PROCESS`
//! while it runs). Skipped (with a message) on CPUs without AMX.

mod common;

use std::sync::Mutex;

use apl_engine::model::Model;
use apl_engine::model::batch::{Batch, Padding};
use apl_engine::model::cpu::amx::{self, Products};
use apl_engine::model::logprobs::batch_logprobs;
use apl_engine::train::policy::Policy;
use apl_shared::settings::Trainable;
use candle_core::{DType, Tensor};
use common::*;

/// The precision is the process's: one test at a time.
static PROCESS: Mutex<()> = Mutex::new(());

/// Holds the process for one test, with `products` chosen; back to f32 when dropped.
struct Chosen(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl Chosen {
    fn new(products: Products) -> Option<Self> {
        if !amx::available() {
            eprintln!("no AMX on this CPU: bf16 products are f32 here; skipped");
            return None;
        }
        let guard = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        amx::set_products(products);
        Some(Self(guard))
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        amx::set_products(Products::F32);
    }
}

const VOCAB: u32 = 320;

/// Six pairs of 24 tokens: 96 completion rows and 144 rows a layer, past `amx::MIN_ROWS`.
fn rows() -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..6).map(|i| (tokens(8, 2 * i + 1, VOCAB), tokens(16, 2 * i + 2, VOCAB))).collect()
}

/// Each row's completion log-prob sum, and the gradient of their weighted sum for every
/// trainable tensor, flattened in the order of `vars`.
fn scores_and_gradient(products: Products) -> (Vec<f32>, Vec<f32>) {
    amx::set_products(products);
    let ck = load("llama", DType::F32);
    let (model, vars) = Model::trainable(&ck, |_| true).unwrap();
    scores_and_gradient_of(&model, &vars)
}

fn scores_and_gradient_of(model: &Model, vars: &[(String, candle_core::Var)]) -> (Vec<f32>, Vec<f32>) {
    let data = rows();
    let pairs: Vec<(&[u32], &[u32])> = data.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    let sums = batch_logprobs(model, &pairs).unwrap().sums;
    let w = Tensor::new(&[0.5f32, -1.0, 0.25, 1.5, -0.75, 1.0], model.device()).unwrap();
    let grads = (&sums * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let mut g = Vec::new();
    for (_, v) in vars {
        g.extend(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (sums.to_vec1::<f32>().unwrap(), g)
}

#[test]
fn bf16_products_stay_close_to_f32() {
    let Some(_chosen) = Chosen::new(Products::F32) else { return };
    let (s32, g32) = scores_and_gradient(Products::F32);
    let (s16, g16) = scores_and_gradient(Products::Bf16);
    // Sums of 16 log-probs: bf16 operands move each by a few hundredths of a nat at most.
    let ds: Vec<f32> = s32.iter().zip(&s16).map(|(a, b)| (a - b).abs()).collect();
    assert!(ds.iter().all(|&d| d < 0.1), "sums {s32:?} vs {s16:?}");
    assert!(ds.iter().any(|&d| d > 0.0), "the bf16 products were not used");
    // The gradient points the same way, and its size agrees to a few percent.
    let dot: f64 = g32.iter().zip(&g16).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
    let norm = |g: &[f32]| g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (norm(&g32) * norm(&g16));
    assert!(cos > 0.999, "cosine {cos}");
    assert!((norm(&g16) / norm(&g32) - 1.0).abs() < 0.02, "norms {} vs {}", norm(&g16), norm(&g32));
}

/// The same scores and gradient with the layers above layer 0 and the head frozen, so their
/// weights are packed once and read packed forward and backward (the gradient of layer 0
/// flows through both), against every weight a variable and packed per call: the same
/// products, so the same numbers up to the order of sums. GPT-2's Conv1D weights (in, out)
/// and GPT-NeoX's untied head included.
#[test]
fn frozen_weights_packed_once_equal_weights_packed_per_call() {
    let Some(_chosen) = Chosen::new(Products::Bf16) else { return };
    for (name, layer0) in
        [("llama", "model.layers.0."), ("gpt2", "transformer.h.0."), ("gpt_neox", "gpt_neox.layers.0.")]
    {
        let ck = load(name, DType::F32);
        let (all, all_vars) = Model::trainable(&ck, |_| true).unwrap();
        let (low, low_vars) = Model::trainable(&ck, |n| n.starts_with(layer0)).unwrap();
        assert!(all.head().packed.is_none(), "{name}: a trained head must not be packed");
        let head = low.head().packed_now().expect("the frozen head is packed");
        assert_eq!(head.bytes(), 0, "{name}: packed only when first read");
        // The all-variables gradient, read for layer 0's variables.
        let layer0_vars: Vec<_> = all_vars.iter().filter(|(n, _)| n.starts_with(layer0)).cloned().collect();
        assert_eq!(layer0_vars.len(), low_vars.len());
        let (s_all, g_all) = scores_and_gradient_of(&all, &layer0_vars);
        let (s_low, g_low) = scores_and_gradient_of(&low, &low_vars);
        // Both of the head's forms were made: forward, and the backward into layer 1's output.
        let (v, d) = low.head().weight.dims2().unwrap();
        assert_eq!(head.bytes(), 2 * 2 * v.div_ceil(32) * 32 * d.div_ceil(32) * 32, "{name}");
        for (a, b) in s_all.iter().zip(&s_low) {
            assert!((a - b).abs() < 1e-4, "{name}: sums {s_all:?} vs {s_low:?}");
        }
        let dot: f64 = g_all.iter().zip(&g_low).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        let norm = |g: &[f32]| g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (norm(&g_all) * norm(&g_low));
        assert!(cos > 0.99999, "{name}: cosine {cos}");
        let ratio = norm(&g_low) / norm(&g_all);
        assert!((ratio - 1.0).abs() < 1e-4, "{name}: norms {} vs {}", norm(&g_low), norm(&g_all));
    }
}

/// The reference and the policy's two views hold the same frozen tensors: one set of packed
/// forms between them, not three.
#[test]
fn a_policy_and_its_reference_share_packed_weights() {
    let base = load("llama", DType::F32);
    let policy = Policy::new(base, Trainable::TopLayers { k: 1 }, 0).unwrap();
    let views = [policy.reference().head(), policy.model().head(), policy.train_model().head()];
    let packed: Vec<_> = views.iter().map(|l| l.packed.clone().expect("a frozen head is packed")).collect();
    assert!(packed.windows(2).all(|p| std::sync::Arc::ptr_eq(&p[0], &p[1])));
}

/// Decoding's few rows (16 here, under `amx::MIN_ROWS`) read the packed weights in bf16:
/// logits near the f32 model's, and not equal to them.
#[test]
fn a_few_rows_read_packed_weights() {
    let Some(_chosen) = Chosen::new(Products::Bf16) else { return };
    let model = model("llama");
    let ids: Vec<u32> = (0..2).flat_map(|i| tokens(8, 40 + i, VOCAB)).collect();
    let batch = Batch::new(&[&ids[..8], &ids[8..]], Padding::Right, 0, DType::F32, model.device()).unwrap();
    let logits = |p| {
        amx::set_products(p);
        model.forward(&batch).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let (l16, l32) = (logits(Products::Bf16), logits(Products::F32));
    let diff = l16.iter().zip(&l32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 0.0 && diff < 0.1, "max |logit difference| {diff}");
}

/// A policy's inference view reads its trained layers through detached views of the
/// variables, which the optimiser overwrites in place: they are never packed, so scores
/// follow the training, and equal the training view's.
#[test]
fn trained_weights_are_never_read_from_a_stale_pack() {
    let Some(_chosen) = Chosen::new(Products::Bf16) else { return };
    let base = load("llama", DType::F32);
    let policy = Policy::new(base, Trainable::TopLayers { k: 1 }, 0).unwrap();
    let top = policy.model().num_layers() - 1;
    let data = rows();
    let pairs: Vec<(&[u32], &[u32])> = data.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    let score = |m: &Model| batch_logprobs(m, &pairs).unwrap().sums.to_vec1::<f32>().unwrap();
    let before = score(policy.model());
    for (name, var) in policy.vars() {
        assert!(name.starts_with(&format!("model.layers.{top}.")), "{name}");
        var.set(&(var.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let (after, trained) = (score(policy.model()), score(policy.train_model()));
    assert_ne!(before, after, "the inference view did not see the new weights");
    for (a, b) in after.iter().zip(&trained) {
        assert!((a - b).abs() < 1e-4, "inference {after:?} vs training {trained:?}");
    }
}
