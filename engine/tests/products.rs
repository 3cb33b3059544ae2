//! bf16 products on AMX (`cpu/amx.rs`) through the whole model: scores and a DPO-style
//! gradient against the same computation in f32. Its own test binary, because the precision
//! is chosen for the whole process. Skipped (with a message) on CPUs without AMX.

mod common;

use apl_engine::model::Model;
use apl_engine::model::cpu::amx::{self, Products};
use apl_engine::model::logprobs::batch_logprobs;
use candle_core::{DType, Tensor};
use common::*;

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
    let data = rows();
    let pairs: Vec<(&[u32], &[u32])> = data.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    let sums = batch_logprobs(&model, &pairs).unwrap().sums;
    let w = Tensor::new(&[0.5f32, -1.0, 0.25, 1.5, -0.75, 1.0], model.device()).unwrap();
    let grads = (&sums * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let mut g = Vec::new();
    for (_, v) in &vars {
        g.extend(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (sums.to_vec1::<f32>().unwrap(), g)
}

#[test]
fn bf16_products_stay_close_to_f32() {
    if !amx::available() {
        eprintln!("no AMX on this CPU: bf16 products are f32 here; skipped");
        return;
    }
    let (s32, g32) = scores_and_gradient(Products::F32);
    let (s16, g16) = scores_and_gradient(Products::Bf16);
    amx::set_products(Products::F32);
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
