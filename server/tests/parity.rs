//! Logits and completion log-probs against HF transformers on tiny random-weight checkpoints.
//!
//! Expected values were computed by `tests/fixtures/make_fixtures.py` (HF transformers, f32,
//! eager attention) on a batch mixing right padding, left padding and no padding, with
//! explicit position ids; only real-token positions are compared.

mod common;

use apl::model::{Model, sequence_logprobs};
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
