//! The DPO trainer on tiny random models: what trains and what must not, gradient
//! accumulation, reference log-prob caching, cached frozen layers, reset, and saving.

mod common;

use apl_engine::model::logprobs::{Prefix, batch_logprobs, batch_logprobs_from, prefix_states};
use apl_engine::model::{Batch, Checkpoint, Model, Padding};
use apl_engine::train::optim::{Adam, AdamConfig};
use apl_engine::train::policy::{Policy, Trainable, layer_of};
use apl_engine::train::trainer::{PreferencePair, PrefixCache, TrainConfig, fill_reference, train};
use candle_core::{DType, Device};
use common::*;

const VOCAB: u32 = 320;

fn pairs(n: usize) -> Vec<PreferencePair> {
    (0..n as u64)
        .map(|i| PreferencePair {
            prompt: tokens(3 + (i as usize % 3), 100 + i, VOCAB),
            chosen: tokens(4 + (i as usize % 2), 200 + i, VOCAB),
            rejected: tokens(3 + (i as usize % 4), 300 + i, VOCAB),
            ref_chosen: None,
            ref_rejected: None,
        })
        .collect()
}

fn config(epochs: usize, pairs_per_step: usize, micro_batch: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        pairs_per_step,
        micro_batch,
        adam: AdamConfig { lr: 1e-2, ..Default::default() },
        ..Default::default()
    }
}

fn run(policy: &Policy, data: &mut [PreferencePair], cfg: &TrainConfig) -> apl_engine::train::trainer::TrainReport {
    fill_reference(policy.reference(), data, 8).unwrap();
    let vars = policy.vars().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(vars, cfg.adam.clone()).unwrap();
    train(policy, &mut opt, data, cfg, &mut PrefixCache::default(), |_| {}).unwrap()
}

fn same(a: &candle_core::Tensor, b: &candle_core::Tensor) -> bool {
    max_abs(&a.to_dtype(DType::F32).unwrap(), &b.to_dtype(DType::F32).unwrap()) == 0.0
}

#[test]
fn cached_reference_logprobs_equal_fresh_ones() {
    let policy = Policy::new(load("llama", DType::F32), Trainable::All, 0).unwrap();
    let mut data = pairs(5);
    fill_reference(policy.reference(), &mut data, 2).unwrap();
    // Fresh, in one batch, from the (untrained) policy itself.
    let rows: Vec<(&[u32], &[u32])> = data.iter().map(|p| (p.prompt.as_slice(), p.chosen.as_slice())).collect();
    let fresh = batch_logprobs(policy.model(), &rows).unwrap().sums.to_vec1::<f32>().unwrap();
    for (p, f) in data.iter().zip(fresh) {
        assert!((p.ref_chosen.unwrap() - f).abs() < 1e-5);
    }
}

#[test]
fn training_lowers_the_loss_and_reset_undoes_it() {
    for name in ["llama", "gpt2", "gpt_neox"] {
        let mut policy = Policy::new(load(name, DType::F32), Trainable::All, 0).unwrap();
        let mut data = pairs(8);
        let report = run(&policy, &mut data, &config(6, 4, 2));
        let losses = report.epoch_losses();
        assert!((losses[0] - std::f64::consts::LN_2).abs() < 0.05, "{name}: first epoch starts near ln 2: {losses:?}");
        assert!(losses[5] < losses[0] - 0.05, "{name}: loss must fall: {losses:?}");
        assert!(report.steps.last().unwrap().reward_accuracy > 0.5);
        policy.reset().unwrap();
        let before = Model::from_checkpoint(policy.base()).unwrap();
        let b = Batch::new(&[&data[0].prompt], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
        assert!(max_abs(&policy.model().forward(&b).unwrap(), &before.forward(&b).unwrap()) < 1e-6);
    }
}

#[test]
fn frozen_parameters_stay_put() {
    // Top layer only: everything else bit-for-bit unchanged, the top layer changed.
    let base = load("llama", DType::F32);
    let policy = Policy::new(base.clone(), Trainable::TopLayers { k: 1 }, 0).unwrap();
    assert!(policy.vars().iter().all(|(n, _)| layer_of(n) == Some(1)));
    run(&policy, &mut pairs(6), &config(2, 3, 3));
    let now = policy.merged_tensors().unwrap();
    for (n, t) in &base.tensors {
        let unchanged = same(t, &now[n]);
        assert_eq!(unchanged, layer_of(n) != Some(1), "{n}");
    }

    // LoRA: base weights untouched, adapted projections changed once merged.
    let policy = Policy::new(
        base.clone(),
        Trainable::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "v_proj".into()] },
        0,
    )
    .unwrap();
    assert_eq!(policy.vars().len(), 2 * 2 * 2); // 2 layers x 2 targets x (A, B)
    run(&policy, &mut pairs(6), &config(2, 3, 3));
    let merged = policy.merged_tensors().unwrap();
    for (n, t) in &base.tensors {
        let adapted = n.ends_with("q_proj.weight") || n.ends_with("v_proj.weight");
        assert_eq!(same(t, &merged[n]), !adapted, "{n}");
    }
}

#[test]
fn gradient_accumulation_matches_one_big_batch() {
    // A large eps makes Adam's first step proportional to the gradient (instead of its sign),
    // so parameters whose true gradient is zero (key biases) do not amplify rounding noise.
    // In f64: in f32 this tiny random model's DPO gradient is ill-conditioned (f32 and f64
    // updates differ by half their size), so any change of summation order with the batch
    // shape (BLAS picks its kernels by shape) shows; f64 checks the equality itself.
    let after = |micro: usize| {
        let policy = Policy::new(load("gpt_neox", DType::F64), Trainable::All, 0).unwrap();
        let mut cfg = config(1, 4, micro);
        cfg.adam = AdamConfig { lr: 0.1, eps: 1.0, ..Default::default() };
        run(&policy, &mut pairs(4), &cfg);
        policy.merged_tensors().unwrap()
    };
    let (one, acc) = (after(4), after(1));
    for (n, t) in &one {
        let d = max_abs(t, &acc[n]);
        assert!(d < 1e-6, "{n}: {d}");
    }
}

#[test]
fn cached_frozen_layers_give_the_same_logprobs_and_training() {
    // f64, as in `gradient_accumulation_matches_one_big_batch`: the cache changes batch shapes.
    let base = load("qwen2", DType::F64);
    let policy = Policy::new(base.clone(), Trainable::TopLayers { k: 1 }, 0).unwrap();
    assert_eq!(policy.prefix_layer(), 1);
    let data = pairs(4);
    let rows: Vec<(&[u32], &[u32])> = data.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())).collect();
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(p, c)| [*p, *c].concat()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let states = prefix_states(policy.reference(), &refs, 1, 3).unwrap();
    let full = batch_logprobs(policy.train_model(), &rows).unwrap().sums;
    let cached =
        batch_logprobs_from(policy.train_model(), &rows, Some(Prefix { layer: 1, states: &states })).unwrap().sums;
    assert!(max_abs(&full, &cached) < 1e-5);

    // Training through the cache equals training through every layer (same trainable set).
    let trained = |cached: bool| {
        let p = Policy::new(base.clone(), Trainable::TopLayers { k: 1 }, 0).unwrap();
        let p = if cached { p } else { p.without_prefix_cache() };
        let report = run(&p, &mut pairs(6), &config(2, 3, 3));
        assert_eq!(report.prefix_seconds > 0.0, cached);
        p.merged_tensors().unwrap()
    };
    let (a, b) = (trained(true), trained(false));
    for (n, t) in &a {
        let d = max_abs(t, &b[n]);
        assert!(d < 1e-5, "{n}: {d}");
    }
}

#[test]
fn saved_checkpoints_load_back_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (name, trainable) in [
        ("llama", Trainable::TopLayers { k: 1 }),
        ("gpt2", Trainable::Lora { rank: 2, alpha: 8.0, targets: vec!["c_attn".into(), "c_fc".into()] }),
        ("llama-gguf", Trainable::All),
    ] {
        let policy = Policy::new(load(name, DType::F32), trainable, 1).unwrap();
        run(&policy, &mut pairs(4), &config(2, 2, 2));
        let out = dir.path().join(name);
        policy.save_hf(&out).unwrap();
        let back = Checkpoint::load(&out, DType::F32, &Device::Cpu).unwrap();
        assert!(back.tokenizer.is_some(), "{name}: tokenizer saved");
        let m = Model::from_checkpoint(&back).unwrap();
        let b = Batch::new(&[&tokens(6, 5, VOCAB)], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
        let d = max_abs(&m.forward(&b).unwrap(), &policy.model().forward(&b).unwrap());
        assert!(d < 1e-4, "{name}: reloaded logits differ by {d}");
        // Resuming: trainable tensors round-trip.
        let st = dir.path().join(format!("{name}.safetensors"));
        policy.save_trainable(&st).unwrap();
        let mut fresh = Policy::new(load(name, DType::F32), policy.trainable().clone(), 1).unwrap();
        fresh.load_trainable(&st).unwrap();
        assert!(max_abs(&fresh.model().forward(&b).unwrap(), &policy.model().forward(&b).unwrap()) < 1e-6);
    }
}
