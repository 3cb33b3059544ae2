//! The DPO training loop: epochs over the labelled pairs in a seeded order, `pairs_per_step`
//! pairs per optimiser step split into micro-batches whose gradients accumulate.
//!
//! Reference log-probs are computed once per pair (`fill_reference`) and kept with it: the
//! reference never changes. When only the top layers train, what the frozen layers below
//! compute is kept per sequence in a [`PrefixCache`] and each step runs only the layers above.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::loss::PairLogprobs;
use super::optim::Adam;
use super::policy::Policy;
use crate::backend::{Local, ModelBackend};
use crate::model::logprobs::{Prefix, batch_logprobs, batch_logprobs_from, prefix_states};
use crate::model::{Model, ModelError, Result};

pub use apl_shared::settings::TrainConfig;

/// A labelled pair: prompt, preferred and dispreferred completions (token ids), and the
/// reference model's summed log-probs of each completion once computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    #[serde(default)]
    pub ref_chosen: Option<f32>,
    #[serde(default)]
    pub ref_rejected: Option<f32>,
}

/// Statistics of one optimiser step (means over its pairs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    /// Fraction of pairs with reward_chosen > reward_rejected.
    pub reward_accuracy: f64,
    /// Mean of reward_chosen - reward_rejected.
    pub reward_margin: f64,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: Vec<StepStats>,
    pub seconds: f64,
    /// Seconds spent computing cached prefixes (frozen lower layers).
    pub prefix_seconds: f64,
}

impl TrainReport {
    /// What the run did, step by step, as results and checkpoints record it. A metric that is
    /// not a number at every step (one an external trainer did not log) has no curve.
    pub fn summary(&self) -> apl_shared::TrainSummary {
        let curve = |f: fn(&StepStats) -> f64| {
            let v: Vec<f64> = self.steps.iter().map(f).collect();
            if v.iter().all(|x| x.is_finite()) { v } else { Vec::new() }
        };
        apl_shared::TrainSummary {
            source: None,
            steps: self.steps.len(),
            epoch_losses: self.epoch_losses(),
            loss_curve: curve(|s| s.loss),
            margin_curve: curve(|s| s.reward_margin),
            accuracy_curve: curve(|s| s.reward_accuracy),
            seconds: self.seconds,
        }
    }

    /// Mean loss of each epoch.
    pub fn epoch_losses(&self) -> Vec<f64> {
        let epochs = self.steps.iter().map(|s| s.epoch + 1).max().unwrap_or(0);
        (0..epochs)
            .map(|e| {
                let v: Vec<f64> = self.steps.iter().filter(|s| s.epoch == e).map(|s| s.loss).collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            })
            .collect()
    }
}

/// What the frozen lower layers compute for each sequence, keyed by its tokens.
#[derive(Default)]
pub struct PrefixCache {
    layer: usize,
    states: HashMap<Vec<u32>, Tensor>,
}

impl PrefixCache {
    pub fn len(&self) -> usize {
        self.states.len()
    }
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
    pub fn clear(&mut self) {
        self.states.clear();
    }

    /// Computes the states of any `seqs` not cached yet (after `layer` layers of `model`).
    pub fn fill(&mut self, model: &Model, layer: usize, seqs: &[Vec<u32>], batch: usize) -> Result<()> {
        if layer != self.layer {
            self.states.clear();
            self.layer = layer;
        }
        let mut missing: Vec<&[u32]> =
            seqs.iter().filter(|s| !self.states.contains_key(*s)).map(|s| s.as_slice()).collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let states = prefix_states(model, &missing, layer, batch)?;
        for (s, h) in missing.into_iter().zip(states) {
            self.states.insert(s.to_vec(), h);
        }
        Ok(())
    }

    pub fn get(&self, seq: &[u32]) -> Option<&Tensor> {
        self.states.get(seq)
    }

    /// Keeps only the sequences `keep` accepts (e.g. those of the labelled set).
    pub fn retain(&mut self, keep: impl Fn(&[u32]) -> bool) {
        self.states.retain(|k, _| keep(k));
    }

    /// The cached states of `rows` (prompt, completion), computing what is missing.
    pub fn states_for(
        &mut self,
        model: &Model,
        layer: usize,
        rows: &[(&[u32], &[u32])],
        batch: usize,
    ) -> Result<Vec<Tensor>> {
        let seqs: Vec<Vec<u32>> = rows.iter().map(|(p, c)| [*p, *c].concat()).collect();
        self.fill(model, layer, &seqs, batch)?;
        seqs.iter()
            .map(|s| self.get(s).cloned().ok_or_else(|| ModelError::Input("prefix cache is missing a sequence".into())))
            .collect()
    }
}

/// Indices of the pairs still without reference log-probs.
fn missing_reference(pairs: &[PreferencePair]) -> Vec<usize> {
    (0..pairs.len()).filter(|&i| pairs[i].ref_chosen.is_none() || pairs[i].ref_rejected.is_none()).collect()
}

/// (prompt, chosen), (prompt, rejected) of each listed pair, interleaved.
fn chosen_rejected_rows<'p>(pairs: &'p [PreferencePair], idx: &[usize]) -> Vec<(&'p [u32], &'p [u32])> {
    idx.iter()
        .flat_map(|&i| {
            let p = &pairs[i];
            [(p.prompt.as_slice(), p.chosen.as_slice()), (p.prompt.as_slice(), p.rejected.as_slice())]
        })
        .collect()
}

/// Computes the reference log-probs of every pair that lacks them, with `reference` here.
pub fn fill_reference(reference: &Model, pairs: &mut [PreferencePair], batch_size: usize) -> Result<()> {
    fill_reference_with(&Local::model(reference, &[]), pairs, batch_size)
}

/// Computes the reference log-probs of every pair that lacks them, through `backend` (the
/// local one runs the policy's frozen lower layers once per sequence, through its prefix
/// cache, for reference and training alike).
pub fn fill_reference_with(backend: &dyn ModelBackend, pairs: &mut [PreferencePair], batch: usize) -> Result<()> {
    let todo = missing_reference(pairs);
    if todo.is_empty() {
        return Ok(());
    }
    let rows = chosen_rejected_rows(pairs, &todo);
    let sums = backend.score_reference(&rows, batch, &|_, _| {})?;
    drop(rows);
    for (k, &i) in todo.iter().enumerate() {
        pairs[i].ref_chosen = Some(sums[2 * k]);
        pairs[i].ref_rejected = Some(sums[2 * k + 1]);
    }
    Ok(())
}

/// Trains `policy` on `pairs` (reference log-probs must be filled) with `opt`; calls
/// `on_step` after every optimiser step.
pub fn train(
    policy: &Policy,
    opt: &mut Adam,
    pairs: &[PreferencePair],
    cfg: &TrainConfig,
    cache: &mut PrefixCache,
    mut on_step: impl FnMut(&StepStats),
) -> Result<TrainReport> {
    if pairs.is_empty() {
        return Err(ModelError::Input("no labelled pairs to train on".into()));
    }
    if cfg.pairs_per_step == 0 || cfg.micro_batch == 0 {
        return Err(ModelError::Input("pairs_per_step and micro_batch must be at least 1".into()));
    }
    if let Some(i) = pairs.iter().position(|p| p.ref_chosen.is_none() || p.ref_rejected.is_none()) {
        return Err(ModelError::Input(format!("pair {i} has no reference log-probs (call fill_reference first)")));
    }
    let t0 = Instant::now();
    let mut report = TrainReport::default();
    let prefix_layer = policy.prefix_layer();
    if prefix_layer > 0 {
        let t = Instant::now();
        let seqs: Vec<Vec<u32>> = pairs
            .iter()
            .flat_map(|p| [[&p.prompt[..], &p.chosen[..]].concat(), [&p.prompt[..], &p.rejected[..]].concat()])
            .collect();
        cache.fill(policy.reference(), prefix_layer, &seqs, cfg.micro_batch * 2)?;
        report.prefix_seconds = t.elapsed().as_secs_f64();
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
        for step_pairs in order.chunks(cfg.pairs_per_step) {
            let ts = Instant::now();
            let mut acc: Option<candle_core::backprop::GradStore> = None;
            let mut sums = StepSums::default();
            for mb in step_pairs.chunks(cfg.micro_batch) {
                let batch: Vec<&PreferencePair> = mb.iter().map(|&i| &pairs[i]).collect();
                let weight = batch.len() as f64 / step_pairs.len() as f64;
                let (loss, stats) = micro_batch_loss(policy, &batch, cfg, cache)?;
                sums.add(&stats, batch.len());
                let grads = (loss * weight)?.backward()?;
                acc = Some(match acc {
                    None => grads,
                    Some(mut a) => {
                        for (_, v) in policy.vars() {
                            if let Some(g) = grads.get(v.as_tensor()) {
                                let sum = match a.get(v.as_tensor()) {
                                    Some(prev) => (prev + g)?,
                                    None => g.clone(),
                                };
                                a.insert(v.as_tensor(), sum);
                            }
                        }
                        a
                    }
                });
            }
            opt.step(acc.as_ref().expect("at least one micro-batch"))?;
            let stats = sums.finish(step, epoch, ts.elapsed().as_secs_f64());
            on_step(&stats);
            report.steps.push(stats);
            step += 1;
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[derive(Default)]
struct StepSums {
    n: usize,
    loss: f64,
    acc: f64,
    chosen: f64,
    rejected: f64,
}

struct MicroStats {
    loss: f64,
    chosen: Vec<f32>,
    rejected: Vec<f32>,
}

impl StepSums {
    fn add(&mut self, s: &MicroStats, n: usize) {
        self.n += n;
        self.loss += s.loss * n as f64;
        for (c, r) in s.chosen.iter().zip(&s.rejected) {
            self.acc += f64::from(u8::from(c > r));
            self.chosen += f64::from(*c);
            self.rejected += f64::from(*r);
        }
    }

    fn finish(&self, step: usize, epoch: usize, seconds: f64) -> StepStats {
        let n = self.n.max(1) as f64;
        StepStats {
            step,
            epoch,
            loss: self.loss / n,
            reward_accuracy: self.acc / n,
            reward_margin: (self.chosen - self.rejected) / n,
            reward_chosen: self.chosen / n,
            reward_rejected: self.rejected / n,
            seconds,
        }
    }
}

fn micro_batch_loss(
    policy: &Policy,
    batch: &[&PreferencePair],
    cfg: &TrainConfig,
    cache: &PrefixCache,
) -> Result<(Tensor, MicroStats)> {
    let n = batch.len();
    let rows: Vec<(&[u32], &[u32])> = batch
        .iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
        .chain(batch.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
        .collect();
    let model = policy.train_model();
    let sums = if policy.prefix_layer() > 0 {
        let states: Vec<Tensor> = rows
            .iter()
            .map(|(p, c)| {
                cache
                    .get(&[*p, *c].concat())
                    .cloned()
                    .ok_or_else(|| ModelError::Input("prefix cache is missing a sequence".into()))
            })
            .collect::<Result<_>>()?;
        batch_logprobs_from(model, &rows, Some(Prefix { layer: policy.prefix_layer(), states: &states }))?.sums
    } else {
        batch_logprobs(model, &rows)?.sums
    };
    let dev = model.device();
    let refs = |f: fn(&PreferencePair) -> Option<f32>| -> Result<Tensor> {
        let v: Vec<f32> = batch.iter().map(|p| f(p).unwrap_or(0.0)).collect();
        Ok(Tensor::from_vec(v, n, dev)?.to_dtype(sums.dtype())?)
    };
    let ref_chosen = refs(|p| p.ref_chosen)?;
    let ref_rejected = refs(|p| p.ref_rejected)?;
    let chosen_tokens = refs(|p| Some(p.chosen.len() as f32))?;
    let rejected_tokens = refs(|p| Some(p.rejected.len() as f32))?;
    let out = super::loss::compute(
        cfg.loss,
        &PairLogprobs {
            policy_chosen: &sums.narrow(0, 0, n)?,
            policy_rejected: &sums.narrow(0, n, n)?,
            ref_chosen: &ref_chosen,
            ref_rejected: &ref_rejected,
            chosen_tokens: &chosen_tokens,
            rejected_tokens: &rejected_tokens,
        },
        cfg.beta,
    )?;
    let stats = MicroStats {
        loss: out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        chosen: out.reward_chosen.to_dtype(DType::F32)?.to_vec1()?,
        rejected: out.reward_rejected.to_dtype(DType::F32)?.to_vec1()?,
    };
    Ok((out.loss, stats))
}
