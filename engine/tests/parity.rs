//! Logits and completion log-probs against HF transformers on tiny random-weight checkpoints.
//!
//! Expected values were computed by `tests/fixtures/make_fixtures.py` (HF transformers, f32,
//! eager attention) on a batch mixing right padding, left padding and no padding, with
//! explicit position ids; only real-token positions are compared.

mod common;

use apl_engine::model::{Model, sequence_logprobs};
use candle_core::{DType, IndexOp};
use common::*;

const TOL: f32 = 1e-4;

fn check_logits(name: &str) {
    let ck = load(name, DType::F32);
    let model = Model::from_checkpoint(&ck).unwrap();
    let exp = expected(name);
    let (batch, valid) = parity_batch(&exp, "");
    // Our position ids must be HF's at every real token.
    let want_pos = rows_u32(&exp["position_ids"]);
    let got_pos = batch.position_ids.to_vec2::<u32>().unwrap();
    for (r, row) in valid.iter().enumerate() {
        for (c, &ok) in row.iter().enumerate() {
            if ok {
                assert_eq!(got_pos[r][c], want_pos[r][c], "{name}: position id at ({r}, {c})");
            }
        }
    }
    let logits = model.forward(&batch).unwrap();
    let want = &exp["logits"];
    let mut worst = 0f32;
    for (r, row) in valid.iter().enumerate() {
        for (c, &ok) in row.iter().enumerate() {
            if ok {
                let d = max_abs(&logits.i((r, c)).unwrap(), &want.i((r, c)).unwrap());
                worst = worst.max(d);
            }
        }
    }
    eprintln!("{name}: max |logit - HF| = {worst:.2e}");
    assert!(worst < TOL, "{name}: max abs logit difference {worst} >= {TOL}");
}

#[test]
fn logits_match_hf_for_every_architecture() {
    for name in FIXTURES {
        check_logits(name);
    }
}

#[test]
fn gguf_logits_match_hf_on_the_dequantised_weights() {
    // The llama fixture converted as llama.cpp does: q/k permuted, one Q8_0 and one f16 tensor.
    check_logits("llama-gguf");
}

#[test]
fn completion_logprobs_match_hf() {
    for name in FIXTURES {
        let model = model(name);
        let exp = expected(name);
        let ids = rows_u32(&exp["lp_input_ids"]);
        let mask = rows_u32(&exp["lp_attention_mask"]);
        let prompt_lens: Vec<i64> = exp["lp_prompt_lens"].to_vec1().unwrap();
        let want_sums: Vec<f32> = exp["lp_sums"].to_vec1().unwrap();
        let want_tokens: Vec<Vec<f32>> = exp["lp_tokens"].to_vec2().unwrap();
        let seqs: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| r.iter().zip(m).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect())
            .collect();
        let pairs: Vec<(&[u32], &[u32])> =
            seqs.iter().zip(&prompt_lens).map(|(s, &p)| s.split_at(p as usize)).collect();
        // Batch size 2 so that one pass mixes lengths and the order is restored afterwards.
        let got = sequence_logprobs(&model, &pairs, 2, |_| {}).unwrap();
        for (r, g) in got.iter().enumerate() {
            let p = prompt_lens[r] as usize;
            assert!((g.sum - want_sums[r]).abs() < TOL, "{name} row {r}: sum {} vs HF {}", g.sum, want_sums[r]);
            for (j, v) in g.tokens.iter().enumerate() {
                let w = want_tokens[r][p + j];
                assert!((v - w).abs() < TOL, "{name} row {r} token {j}: {v} vs HF {w}");
            }
        }
    }
}

#[test]
fn half_precision_runs_and_stays_close_to_f32() {
    // The engine must not assume f32: bf16 and f16 go through the same code (f32 accumulation
    // in norms, softmax and log-probs), including the KV-cache sampler.
    for name in ["llama", "gpt2", "gpt_neox"] {
        let exp = expected(name);
        let (_, valid) = parity_batch(&exp, "");
        for dtype in [DType::BF16, DType::F16] {
            let ck = load(name, dtype);
            let model = Model::from_checkpoint(&ck).unwrap();
            let b = apl_engine::model::Batch::from_rows(
                rows_u32(&exp["input_ids"]),
                valid.clone(),
                dtype,
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let logits = model.forward(&b).unwrap().to_dtype(DType::F32).unwrap();
            let want = &exp["logits"];
            let mut worst = 0f32;
            for (r, row) in valid.iter().enumerate() {
                for (c, &ok) in row.iter().enumerate() {
                    if ok {
                        worst = worst.max(max_abs(&logits.i((r, c)).unwrap(), &want.i((r, c)).unwrap()));
                    }
                }
            }
            eprintln!("{name} {dtype:?}: max |logit - HF f32| = {worst:.3}");
            assert!(worst < 0.1, "{name} {dtype:?}: {worst}");
            let cfg = apl_engine::model::SamplingConfig { max_new_tokens: 4, ..Default::default() };
            let p = tokens(5, 1, 320);
            let s = apl_engine::model::sample(&model, &[apl_engine::model::SampleRequest::new(&p)], &cfg, &[0], |_| {})
                .unwrap();
            assert!(!s[0].tokens.is_empty());
        }
    }
}
