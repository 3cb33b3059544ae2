//! The local model backend is the engine as the loop called it before the seam: its samples
//! are the ones direct `sample` passes give (bit for bit, seeds per pass as the caller says),
//! each role samples its own model, and its scores are each model's completion log-probs
//! and the reference's alone (checked against `sequence_logprobs`, an independent path), with
//! and without frozen layers shared between the two models.

mod common;

use std::cell::RefCell;

use apl_engine::backend::{Local, ModelBackend, Role, SampleJob};
use apl_engine::model::{Model, Sample, SampleRequest, SamplingConfig, sample, sequence_logprobs};
use apl_engine::train::policy::{Policy, Trainable};
use apl_engine::train::trainer::PrefixCache;
use candle_core::DType;
use common::*;

const VOCAB: u32 = 320;
const EOS: [u32; 1] = [0];

fn pass_seed(seed: u64, c: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(c as u64)
}

/// What the loop did before the seam: rows prompt-major, `batch` a pass, one seed a pass.
fn direct(model: &Model, job: &SampleJob<'_>) -> Vec<Sample> {
    let rows: Vec<usize> = (0..job.lengths.len()).collect();
    let mut out = Vec::new();
    for (c, chunk) in rows.chunks(job.batch_size).enumerate() {
        let reqs: Vec<SampleRequest> = chunk
            .iter()
            .map(|&r| SampleRequest {
                prompt: job.prompts[r / job.per_prompt],
                max_new_tokens: Some(job.lengths[r]),
                min_new_tokens: Some(if job.exact_length { job.lengths[r] } else { 0 }),
            })
            .collect();
        let cfg = SamplingConfig {
            temperature: job.temperature,
            max_new_tokens: job.max_new_tokens,
            seed: pass_seed(job.seed, c),
            ..Default::default()
        };
        out.extend(sample(model, &reqs, &cfg, &EOS, |_| {}).unwrap());
    }
    out
}

#[test]
fn local_samples_are_the_direct_passes_and_each_role_samples_its_model() {
    let policy = Policy::new(load("llama", DType::F32), Trainable::All, 0).unwrap();
    // Move the policy away from the reference, so the two roles are told apart.
    for (_, v) in policy.vars() {
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let prompts = [tokens(4, 1, VOCAB), tokens(6, 2, VOCAB), tokens(3, 3, VOCAB)];
    let ids: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let lengths = [5, 7, 3, 6, 4, 4];
    let local = Local::new(&policy, None, &EOS);
    for exact_length in [false, true] {
        let job = SampleJob {
            prompts: &ids,
            per_prompt: 2,
            lengths: &lengths,
            exact_length,
            temperature: 0.9,
            max_new_tokens: 8,
            seed: 17,
            batch_size: 4,
            pass_seed,
        };
        let done = std::cell::Cell::new(Vec::new());
        let record = |d: usize, n: usize| {
            let mut v = done.take();
            v.push((d, n));
            done.set(v);
        };
        let from_policy = local.sample(Role::Policy, &job, &record).unwrap();
        assert_eq!(from_policy, direct(policy.model(), &job));
        assert_eq!(done.take(), vec![(4, 6), (6, 6)], "progress after each pass");
        let from_reference = local.sample(Role::Reference, &job, &|_, _| {}).unwrap();
        assert_eq!(from_reference, direct(policy.reference(), &job));
        assert_ne!(from_policy, from_reference);
        if exact_length {
            let lens: Vec<usize> = from_policy.iter().map(|s| s.tokens.len()).collect();
            assert_eq!(lens, lengths);
        }
    }
}

#[test]
fn local_scores_are_each_models_completion_logprobs() {
    let prompts = [tokens(4, 5, VOCAB), tokens(2, 6, VOCAB), tokens(5, 7, VOCAB)];
    let completions = [tokens(3, 8, VOCAB), tokens(5, 9, VOCAB), tokens(4, 10, VOCAB)];
    let rows: Vec<(&[u32], &[u32])> =
        prompts.iter().zip(&completions).map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    for trainable in [Trainable::All, Trainable::TopLayers { k: 1 }] {
        let policy = Policy::new(load("llama", DType::F32), trainable.clone(), 0).unwrap();
        for (_, v) in policy.vars() {
            v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
        }
        let want =
            |m: &Model| -> Vec<f32> { sequence_logprobs(m, &rows, 8, |_| {}).unwrap().iter().map(|s| s.sum).collect() };
        let (want_policy, want_reference) = (want(policy.model()), want(policy.reference()));
        let cache = RefCell::new(PrefixCache::default());
        for cache in [None, Some(&cache)] {
            let (pol, refr) = Local::new(&policy, cache, &EOS).score(&rows, 2, &|_, _| {}).unwrap();
            for (got, want) in [(&pol, &want_policy), (&refr, &want_reference)] {
                let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(d < 1e-5, "{trainable:?}, cache {}: {got:?} vs {want:?}", cache.is_some());
            }
            assert_ne!(pol, refr);
            // The reference alone, as training's reference terms ask for it.
            let local = Local::new(&policy, cache, &EOS);
            let alone = local.score_reference(&rows, 2, &|_, _| {}).unwrap();
            let d = alone.iter().zip(&want_reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-5, "{trainable:?}, cache {}: {alone:?} vs {want_reference:?}", cache.is_some());
        }
    }
}
