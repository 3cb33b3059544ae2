//! Acquisition: turning fresh prompts into the completion pairs worth a label (arXiv
//! 2402.08114). The decisions are pure functions in [`select`]; this module runs the model
//! work around them: sampling pairs, scoring implicit rewards, estimating prompt entropy.
//!
//! - random: one pair per prompt, sampled from the current policy at T = 0.7.
//! - certainty / uncertainty: `over_generate` candidate pairs per kept pair; keep the largest
//!   (smallest) |r_a - r_b|, r = beta * (log pi - log pi_ref) summed over the completion.
//! - entropy: `entropy_over_sample` candidate prompts per kept prompt; `entropy_samples`
//!   completions each at T = 1 give the mean negative log-likelihood; keep the highest, then
//!   one pair per kept prompt.
//! - hybrid: entropy keeps `m * over_generate` prompts, certainty keeps `m` of their pairs.
//!
//! While the policy is still the reference every margin is 0 and certainty is a uniform
//! choice (the paper's first column shows it), so no candidates are over-generated or scored.

pub mod select;

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{ModelBackend, Role, SampleJob};
use crate::model::{ModelError, Result, Tokenizer};

pub use apl_shared::Acquisition;
pub use apl_shared::settings::{AcquireConfig, PairLengths};

/// A prompt as the acquirer receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptItem {
    pub ids: Vec<u32>,
    pub text: String,
}

/// A sampled pair, with whatever scores the acquisition computed for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub prompt: Vec<u32>,
    pub prompt_text: String,
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub text_a: String,
    pub text_b: String,
    /// Summed completion log-probs under the current policy and the reference.
    pub logp_a: Option<f32>,
    pub logp_b: Option<f32>,
    pub ref_logp_a: Option<f32>,
    pub ref_logp_b: Option<f32>,
    pub prompt_entropy: Option<f32>,
}

impl Candidate {
    /// Implicit rewards (r_a, r_b) when both models scored the pair.
    pub fn rewards(&self, beta: f64) -> Option<(f32, f32)> {
        let b = beta as f32;
        Some((b * (self.logp_a? - self.ref_logp_a?), b * (self.logp_b? - self.ref_logp_b?)))
    }
}

pub use apl_shared::AcquireStats;

/// How to sample rows for a set of prompts.
#[derive(Debug, Clone, Copy)]
struct RowSpec {
    per_prompt: usize,
    /// One length for all of a prompt's rows (matched pairs), or one per row.
    shared_length: bool,
    temperature: f64,
    seed: u64,
    /// Shown in progress reports.
    stage: &'static str,
}

/// Progress of a long stage: (stage, done, total).
pub type Progress<'p> = &'p dyn Fn(&str, usize, usize);

pub struct Acquirer<'a> {
    /// Samples the policy and scores candidates under the policy and the reference.
    pub backend: &'a dyn ModelBackend,
    pub tokenizer: &'a Tokenizer,
    pub cfg: &'a AcquireConfig,
    /// Completion length range in tokens; a length is drawn per completion (per pair when
    /// `cfg.pair_lengths` is `matched`).
    pub completion_len: (usize, usize),
    /// Suppress end-of-sequence tokens so every completion has the drawn length.
    pub exact_length: bool,
    pub beta: f64,
    /// The policy is still the reference (the first phase, or just reset): every margin is 0,
    /// so certainty's choice is uniform and over-generating and scoring change nothing about
    /// which pairs are drawn. Candidates are then not over-generated nor scored.
    pub policy_is_reference: bool,
}

impl Acquirer<'_> {
    /// Acquires `m` candidate pairs with `kind`, drawing prompts from `draw(n)`.
    pub fn acquire(
        &self,
        kind: Acquisition,
        m: usize,
        draw: &mut dyn FnMut(usize) -> Result<Vec<PromptItem>>,
        seed: u64,
        progress: Progress,
    ) -> Result<(Vec<Candidate>, AcquireStats)> {
        let mut stats = AcquireStats::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut take = |n: usize, stats: &mut AcquireStats| -> Result<Vec<PromptItem>> {
            let p = draw(n)?;
            stats.prompts_drawn += p.len();
            Ok(p)
        };
        let pick = |cands: Vec<Candidate>, idx: Vec<usize>| -> Vec<Candidate> {
            let mut slots: Vec<Option<Candidate>> = cands.into_iter().map(Some).collect();
            idx.into_iter().filter_map(|i| slots[i].take()).collect()
        };
        let out = match kind {
            Acquisition::Random => {
                let prompts = take(m, &mut stats)?;
                self.sample_pairs(&prompts, rng.random(), &mut stats, progress)?
            }
            Acquisition::Certainty | Acquisition::Uncertainty if self.policy_is_reference => {
                let prompts = take(m, &mut stats)?;
                self.sample_pairs(&prompts, rng.random(), &mut stats, progress)?
            }
            Acquisition::Certainty | Acquisition::Uncertainty => {
                let prompts = take(m * self.cfg.over_generate.max(1), &mut stats)?;
                let mut cands = self.sample_pairs(&prompts, rng.random(), &mut stats, progress)?;
                let margins = self.score(&mut cands, &mut stats, progress)?;
                let idx = if kind == Acquisition::Certainty {
                    select::certainty(&margins, m, &mut rng)
                } else {
                    select::uncertainty(&margins, m, &mut rng)
                };
                pick(cands, idx)
            }
            Acquisition::Entropy => {
                let prompts = take(m * self.cfg.entropy_over_sample.max(1), &mut stats)?;
                let kept = self.by_entropy(prompts, m, &mut rng, &mut stats, progress)?;
                let (prompts, ent): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
                let mut cands = self.sample_pairs(&prompts, rng.random(), &mut stats, progress)?;
                for (c, e) in cands.iter_mut().zip(ent) {
                    c.prompt_entropy = Some(e);
                }
                cands
            }
            Acquisition::Hybrid => {
                let keep = m * self.cfg.over_generate.max(1);
                let prompts = take(keep * self.cfg.entropy_over_sample.max(1), &mut stats)?;
                let mut kept = self.by_entropy(prompts, keep, &mut rng, &mut stats, progress)?;
                if self.policy_is_reference {
                    // Certainty among equal margins: m of the kept prompts, uniformly.
                    let idx = select::top_k(&vec![0.0; kept.len()], m, &mut rng);
                    let mut slots: Vec<Option<_>> = kept.into_iter().map(Some).collect();
                    kept = idx.into_iter().filter_map(|i| slots[i].take()).collect();
                }
                let (prompts, ent): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
                let mut cands = self.sample_pairs(&prompts, rng.random(), &mut stats, progress)?;
                for (c, e) in cands.iter_mut().zip(ent) {
                    c.prompt_entropy = Some(e);
                }
                if self.policy_is_reference {
                    return Ok((cands, stats));
                }
                let margins = self.score(&mut cands, &mut stats, progress)?;
                let idx = select::certainty(&margins, m, &mut rng);
                pick(cands, idx)
            }
        };
        Ok((out, stats))
    }

    /// Samples `spec.per_prompt` completions per prompt, lengths drawn by [`draw_lengths`],
    /// `batch_size` rows per pass. Returns (tokens, log-probs at T = 1) per row.
    fn sample_rows(
        &self,
        prompts: &[PromptItem],
        spec: RowSpec,
        stats: &mut AcquireStats,
        progress: Progress,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let RowSpec { per_prompt, shared_length, temperature, seed, stage } = spec;
        let t = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lengths = draw_lengths(prompts.len(), per_prompt, self.completion_len, shared_length, &mut rng);
        let ids: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
        let job = SampleJob {
            prompts: &ids,
            per_prompt,
            lengths: &lengths,
            exact_length: self.exact_length,
            temperature,
            max_new_tokens: self.completion_len.1.max(self.completion_len.0),
            seed,
            batch_size: self.cfg.batch_size,
            pass_seed: |seed, c| seed.wrapping_mul(1_000_003).wrapping_add(c as u64),
        };
        let samples = self.backend.sample(Role::Policy, &job, &|d, n| progress(stage, d, n))?;
        stats.sequences_sampled += lengths.len();
        stats.sampling_seconds += t.elapsed().as_secs_f64();
        Ok(samples.into_iter().map(|s| (s.tokens, s.logprobs)).collect())
    }

    /// One pair per prompt at the pair temperature.
    fn sample_pairs(
        &self,
        prompts: &[PromptItem],
        seed: u64,
        stats: &mut AcquireStats,
        progress: Progress,
    ) -> Result<Vec<Candidate>> {
        let spec = RowSpec {
            per_prompt: 2,
            shared_length: self.cfg.pair_lengths == PairLengths::Matched,
            temperature: self.cfg.pair_temperature,
            seed,
            stage: "sampling pairs",
        };
        let rows = self.sample_rows(prompts, spec, stats, progress)?;
        let mut out = Vec::with_capacity(prompts.len());
        for (p, two) in prompts.iter().zip(rows.chunks(2)) {
            let (a, b) = (two[0].0.clone(), two[1].0.clone());
            out.push(Candidate {
                prompt: p.ids.clone(),
                prompt_text: p.text.clone(),
                text_a: self.text(&a)?,
                text_b: self.text(&b)?,
                a,
                b,
                logp_a: None,
                logp_b: None,
                ref_logp_a: None,
                ref_logp_b: None,
                prompt_entropy: None,
            });
        }
        Ok(out)
    }

    /// Completion text without end-of-sequence tokens.
    pub fn text(&self, ids: &[u32]) -> Result<String> {
        let eos = self.tokenizer.eos_ids();
        let kept: Vec<u32> = ids.iter().copied().filter(|t| !eos.contains(t)).collect();
        self.tokenizer.decode_text(&kept)
    }

    /// Scores every candidate under policy and reference; returns r_a - r_b.
    fn score(&self, cands: &mut [Candidate], stats: &mut AcquireStats, progress: Progress) -> Result<Vec<f32>> {
        let t = Instant::now();
        let rows: Vec<(&[u32], &[u32])> = cands
            .iter()
            .flat_map(|c| [(c.prompt.as_slice(), c.a.as_slice()), (c.prompt.as_slice(), c.b.as_slice())])
            .collect();
        let (policy_lp, ref_lp) = self.backend.score(&rows, self.cfg.batch_size, &|d, n| progress("scoring", d, n))?;
        let scored = rows.len();
        drop(rows);
        for (k, c) in cands.iter_mut().enumerate() {
            c.logp_a = Some(policy_lp[2 * k]);
            c.logp_b = Some(policy_lp[2 * k + 1]);
            c.ref_logp_a = Some(ref_lp[2 * k]);
            c.ref_logp_b = Some(ref_lp[2 * k + 1]);
        }
        let margins: Vec<f32> = cands
            .iter()
            .map(|c| {
                c.rewards(self.beta).map(|(a, b)| a - b).ok_or_else(|| ModelError::Input("unscored candidate".into()))
            })
            .collect::<Result<_>>()?;
        stats.sequences_scored += scored;
        stats.scoring_seconds += t.elapsed().as_secs_f64();
        stats.candidate_margins.extend(&margins);
        Ok(margins)
    }

    /// Keeps the `keep` prompts with the highest entropy estimate.
    fn by_entropy(
        &self,
        prompts: Vec<PromptItem>,
        keep: usize,
        rng: &mut ChaCha8Rng,
        stats: &mut AcquireStats,
        progress: Progress,
    ) -> Result<Vec<(PromptItem, f32)>> {
        let n = self.cfg.entropy_samples.max(1);
        let spec = RowSpec {
            per_prompt: n,
            shared_length: false,
            temperature: self.cfg.entropy_temperature,
            seed: rng.random(),
            stage: "entropy samples",
        };
        let rows = self.sample_rows(&prompts, spec, stats, progress)?;
        let nll: Vec<f32> = rows.iter().map(|(_, lp)| -lp.iter().sum::<f32>()).collect();
        let ent = if self.cfg.windowed_entropy_reference {
            select::windowed_entropy_reference(&nll, n)
        } else {
            let per: Vec<Vec<f32>> = nll.chunks(n).map(|c| c.to_vec()).collect();
            select::predictive_entropy(&per)
        };
        stats.candidate_entropies.extend(&ent);
        let idx = select::entropy(&ent, keep, rng);
        let mut slots: Vec<Option<PromptItem>> = prompts.into_iter().map(Some).collect();
        Ok(idx.into_iter().filter_map(|i| slots[i].take().map(|p| (p, ent[i]))).collect())
    }
}

/// Completion lengths of `prompts * per_prompt` rows (prompt-major), uniform in `lo..=hi`:
/// one per row, or with `shared` one per prompt repeated over its rows. Entropy samples always
/// draw per row: the estimate is a mean of summed (not length-normalised) log-likelihoods, so
/// with one length per prompt it would rank the lengths prompts happened to draw.
pub fn draw_lengths(
    prompts: usize,
    per_prompt: usize,
    (lo, hi): (usize, usize),
    shared: bool,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let hi = hi.max(lo);
    if shared {
        (0..prompts).flat_map(|_| std::iter::repeat_n(rng.random_range(lo..=hi), per_prompt)).collect()
    } else {
        (0..prompts * per_prompt).map(|_| rng.random_range(lo..=hi)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths of 2000 prompts' rows, grouped by prompt.
    fn groups(per_prompt: usize, shared: bool, seed: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lens = draw_lengths(2000, per_prompt, (16, 24), shared, &mut rng);
        assert_eq!(lens.len(), 2000 * per_prompt);
        assert!(lens.iter().all(|l| (16..=24).contains(l)));
        lens.chunks(per_prompt).map(<[usize]>::to_vec).collect()
    }

    #[test]
    fn lengths_are_drawn_per_completion_unless_pairs_are_matched() {
        // Independent pairs: the two lengths differ with probability 8/9.
        let pairs = groups(2, false, 0);
        let differ = pairs.iter().filter(|p| p[0] != p[1]).count() as f64 / pairs.len() as f64;
        assert!((differ - 8.0 / 9.0).abs() < 0.03, "{differ}");
        // Matched pairs share theirs.
        assert!(groups(2, true, 0).iter().all(|p| p[0] == p[1]));
        // Entropy samples: eight lengths per prompt, almost never all equal (9 * (1/9)^8).
        assert!(groups(8, false, 1).iter().all(|g| g.iter().any(|&l| l != g[0])));
    }

    /// Sequence NLL of a completion: `len` tokens, each -log p uniform around `per_token`.
    fn nll(len: usize, per_token: f32, rng: &mut ChaCha8Rng) -> f32 {
        (0..len).map(|_| per_token + rng.random_range(-0.5f32..0.5)).sum()
    }

    /// Entropy estimates of `prompts` prompts with these per-token NLLs, 8 samples each.
    fn estimates(per_token: &[f32], shared: bool, seed: u64) -> (Vec<f32>, Vec<Vec<usize>>) {
        let n = 8;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lens = draw_lengths(per_token.len(), n, (16, 24), shared, &mut rng);
        let per: Vec<Vec<f32>> =
            lens.chunks(n).zip(per_token).map(|(ls, &h)| ls.iter().map(|&l| nll(l, h, &mut rng)).collect()).collect();
        (select::predictive_entropy(&per), lens.chunks(n).map(<[usize]>::to_vec).collect())
    }

    fn correlation(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let (vx, vy): (f64, f64) = (x.iter().map(|a| (a - mx).powi(2)).sum(), y.iter().map(|b| (b - my).powi(2)).sum());
        cov / (vx * vy).sqrt()
    }

    /// Prompts with one distribution get estimates that do not rank the lengths a prompt
    /// happened to draw: with one length per prompt the estimate is that length (correlation
    /// about 1); drawn per sample, no single draw decides it (about 1/sqrt(8) = 0.35 with
    /// each sample's length, and the same for all eight).
    #[test]
    fn the_entropy_ranking_of_identical_prompts_does_not_rank_their_lengths() {
        let same = vec![2.0f32; 2000];
        for (shared, lo, hi) in [(true, 0.95, 1.0), (false, 0.25, 0.45)] {
            let (est, lens) = estimates(&same, shared, 3);
            let est: Vec<f64> = est.iter().map(|&e| f64::from(e)).collect();
            for k in [0, 7] {
                let first: Vec<f64> = lens.iter().map(|l| l[k] as f64).collect();
                let r = correlation(&est, &first);
                assert!((lo..hi).contains(&r), "shared {shared}, sample {k}: r = {r}");
            }
        }
    }

    /// With two kinds of prompt (per-token NLL 2.0 and 1.8), the top half of the ranking is
    /// the high-entropy kind far more often when lengths are drawn per sample.
    #[test]
    fn entropy_keeps_the_high_entropy_prompts_when_lengths_are_per_sample() {
        let kinds: Vec<f32> = (0..2000).map(|i| if i % 2 == 0 { 2.0 } else { 1.8 }).collect();
        let recall = |shared: bool| {
            let (est, _) = estimates(&kinds, shared, 5);
            let top = select::entropy(&est, 1000, &mut ChaCha8Rng::seed_from_u64(0));
            top.iter().filter(|&&i| i % 2 == 0).count() as f64 / 1000.0
        };
        let (per_sample, per_prompt) = (recall(false), recall(true));
        assert!(per_sample > 0.85, "{per_sample}");
        assert!(per_prompt < 0.75, "{per_prompt}");
    }
}
