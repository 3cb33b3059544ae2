//! One round of active preference learning, written once: acquire pairs with the current
//! policy, have them labelled, compute the reference log-probs, train with DPO, evaluate
//! against a baseline (arXiv 2402.08114, section 3).
//!
//! Two drivers call it: the experiment runner (`apl experiment`: an oracle labels at once,
//! results go to files) and the server's jobs (an oracle, an LLM judge, or human raters whose
//! labels arrive later; results go to the database). They differ only in where labels come
//! from and where results are stored, so the stages are separate calls here: a driver that
//! waits for people stops after [`Round::acquire`] and comes back for [`Round::train`].
//!
//! Everything a stage decides by chance takes its seed from the caller, so a driver can make
//! its runs reproducible (the experiment derives every seed from the run's seed and phase).

use std::cell::RefCell;
use std::time::Instant;

use apl_shared::settings::LoopSettings;
use apl_shared::{Acquisition, Mode, Outcome, Preference};

use crate::acquire::{AcquireStats, Acquirer, Candidate, PromptItem};
use crate::backend::ModelBackend;
use crate::backend::Role;
use crate::eval::{EvalSampling, WinRate, sample_completions, win_rate};
use crate::model::{ModelError, Tokenizer};
use crate::oracle::{Comparison, Judgement, Oracle, OracleError};
use crate::train::optim::Adam;
use crate::train::policy::Policy;
use crate::train::trainer::{PreferencePair, PrefixCache, StepStats, TrainReport, fill_reference_with, train};

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Oracle(#[from] OracleError),
    #[error("cancelled")]
    Cancelled,
    #[error("the labeller decided too few pairs: {decided} of {wanted} after {attempts} rounds of acquisition")]
    TooFewDecided { decided: usize, wanted: usize, attempts: usize },
    #[error("training diverged: the loss of step {step} is {loss} (try a smaller learning rate)")]
    Diverged { step: usize, loss: f64 },
}

pub type Result<T, E = RoundError> = std::result::Result<T, E>;

/// What a driver shows while a round runs, and how it stops one.
pub trait Observer {
    /// `done` of `total` in the named stage ("sampling pairs", "training", ...).
    fn progress(&self, stage: &str, done: usize, total: usize);
    /// A training step finished; `total` steps in all.
    fn step(&self, stats: &StepStats, total: usize) {
        self.progress("training", stats.step + 1, total);
    }
    /// Whether the round should stop (a cancelled job): checked after each stage, between the
    /// chunks of labelling and judging, and once training has finished its steps.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Shows nothing, never stops.
pub struct Quiet;

impl Observer for Quiet {
    fn progress(&self, _: &str, _: usize, _: usize) {}
}

/// A pair the labeller decided, ready for training.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub candidate: Candidate,
    pub pair: PreferencePair,
}

/// What acquiring and labelling until enough pairs had a decision came to.
#[derive(Debug, Clone, Default)]
pub struct Decided {
    pub pairs: Vec<Labelled>,
    pub stats: AcquireStats,
    /// Labels asked for, including undecided ones.
    pub oracle_calls: usize,
    /// Ties and no-decisions (dropped, as in the paper).
    pub undecided: usize,
    pub labelling_seconds: f64,
}

/// What one training stage did.
#[derive(Debug, Clone)]
pub struct Trained {
    pub report: TrainReport,
    /// Pairs trained on (all labels, or the newest round's in online mode).
    pub pairs: usize,
}

/// The baseline an evaluation judges the policy against.
pub enum Baseline<'a> {
    /// Fixed texts, one per prompt: TL;DR reference summaries, or the starting model's samples
    /// kept from an earlier evaluation.
    Texts(&'a [String]),
    /// Fresh samples of the backend's reference (the starting model) with the baseline seed.
    Reference,
}

/// Seeds of an evaluation. Policy and baseline are sampled with independent seeds (one seed
/// for both would couple the two samples and inflate the win-rate); `lengths`, when given,
/// draws the completion lengths of both, so each prompt's two completions have one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalSeeds {
    pub policy: u64,
    pub baseline: u64,
    /// None: each sample's lengths come from its own seed.
    pub lengths: Option<u64>,
}

/// An evaluation prompt: its tokens and its text.
pub type EvalPrompt = PromptItem;

/// The outcome of an evaluation, prompt by prompt.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub policy: Vec<String>,
    pub baseline: Vec<String>,
    pub outcomes: Vec<Outcome>,
    pub win_rate: WinRate,
    /// The judge's name.
    pub judge: String,
    pub sampling_seconds: f64,
    pub judging_seconds: f64,
}

/// Judgements are asked for in chunks this size: progress shows, cancellation is prompt, and an
/// LLM judge still has a chunk's calls in flight at once.
const LABEL_CHUNK: usize = 32;

/// The round's settings and what every stage shares.
pub struct Round<'a> {
    pub settings: &'a LoopSettings,
    pub tokenizer: &'a Tokenizer,
    pub observer: &'a dyn Observer,
}

impl Round<'_> {
    fn check(&self) -> Result<()> {
        if self.observer.cancelled() { Err(RoundError::Cancelled) } else { Ok(()) }
    }

    /// Acquires `m` candidate pairs with `acquisition` and the current policy of `backend`,
    /// drawing fresh prompts from `draw`. `policy_is_reference`: the policy is still the
    /// starting model, so every margin is 0 and certainty needs no over-generation.
    pub fn acquire(
        &self,
        backend: &dyn ModelBackend,
        acquisition: Acquisition,
        m: usize,
        draw: &mut dyn FnMut(usize) -> crate::model::Result<Vec<PromptItem>>,
        seed: u64,
        policy_is_reference: bool,
    ) -> Result<(Vec<Candidate>, AcquireStats)> {
        let s = self.settings;
        let acquirer = Acquirer {
            backend,
            tokenizer: self.tokenizer,
            cfg: &s.acquire,
            completion_len: s.completion_tokens,
            exact_length: s.exact_length,
            beta: s.train.beta,
            policy_is_reference,
        };
        let progress = |stage: &str, done: usize, total: usize| self.observer.progress(stage, done, total);
        let out = acquirer.acquire(acquisition, m, draw, seed, &progress)?;
        self.check()?;
        Ok(out)
    }

    /// Labels `items` with an automatic labeller, in chunks, stopping if cancelled.
    pub fn label(&self, oracle: &dyn Oracle, items: &[Comparison]) -> Result<Vec<Judgement>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(LABEL_CHUNK) {
            self.check()?;
            out.extend(oracle.judge_all(chunk)?);
            self.observer.progress("labelling", out.len(), items.len());
        }
        Ok(out)
    }

    /// Acquires and labels until `need` pairs have a decision; ties and undecided pairs are
    /// dropped and more are acquired (the paper's loop), up to 20 attempts. `seed_of(k)` seeds
    /// attempt k.
    #[allow(clippy::too_many_arguments)]
    pub fn acquire_decided(
        &self,
        backend: &dyn ModelBackend,
        acquisition: Acquisition,
        need: usize,
        draw: &mut dyn FnMut(usize) -> crate::model::Result<Vec<PromptItem>>,
        seed_of: &dyn Fn(usize) -> u64,
        policy_is_reference: bool,
        oracle: &dyn Oracle,
    ) -> Result<Decided> {
        const ATTEMPTS: usize = 20;
        let mut out = Decided::default();
        let mut attempt = 0;
        while out.pairs.len() < need {
            if attempt == ATTEMPTS {
                return Err(RoundError::TooFewDecided { decided: out.pairs.len(), wanted: need, attempts: attempt });
            }
            let missing = need - out.pairs.len();
            let (cands, stats) =
                self.acquire(backend, acquisition, missing, draw, seed_of(attempt), policy_is_reference)?;
            merge_stats(&mut out.stats, stats);
            let t = Instant::now();
            let items: Vec<Comparison> = cands.iter().map(Candidate::comparison).collect();
            let judged = self.label(oracle, &items)?;
            out.labelling_seconds += t.elapsed().as_secs_f64();
            out.oracle_calls += cands.len();
            for (c, j) in cands.into_iter().zip(judged) {
                match c.preference_pair(j.preference) {
                    Some(pair) => out.pairs.push(Labelled { candidate: c, pair }),
                    None => out.undecided += 1,
                }
            }
            attempt += 1;
        }
        out.pairs.truncate(need);
        Ok(out)
    }

    /// Reference log-probs of the pairs that lack them, once per pair (certainty's scoring
    /// already filled them), from `backend`'s reference (locally through the prefix cache when
    /// lower layers are frozen).
    pub fn fill_reference(&self, backend: &dyn ModelBackend, pairs: &mut [PreferencePair]) -> Result<()> {
        let total = pairs.len();
        self.observer.progress("reference log-probs", 0, total);
        fill_reference_with(backend, pairs, self.settings.acquire.batch_size)?;
        self.observer.progress("reference log-probs", total, total);
        self.check()
    }

    /// Fills the reference log-probs of the (round, pair)s that `train` will train on (in
    /// online mode only the newest round's): call it before `train`, with the backend of the
    /// engine that trains.
    pub fn references(
        &self,
        backend: &dyn ModelBackend,
        pairs: &mut [(usize, PreferencePair)],
        newest: usize,
    ) -> Result<()> {
        let online = self.settings.mode == Mode::Online;
        let used = |r: usize| !online || r == newest;
        let mut fresh: Vec<PreferencePair> = pairs.iter().filter(|(r, _)| used(*r)).map(|(_, p)| p.clone()).collect();
        self.fill_reference(backend, &mut fresh)?;
        for ((_, p), filled) in pairs.iter_mut().filter(|(r, _)| used(*r)).zip(fresh) {
            *p = filled;
        }
        Ok(())
    }

    /// Trains with DPO as the settings' `mode` says: `reset` (the paper) starts again from the
    /// starting model with a fresh optimiser on every label; `continue` keeps the weights with a
    /// fresh optimiser on every label; `online` keeps the weights and the optimiser and makes one
    /// pass over the newest round's pairs. `pairs` are (round, pair), their reference log-probs
    /// filled by [`Round::references`] first; `seed` orders the pairs. A non-finite loss fails the stage (`Diverged`) rather than
    /// record a checkpoint trained into NaNs.
    pub fn train(
        &self,
        policy: &mut Policy,
        opt: &mut Adam,
        pairs: &mut [(usize, PreferencePair)],
        newest: usize,
        seed: u64,
        cache: &RefCell<PrefixCache>,
    ) -> Result<Trained> {
        let mut cfg = self.settings.train.clone();
        let train_set: Vec<PreferencePair> = match self.settings.mode {
            Mode::Reset => {
                policy.reset()?;
                opt.reset().map_err(ModelError::from)?;
                pairs.iter().map(|(_, p)| p.clone()).collect()
            }
            Mode::Continue => {
                opt.reset().map_err(ModelError::from)?;
                pairs.iter().map(|(_, p)| p.clone()).collect()
            }
            Mode::Online => {
                cfg.epochs = 1;
                pairs.iter().filter(|(r, _)| *r == newest).map(|(_, p)| p.clone()).collect()
            }
        };
        cfg.seed = seed;
        let total = cfg.epochs * train_set.len().div_ceil(cfg.pairs_per_step.max(1));
        let cancelled = std::cell::Cell::new(false);
        let report = train(policy, opt, &train_set, &cfg, &mut cache.borrow_mut(), |st: &StepStats| {
            self.observer.step(st, total);
            cancelled.set(cancelled.get() || self.observer.cancelled());
        })?;
        if cancelled.get() {
            return Err(RoundError::Cancelled);
        }
        if let Some(s) = report.steps.iter().find(|s| !s.loss.is_finite()) {
            return Err(RoundError::Diverged { step: s.step + 1, loss: s.loss });
        }
        Ok(Trained { report, pairs: train_set.len() })
    }

    /// One completion per prompt from `role` of `backend`, at the evaluation temperature.
    pub fn sample_eval(
        &self,
        backend: &dyn ModelBackend,
        role: Role,
        prompts: &[EvalPrompt],
        seed: u64,
        length_seed: Option<u64>,
        stage: &str,
    ) -> Result<Vec<String>> {
        let s = self.settings;
        let how = EvalSampling {
            completion_tokens: s.completion_tokens,
            exact_length: s.exact_length,
            temperature: s.eval.temperature,
            batch_size: s.eval.batch_size,
            length_seed,
        };
        let ids: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
        let progress = |_: &str, done: usize, total: usize| self.observer.progress(stage, done, total);
        let texts = sample_completions(backend, role, self.tokenizer, &ids, &how, seed, &progress)?;
        self.check()?;
        Ok(texts)
    }

    /// Samples the backend's policy (and its reference, when that is the baseline) on the
    /// evaluation prompts and has `judge` compare each pair, the policy's text as A.
    pub fn evaluate(
        &self,
        backend: &dyn ModelBackend,
        prompts: &[EvalPrompt],
        baseline: Baseline,
        judge: &dyn Oracle,
        seeds: EvalSeeds,
    ) -> Result<Evaluation> {
        let t = Instant::now();
        let ours = self.sample_eval(backend, Role::Policy, prompts, seeds.policy, seeds.lengths, "policy samples")?;
        let theirs = match baseline {
            Baseline::Texts(texts) => texts.to_vec(),
            Baseline::Reference => {
                self.sample_eval(backend, Role::Reference, prompts, seeds.baseline, seeds.lengths, "baseline samples")?
            }
        };
        let sampling_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let items: Vec<Comparison> = prompts
            .iter()
            .zip(ours.iter().zip(&theirs))
            .map(|(p, (a, b))| Comparison { prompt: &p.text, a, b })
            .collect();
        let outcomes: Vec<Outcome> = self.judge_all(judge, &items)?;
        Ok(Evaluation {
            win_rate: win_rate(&outcomes),
            policy: ours,
            baseline: theirs,
            outcomes,
            judge: judge.name(),
            sampling_seconds,
            judging_seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn judge_all(&self, judge: &dyn Oracle, items: &[Comparison]) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(LABEL_CHUNK) {
            self.check()?;
            out.extend(judge.judge_all(chunk)?.into_iter().map(|j| Outcome::from_preference(j.preference)));
            self.observer.progress("judging", out.len(), items.len());
        }
        Ok(out)
    }
}

impl Candidate {
    /// The pair as a labeller sees it.
    pub fn comparison(&self) -> Comparison<'_> {
        Comparison { prompt: &self.prompt_text, a: &self.text_a, b: &self.text_b }
    }

    /// The training pair a decision makes of this candidate (none for a tie or no decision),
    /// with the reference log-probs scoring already computed.
    pub fn preference_pair(&self, p: Preference) -> Option<PreferencePair> {
        let (chosen, rejected, rc, rr) = match p {
            Preference::A => (&self.a, &self.b, self.ref_logp_a, self.ref_logp_b),
            Preference::B => (&self.b, &self.a, self.ref_logp_b, self.ref_logp_a),
            Preference::Tie | Preference::NoDecision => return None,
        };
        Some(PreferencePair {
            prompt: self.prompt.clone(),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
            ref_chosen: rc,
            ref_rejected: rr,
        })
    }
}

fn merge_stats(acc: &mut AcquireStats, s: AcquireStats) {
    acc.prompts_drawn += s.prompts_drawn;
    acc.prompts_skipped += s.prompts_skipped;
    acc.sequences_sampled += s.sequences_sampled;
    acc.sequences_scored += s.sequences_scored;
    acc.sampling_seconds += s.sampling_seconds;
    acc.scoring_seconds += s.scoring_seconds;
    acc.candidate_margins.extend(s.candidate_margins);
    acc.candidate_entropies.extend(s.candidate_entropies);
}
