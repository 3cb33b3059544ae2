//! The model-backend seam: what the learning loop asks of a model, so that the heavy stages can
//! run on this engine or on an inference server built for them (vLLM, llama.cpp's server).
//! The loop asks two things only:
//! - sample completions of prompts (tokens, and each token's log-prob at T = 1);
//! - score given completions: their summed log-probs under the policy and the reference
//!   (acquisition's implicit rewards), or under the reference alone (the reference terms of
//!   the DPO loss, once per labelled pair).
//!
//! Training is not behind this seam: the DPO step needs gradients, which a serving engine
//! does not give; it has its own (the trainer).
//!
//! [`Local`] is the engine as the loop used it before the seam, moved here unchanged: the same
//! passes, per-pass seeds and kernels, so its numbers are bit for bit the ones the loop had
//! (`engine/tests/backend.rs` checks it against direct calls). The per-pass seed formula
//! stays each caller's ([`SampleJob::pass_seed`]) for that reason.

use std::cell::RefCell;

use crate::model::logprobs::{Prefix, batch_logprobs_from, prefix_states};
use crate::model::{Model, Result, Sample, SampleRequest, SamplingConfig, sample, sequence_logprobs};
use crate::train::policy::Policy;
use crate::train::trainer::PrefixCache;

/// Which model a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The policy being trained (or the checkpoint being evaluated).
    Policy,
    /// The frozen starting model.
    Reference,
}

/// Completions to sample: row `r` continues `prompts[r / per_prompt]` with at most
/// `lengths[r]` new tokens; rows are prompt-major.
#[derive(Debug, Clone, Copy)]
pub struct SampleJob<'a> {
    pub prompts: &'a [&'a [u32]],
    pub per_prompt: usize,
    /// One per row: `prompts.len() * per_prompt` of them.
    pub lengths: &'a [usize],
    /// End-of-sequence suppressed until a row has its length.
    pub exact_length: bool,
    pub temperature: f64,
    /// The longest completion of the job's length range.
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Rows per pass of the local engine.
    pub batch_size: usize,
    /// The sampling seed of local pass `c`, from `seed`.
    pub pass_seed: fn(u64, usize) -> u64,
}

/// A model server for the loop's sampling and scoring.
pub trait ModelBackend {
    /// `job.lengths.len()` samples, in row order; `progress(rows done, rows)`.
    fn sample(&self, role: Role, job: &SampleJob<'_>, progress: &dyn Fn(usize, usize)) -> Result<Vec<Sample>>;

    /// Summed completion log-probs of (prompt, completion) rows under the policy and under the
    /// reference, `batch` rows at a time; `progress(rows done, rows)`.
    fn score(
        &self,
        rows: &[(&[u32], &[u32])],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Summed completion log-probs of rows under the reference alone; `progress(rows done,
    /// rows)`. Rows come as (chosen, rejected) of each pair in turn.
    fn score_reference(
        &self,
        rows: &[(&[u32], &[u32])],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<f32>>;
}

/// This engine, in this process.
pub struct Local<'a> {
    policy: &'a Model,
    reference: &'a Model,
    /// Lower layers frozen and shared by both models: they run once for both when scoring.
    prefix_layer: usize,
    /// Where the frozen layers' states of scored sequences go, for training to reuse.
    cache: Option<&'a RefCell<PrefixCache>>,
    eos: &'a [u32],
}

impl<'a> Local<'a> {
    /// The policy being trained and its reference.
    pub fn new(policy: &'a Policy, cache: Option<&'a RefCell<PrefixCache>>, eos: &'a [u32]) -> Self {
        Self { policy: policy.model(), reference: policy.reference(), prefix_layer: policy.prefix_layer(), cache, eos }
    }

    /// One model in both roles (a checkpoint to evaluate, a baseline to sample).
    pub fn model(model: &'a Model, eos: &'a [u32]) -> Self {
        Self { policy: model, reference: model, prefix_layer: 0, cache: None, eos }
    }
}

impl ModelBackend for Local<'_> {
    fn sample(&self, role: Role, job: &SampleJob<'_>, progress: &dyn Fn(usize, usize)) -> Result<Vec<Sample>> {
        let model = match role {
            Role::Policy => self.policy,
            Role::Reference => self.reference,
        };
        let rows: Vec<usize> = (0..job.lengths.len()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for (c, chunk) in rows.chunks(job.batch_size.max(1)).enumerate() {
            let reqs: Vec<SampleRequest> = chunk
                .iter()
                .map(|&r| SampleRequest {
                    prompt: job.prompts[r / job.per_prompt.max(1)],
                    max_new_tokens: Some(job.lengths[r]),
                    min_new_tokens: Some(if job.exact_length { job.lengths[r] } else { 0 }),
                })
                .collect();
            let cfg = SamplingConfig {
                temperature: job.temperature,
                max_new_tokens: job.max_new_tokens,
                min_new_tokens: 0,
                seed: (job.pass_seed)(job.seed, c),
                ..Default::default()
            };
            out.extend(sample(model, &reqs, &cfg, self.eos, |_| {})?);
            progress(out.len(), rows.len());
        }
        Ok(out)
    }

    fn score(
        &self,
        rows: &[(&[u32], &[u32])],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut pol, mut refr) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        let layer = self.prefix_layer;
        for chunk in rows.chunks(batch.max(1)) {
            if layer > 0 {
                let states = self.prefix_states(chunk, batch)?;
                let prefix = Prefix { layer, states: &states };
                pol.extend(sums(self.policy, chunk, Some(prefix))?);
                refr.extend(sums(self.reference, chunk, Some(prefix))?);
            } else {
                pol.extend(sums(self.policy, chunk, None)?);
                refr.extend(sums(self.reference, chunk, None)?);
            }
            progress(pol.len(), rows.len());
        }
        Ok((pol, refr))
    }

    fn score_reference(
        &self,
        rows: &[(&[u32], &[u32])],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<f32>> {
        let layer = self.prefix_layer;
        if layer == 0 {
            let mut done = 0;
            let lp = sequence_logprobs(self.reference, rows, batch, |n| {
                done += n;
                progress(done, rows.len());
            })?;
            return Ok(lp.into_iter().map(|s| s.sum).collect());
        }
        // Whole pairs a pass (the rows of `batch / 2` pairs), as training reads them.
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(2 * (batch.max(2) / 2)) {
            let states = self.prefix_states(chunk, batch)?;
            out.extend(sums(self.reference, chunk, Some(Prefix { layer, states: &states }))?);
            progress(out.len(), rows.len());
        }
        Ok(out)
    }
}

impl Local<'_> {
    /// The frozen layers' output for `rows`: from the cache (computing what it lacks), or
    /// computed here when there is none.
    fn prefix_states(&self, rows: &[(&[u32], &[u32])], batch: usize) -> Result<Vec<candle_core::Tensor>> {
        let layer = self.prefix_layer;
        match self.cache {
            Some(c) => c.borrow_mut().states_for(self.reference, layer, rows, batch),
            None => {
                let seqs: Vec<Vec<u32>> = rows.iter().map(|(p, c)| [*p, *c].concat()).collect();
                let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
                prefix_states(self.reference, &refs, layer, batch)
            }
        }
    }
}

/// Summed completion log-probs of `rows` under `m` (from the frozen layers' output when given).
fn sums(m: &Model, rows: &[(&[u32], &[u32])], prefix: Option<Prefix>) -> Result<Vec<f32>> {
    let lp = batch_logprobs_from(m, rows, prefix)?;
    Ok(lp.sums.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}
