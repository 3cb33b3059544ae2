//! The sampling path against the full-sequence path, and the sampler's contract: seeded,
//! reproducible, per-row limits, EOS handling.

mod common;

use apl_engine::model::{Batch, Decoder, FinishReason, Padding, SampleRequest, SamplingConfig, sample};
use candle_core::{DType, Device, IndexOp};
use common::*;

const VOCAB: u32 = 320;

#[test]
fn kv_cache_logits_match_full_sequence_logits() {
    for name in FIXTURES {
        let model = model(name);
        let prompts = [tokens(7, 1, VOCAB), tokens(3, 2, VOCAB), tokens(5, 3, VOCAB)];
        let cont = [tokens(6, 4, VOCAB), tokens(6, 5, VOCAB), tokens(6, 6, VOCAB)];
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let (mut dec, mut logits) = Decoder::new(&model, &refs, 6, 0).unwrap();
        let mut worst = 0f32;
        for step in 0..=cont[0].len() {
            for (r, p) in prompts.iter().enumerate() {
                // Reference: the row alone, unpadded, every position recomputed.
                let full = [p.as_slice(), &cont[r][..step]].concat();
                let b = Batch::new(&[&full], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
                let want = model.forward(&b).unwrap().i((0, full.len() - 1)).unwrap();
                worst = worst.max(max_abs(&logits.i(r).unwrap(), &want));
            }
            if step < cont[0].len() {
                let col: Vec<Option<u32>> = cont.iter().map(|c| Some(c[step])).collect();
                logits = dec.step(&col).unwrap();
            }
        }
        eprintln!("{name}: max |cached - full| = {worst:.2e}");
        assert!(worst < 1e-4, "{name}: KV-cache logits differ by {worst}");
    }
}

#[test]
fn greedy_sampling_follows_the_full_sequence_argmax() {
    let model = model("llama");
    let prompt = tokens(4, 9, VOCAB);
    let cfg = SamplingConfig { temperature: 0.0, max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    let got = sample(&model, &[SampleRequest::new(&prompt)], &cfg, &[0], |_| {}).unwrap();
    let mut seq = prompt.clone();
    for _ in 0..8 {
        let b = Batch::new(&[&seq], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
        let next =
            model.forward(&b).unwrap().i((0, seq.len() - 1)).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        seq.push(next);
    }
    assert_eq!(got[0].tokens, seq[4..].to_vec());
    assert_eq!(got[0].finish, FinishReason::Length);
}

#[test]
fn sampling_is_seeded_reproducible_and_batch_independent() {
    let model = model("gpt2");
    let a = tokens(5, 11, VOCAB);
    let b = tokens(2, 12, VOCAB);
    let cfg =
        SamplingConfig { temperature: 1.0, max_new_tokens: 12, stop_at_eos: false, seed: 42, ..Default::default() };
    let reqs = [SampleRequest::new(&a), SampleRequest::new(&b)];
    let first = sample(&model, &reqs, &cfg, &[0], |_| {}).unwrap();
    let again = sample(&model, &reqs, &cfg, &[0], |_| {}).unwrap();
    assert_eq!(first, again);
    let other = sample(&model, &reqs, &SamplingConfig { seed: 43, ..cfg.clone() }, &[0], |_| {}).unwrap();
    assert_ne!(first[0].tokens, other[0].tokens);
    // Row 0 alone gets the same tokens as row 0 in the batch.
    let alone = sample(&model, &reqs[..1], &cfg, &[0], |_| {}).unwrap();
    assert_eq!(alone[0].tokens, first[0].tokens);
    // Reported log-probs are the model's own (temperature 1).
    for s in &first {
        assert!(s.logprobs.iter().all(|l| *l <= 0.0 && l.is_finite()));
    }
}

#[test]
fn per_row_lengths_and_eos() {
    let model = model("gpt_neox");
    let p = tokens(3, 21, VOCAB);
    let greedy = SamplingConfig { temperature: 0.0, max_new_tokens: 6, ..Default::default() };
    // Whatever greedy picks first, declare it EOS: the row stops at once, EOS included.
    let first = sample(
        &model,
        &[SampleRequest::new(&p)],
        &SamplingConfig { stop_at_eos: false, ..greedy.clone() },
        &[],
        |_| {},
    )
    .unwrap()[0]
        .tokens[0];
    let out = sample(&model, &[SampleRequest::new(&p)], &greedy, &[first], |_| {}).unwrap();
    assert_eq!(out[0].tokens, vec![first]);
    assert_eq!(out[0].finish, FinishReason::Eos);
    // With a minimum length, EOS is suppressed until it is reached.
    let reqs = [
        SampleRequest { prompt: &p, min_new_tokens: Some(4), max_new_tokens: Some(5) },
        SampleRequest { prompt: &p, min_new_tokens: Some(0), max_new_tokens: Some(2) },
    ];
    let cfg = SamplingConfig { temperature: 1.0, seed: 3, ..greedy };
    let out = sample(&model, &reqs, &cfg, &[first], |_| {}).unwrap();
    assert!(out[0].tokens.len() >= 4 && out[0].tokens.len() <= 5, "{:?}", out[0]);
    assert!(!out[0].tokens[..3].contains(&first));
    assert!(out[1].tokens.len() <= 2);
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let model = model("llama");
    let cfg = SamplingConfig::default();
    let err = sample(&model, &[SampleRequest::new(&[])], &cfg, &[0], |_| {}).unwrap_err().to_string();
    assert!(err.contains("prompt 0 is empty"), "{err}");
    let err = sample(&model, &[SampleRequest::new(&[5, 999])], &cfg, &[0], |_| {}).unwrap_err().to_string();
    assert!(err.contains("prompt 0") && err.contains("999"), "{err}");
    let long = tokens(60, 1, VOCAB);
    let err = sample(&model, &[SampleRequest::new(&long)], &cfg, &[0], |_| {}).unwrap_err().to_string();
    assert!(err.contains("positions"), "{err}");
    let bad = SamplingConfig { top_p: 0.0, ..cfg };
    assert!(sample(&model, &[SampleRequest::new(&[5])], &bad, &[0], |_| {}).is_err());
}
