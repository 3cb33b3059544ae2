//! Training through the model: one DPO loss, then every parameter must have a non-zero
//! gradient (candle-nn's fused kernels would silently leave all but the head at zero), and
//! the analytic gradient must agree with central finite differences.

mod common;

use apl_engine::model::logprobs::batch_logprobs;
use apl_engine::model::{Checkpoint, Model};
use candle_core::{DType, Tensor, Var};
use common::*;

const VOCAB: u32 = 320;
const BETA: f64 = 0.2;

/// Two prompts, each with a chosen and a rejected completion of different lengths.
fn pairs() -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    vec![
        (tokens(5, 1, VOCAB), tokens(4, 2, VOCAB), tokens(6, 3, VOCAB)),
        (tokens(3, 4, VOCAB), tokens(7, 5, VOCAB), tokens(2, 6, VOCAB)),
    ]
}

/// -log sigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))), mean over pairs.
fn dpo_loss(model: &Model, reference: &[f64]) -> Tensor {
    let data = pairs();
    let mut rows: Vec<(&[u32], &[u32])> = Vec::new();
    for (p, c, r) in &data {
        rows.push((p, c));
        rows.push((p, r));
    }
    let sums = batch_logprobs(model, &rows).unwrap().sums;
    let n = data.len();
    let dtype = sums.dtype();
    let reference = Tensor::new(reference, model.device()).unwrap().to_dtype(dtype).unwrap();
    let margin = (sums - reference).unwrap().reshape((n, 2)).unwrap();
    let logits = ((margin.narrow(1, 0, 1).unwrap() - margin.narrow(1, 1, 1).unwrap()).unwrap() * BETA).unwrap();
    candle_nn::ops::sigmoid(&logits).unwrap().log().unwrap().neg().unwrap().mean_all().unwrap()
}

#[test]
fn every_parameter_receives_a_gradient() {
    for name in FIXTURES.iter().chain(&["llama-gguf"]) {
        let ck = load(name, DType::F32);
        let (model, vars) = Model::trainable(&ck, |_| true).unwrap();
        assert_eq!(vars.len(), ck.tensors.len(), "{name}: every tensor trainable");
        // The reference differs from the policy so the loss is not at its symmetric point.
        let loss = dpo_loss(&model, &[-30.0, -32.0, -31.0, -29.0]);
        let grads = loss.backward().unwrap();
        let mut missing = Vec::new();
        for (n, v) in &vars {
            let g = grads.get(v.as_tensor());
            let norm = g.map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).unwrap_or(0.0);
            if !(norm > 0.0 && norm.is_finite()) {
                missing.push(n.clone());
            }
        }
        assert!(missing.is_empty(), "{name}: no gradient for {missing:?}");
    }
}

#[test]
fn frozen_parameters_get_no_gradient() {
    let ck = load("llama", DType::F32);
    let (model, vars) = Model::trainable(&ck, |n| n.contains("layers.1.")).unwrap();
    assert!(vars.iter().all(|(n, _)| n.contains("layers.1.")));
    let loss = dpo_loss(&model, &[0.0; 4]);
    let grads = loss.backward().unwrap();
    for (n, v) in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "{n}");
    }
    // Frozen tensors are not variables, so the graph never reaches them.
    let frozen = &ck.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert!(!frozen.is_variable() && grads.get(frozen).is_none());
}

/// Adds `h` to one element of one tensor of a checkpoint.
fn nudge(ck: &Checkpoint, name: &str, index: usize, h: f64) -> Checkpoint {
    let mut ck = ck.clone();
    let t = &ck.tensors[name];
    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[index] += h;
    let t = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
    ck.tensors.insert(name.to_string(), t);
    ck
}

#[test]
fn gradients_agree_with_finite_differences() {
    let reference = [-30.0, -32.0, -31.0, -29.0];
    for name in ["llama", "qwen2", "gpt2", "gpt_neox"] {
        // f64 so that the finite differences themselves are exact to many digits.
        let ck = load(name, DType::F64);
        let (model, vars) = Model::trainable(&ck, |_| true).unwrap();
        let grads = dpo_loss(&model, &reference).backward().unwrap();
        // In a few tensors of different kinds, the element with the largest gradient.
        let picks: Vec<&(String, Var)> = vars
            .iter()
            .filter(|(n, _)| {
                n.contains("embed")
                    || n.contains("wte")
                    || n.contains("wpe")
                    || n.contains("q_proj")
                    || n.contains("c_attn.weight")
                    || n.contains("query_key_value.bias")
                    || n.contains("layers.1.mlp.down_proj")
                    || n.contains("h.1.mlp.c_proj.weight")
                    || n.contains("dense_4h_to_h.weight")
                    || n.ends_with("norm.weight")
                    || n.contains("ln_f")
                    || n.contains("lm_head")
                    || n.contains("embed_out")
            })
            .collect();
        assert!(picks.len() >= 4, "{name}: picked {}", picks.len());
        for (n, v) in picks {
            let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let (i, &analytic) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
            let h = 1e-5;
            let f = |ck: &Checkpoint| {
                let m = Model::from_checkpoint(ck).unwrap();
                dpo_loss(&m, &reference).to_scalar::<f64>().unwrap()
            };
            let numeric = (f(&nudge(&ck, n, i, h)) - f(&nudge(&ck, n, i, -h))) / (2.0 * h);
            let rel = (numeric - analytic).abs() / analytic.abs().max(1e-12);
            eprintln!("{name} {n}[{i}]: analytic {analytic:.6e} numeric {numeric:.6e} rel {rel:.1e}");
            assert!(rel < 1e-2, "{name} {n}[{i}]: analytic {analytic} vs numeric {numeric}");
        }
    }
}

/// The f32 training graph (on the CPU: the fused ops, q/k/v and gate/up as one product, the
/// attention reading the projections' rows) against the f64 one (candle's composed ops, which
/// the finite differences above check): every parameter's gradient, for every architecture.
#[test]
fn fused_f32_gradients_match_the_composed_f64_ones() {
    let reference = [-30.0, -32.0, -31.0, -29.0];
    for name in ["llama", "qwen2", "gpt2", "gpt_neox"] {
        let grads = |dtype| {
            let ck = load(name, dtype);
            let (model, vars) = Model::trainable(&ck, |_| true).unwrap();
            let g = dpo_loss(&model, &reference).backward().unwrap();
            vars.into_iter()
                .map(|(n, v)| {
                    let t = g.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
                    (n, t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let (fused, composed) = (grads(DType::F32), grads(DType::F64));
        assert_eq!(fused.len(), composed.len(), "{name}");
        for (n, want) in &composed {
            let got = &fused[n];
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
            let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err / scale < 1e-3, "{name} {n}: largest difference {err:.3e} against {scale:.3e}");
        }
    }
}
