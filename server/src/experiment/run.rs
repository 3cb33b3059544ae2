//! One (acquisition function, seed) run: for each labelled-set size m of the schedule, acquire
//! m - |D| new pairs with the current policy, label them, train (reset / continue / online),
//! evaluate against the baseline, and record the phase.
//!
//! Each finished phase is written to disk (its record, the labelled set, the trained weights),
//! so an interrupted experiment resumes at the first unfinished phase.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{ExperimentConfig, Mode};
use super::setup::{PromptStream, Setup};
use apl_engine::acquire::{AcquireStats, Acquirer, Acquisition, Candidate};
use apl_engine::eval::{EvalSampling, Outcome, WinRate, sample_completions, win_rate};
use apl_engine::model::Model;
use apl_engine::oracle::{Comparison, Preference};
use apl_engine::train::optim::Adam;
use apl_engine::train::policy::Policy;
use apl_engine::train::trainer::{PreferencePair, PrefixCache, StepStats, fill_reference_cached, train};

/// Wall-clock seconds of each stage of a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub acquire_sampling: f64,
    pub acquire_scoring: f64,
    pub labelling: f64,
    pub train_reference_logprobs: f64,
    pub train_prefix_cache: f64,
    pub train_steps: f64,
    pub eval_sampling: f64,
    pub eval_judging: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epoch_losses: Vec<f64>,
    pub loss_curve: Vec<f64>,
    pub margin_curve: Vec<f64>,
    pub accuracy_curve: Vec<f64>,
}

/// Everything measured in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub acquisition: Acquisition,
    pub seed: u64,
    /// 1-based; 0 is the untrained policy's evaluation.
    pub phase: usize,
    /// The schedule's target size.
    pub m: usize,
    /// Labelled pairs trained on.
    pub labels: usize,
    pub new_pairs: usize,
    /// Oracle calls so far in this run (labels asked for, including undecided ones).
    pub oracle_calls: usize,
    pub undecided: usize,
    pub win_rate: WinRate,
    pub timings: Timings,
    pub train: TrainSummary,
    pub acquisition_stats: AcquireStats,
    /// r_a - r_b of the pairs kept (certainty / hybrid / uncertainty).
    pub selected_margins: Vec<f32>,
    pub prompts_consumed: usize,
}

/// A labelled pair as stored between phases.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPair {
    phase: usize,
    pair: PreferencePair,
    margin: Option<f32>,
    prompt_entropy: Option<f32>,
}

/// Progress of the current stage: (stage, done, total).
pub type StageProgress<'a> = &'a dyn Fn(&str, usize, usize);

pub struct Run<'a> {
    pub cfg: &'a ExperimentConfig,
    pub setup: &'a Setup,
    pub acquisition: Acquisition,
    pub seed: u64,
    pub dir: PathBuf,
    /// Baseline texts of the evaluation prompts (starting model's samples or references).
    pub baseline: &'a [String],
}

fn stage_seed(seed: u64, phase: usize, stage: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(phase as u64 * 101).wrapping_add(stage)
}

/// Samples one completion per evaluation prompt at the evaluation temperature.
pub fn eval_samples(
    model: &Model,
    setup: &Setup,
    cfg: &ExperimentConfig,
    seed: u64,
    progress: StageProgress,
) -> Result<Vec<String>> {
    let prompts: Vec<&[u32]> = setup.eval.iter().map(|e| e.item.ids.as_slice()).collect();
    let how = EvalSampling {
        completion_tokens: cfg.task.completion_tokens,
        exact_length: cfg.task.exact_length,
        temperature: cfg.eval.temperature,
        batch_size: cfg.eval.batch_size,
    };
    Ok(sample_completions(model, &setup.tokenizer, &prompts, &how, seed, progress)?)
}

/// Judges policy samples against the baseline texts, policy as A.
pub fn judge(setup: &Setup, policy_texts: &[String], baseline: &[String]) -> Result<WinRate> {
    let items: Vec<Comparison> = setup
        .eval
        .iter()
        .zip(policy_texts.iter().zip(baseline))
        .map(|(p, (a, b))| Comparison { prompt: &p.item.text, a, b })
        .collect();
    let outcomes: Vec<Outcome> =
        setup.oracle.judge_all(&items)?.into_iter().map(|j| Outcome::from_preference(j.preference)).collect();
    Ok(win_rate(&outcomes))
}

impl Run<'_> {
    fn policy_path(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("policy-phase-{phase}.safetensors"))
    }

    fn phase_path(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("phase-{phase}.json"))
    }

    /// Records of the phases already finished (resume).
    pub fn finished(&self) -> Result<Vec<PhaseRecord>> {
        let mut out = Vec::new();
        for phase in 0..=self.cfg.schedule.len() {
            let p = self.phase_path(phase);
            if p.exists() {
                let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                out.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is corrupt; delete it to redo the phase", p.display()))?,
                );
            }
        }
        Ok(out)
    }

    /// Runs (or resumes) every phase; returns all phase records.
    pub fn run(&self, progress: StageProgress, on_phase: &dyn Fn(&PhaseRecord)) -> Result<Vec<PhaseRecord>> {
        std::fs::create_dir_all(&self.dir)?;
        let cfg = self.cfg;
        let mut records = self.finished()?;
        let done: Vec<usize> = records.iter().map(|r| r.phase).collect();
        let mut policy = Policy::new(self.setup.base.clone(), cfg.trainable.clone(), self.seed)?;
        let mut stream = PromptStream::new(&self.setup.pool, &self.setup.tokenizer, self.seed);
        let mut data: Vec<StoredPair> = Vec::new();
        let mut oracle_calls = 0;
        let last_done = done.iter().copied().filter(|&p| p > 0).max();
        if let Some(p) = last_done {
            // Resume after phase p: its labelled set, its weights, its place in the prompt stream.
            let rec = records.iter().find(|r| r.phase == p).expect("listed");
            stream.skip(rec.prompts_consumed)?;
            oracle_calls = rec.oracle_calls;
            data = self.load_data(p)?;
            policy.load_trainable(&self.policy_path(p)).context("resuming the policy")?;
        }
        let vars = policy.vars().iter().map(|(_, v)| v.clone()).collect();
        let mut opt = Adam::new(vars, cfg.train.adam.clone())?;
        let cache = RefCell::new(PrefixCache::default());

        if cfg.eval.initial && !done.contains(&0) {
            let t = Instant::now();
            let texts = eval_samples(policy.model(), self.setup, cfg, stage_seed(self.seed, 0, 5), progress)?;
            let sampling = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let wr = judge(self.setup, &texts, self.baseline)?;
            let rec = PhaseRecord {
                acquisition: self.acquisition,
                seed: self.seed,
                phase: 0,
                m: 0,
                labels: 0,
                new_pairs: 0,
                oracle_calls: 0,
                undecided: 0,
                win_rate: wr,
                timings: Timings {
                    eval_sampling: sampling,
                    eval_judging: t.elapsed().as_secs_f64(),
                    ..Default::default()
                },
                train: TrainSummary::default(),
                acquisition_stats: AcquireStats::default(),
                selected_margins: vec![],
                prompts_consumed: 0,
            };
            self.write_record(&rec)?;
            on_phase(&rec);
            records.push(rec);
        }

        for (i, &m) in cfg.schedule.iter().enumerate() {
            let phase = i + 1;
            if done.contains(&phase) {
                continue;
            }
            let t_phase = Instant::now();
            let mut timings = Timings::default();
            let acquirer = Acquirer {
                policy: &policy,
                cache: Some(&cache),
                tokenizer: &self.setup.tokenizer,
                cfg: &cfg.acquire,
                completion_len: cfg.task.completion_tokens,
                exact_length: cfg.task.exact_length,
                beta: cfg.train.beta,
                // Resuming starts after a trained phase, so phase 1 always has the untrained policy.
                policy_is_reference: phase == 1,
            };
            // Acquire and label until the labelled set reaches m (undecided pairs are dropped).
            let mut new_pairs: Vec<StoredPair> = Vec::new();
            let mut all_stats = AcquireStats::default();
            let mut selected_margins = Vec::new();
            let mut undecided = 0;
            let mut attempt = 0;
            while data.len() + new_pairs.len() < m {
                let need = m - data.len() - new_pairs.len();
                let seed = stage_seed(self.seed, phase, 1 + 10 * attempt);
                let mut draw = |n: usize| stream.take(n);
                let (cands, stats) = acquirer.acquire(self.acquisition, need, &mut draw, seed, progress)?;
                merge_stats(&mut all_stats, stats);
                let t = Instant::now();
                let labelled = self.label(&cands, &mut undecided)?;
                timings.labelling += t.elapsed().as_secs_f64();
                oracle_calls += cands.len();
                for (c, pref) in cands.iter().zip(labelled) {
                    let Some(pair) = to_pair(c, pref) else { continue };
                    let margin = c.rewards(cfg.train.beta).map(|(a, b)| a - b);
                    if let Some(mg) = margin {
                        selected_margins.push(mg);
                    }
                    new_pairs.push(StoredPair { phase, pair, margin, prompt_entropy: c.prompt_entropy });
                }
                attempt += 1;
                if attempt > 20 {
                    anyhow::bail!("phase {phase}: the oracle decided too few pairs after 20 rounds of acquisition");
                }
            }
            new_pairs.truncate(m - data.len());
            timings.acquire_sampling = all_stats.sampling_seconds;
            timings.acquire_scoring = all_stats.scoring_seconds;

            // Reference log-probs, once per pair (certainty already has them from scoring).
            let t = Instant::now();
            let mut fresh: Vec<PreferencePair> = new_pairs.iter().map(|s| s.pair.clone()).collect();
            fill_reference_cached(&policy, &mut fresh, &mut cache.borrow_mut(), cfg.acquire.batch_size)?;
            for (s, p) in new_pairs.iter_mut().zip(fresh) {
                s.pair = p;
            }
            timings.train_reference_logprobs = t.elapsed().as_secs_f64();
            let n_new = new_pairs.len();
            data.extend(new_pairs);
            // Keep cached states only for sequences of the labelled set.
            let keep: std::collections::HashSet<Vec<u32>> = data
                .iter()
                .flat_map(|s| {
                    [
                        [&s.pair.prompt[..], &s.pair.chosen[..]].concat(),
                        [&s.pair.prompt[..], &s.pair.rejected[..]].concat(),
                    ]
                })
                .collect();
            cache.borrow_mut().retain(|seq| keep.contains(seq));

            // Train.
            let (train_set, mut tcfg) = match cfg.mode {
                Mode::Reset => {
                    policy.reset()?;
                    opt.reset()?;
                    (data.iter().map(|s| s.pair.clone()).collect::<Vec<_>>(), cfg.train.clone())
                }
                Mode::Continue => {
                    opt.reset()?;
                    (data.iter().map(|s| s.pair.clone()).collect(), cfg.train.clone())
                }
                Mode::Online => {
                    let newest: Vec<PreferencePair> =
                        data.iter().filter(|s| s.phase == phase).map(|s| s.pair.clone()).collect();
                    (newest, apl_engine::train::trainer::TrainConfig { epochs: 1, ..cfg.train.clone() })
                }
            };
            tcfg.seed = stage_seed(self.seed, phase, 4);
            let total_steps = tcfg.epochs * train_set.len().div_ceil(tcfg.pairs_per_step);
            let report = train(&policy, &mut opt, &train_set, &tcfg, &mut cache.borrow_mut(), |s: &StepStats| {
                progress("training", s.step + 1, total_steps)
            })?;
            timings.train_prefix_cache = report.prefix_seconds;
            timings.train_steps = report.seconds - report.prefix_seconds;

            // Evaluate.
            let t = Instant::now();
            let texts = eval_samples(policy.model(), self.setup, cfg, stage_seed(self.seed, phase, 5), progress)?;
            timings.eval_sampling = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let wr = judge(self.setup, &texts, self.baseline)?;
            timings.eval_judging = t.elapsed().as_secs_f64();
            timings.total = t_phase.elapsed().as_secs_f64();

            let rec = PhaseRecord {
                acquisition: self.acquisition,
                seed: self.seed,
                phase,
                m,
                labels: data.len(),
                new_pairs: n_new,
                oracle_calls,
                undecided,
                win_rate: wr,
                timings,
                train: TrainSummary {
                    steps: report.steps.len(),
                    epoch_losses: report.epoch_losses(),
                    loss_curve: report.steps.iter().map(|s| s.loss).collect(),
                    margin_curve: report.steps.iter().map(|s| s.reward_margin).collect(),
                    accuracy_curve: report.steps.iter().map(|s| s.reward_accuracy).collect(),
                },
                acquisition_stats: all_stats,
                selected_margins,
                prompts_consumed: stream.consumed,
            };
            // Weights and data first, the record last: a record on disk means a complete phase.
            policy.save_trainable(&self.policy_path(phase))?;
            self.save_data(&data)?;
            self.save_samples(phase, &texts)?;
            self.write_record(&rec)?;
            // Weights two phases back are no longer needed to resume (the last two are kept, so
            // a phase whose record is deleted can be redone from the one before).
            if phase > 2 {
                let _ = std::fs::remove_file(self.policy_path(phase - 2));
            }
            on_phase(&rec);
            records.push(rec);
        }
        records.sort_by_key(|r| r.phase);
        Ok(records)
    }

    fn label(&self, cands: &[Candidate], undecided: &mut usize) -> Result<Vec<Preference>> {
        let items: Vec<Comparison> =
            cands.iter().map(|c| Comparison { prompt: &c.prompt_text, a: &c.text_a, b: &c.text_b }).collect();
        let js = self.setup.oracle.judge_all(&items)?;
        *undecided += js.iter().filter(|j| matches!(j.preference, Preference::NoDecision | Preference::Tie)).count();
        Ok(js.into_iter().map(|j| j.preference).collect())
    }

    fn write_record(&self, rec: &PhaseRecord) -> Result<()> {
        write_atomic(&self.phase_path(rec.phase), &serde_json::to_string_pretty(rec)?)
    }

    fn save_data(&self, data: &[StoredPair]) -> Result<()> {
        let mut s = String::new();
        for d in data {
            s.push_str(&serde_json::to_string(d)?);
            s.push('\n');
        }
        write_atomic(&self.dir.join("data.jsonl"), &s)
    }

    fn save_samples(&self, phase: usize, texts: &[String]) -> Result<()> {
        let rows: Vec<serde_json::Value> = self
            .setup
            .eval
            .iter()
            .zip(texts.iter().zip(self.baseline))
            .map(|(p, (pol, base))| serde_json::json!({"prompt": p.item.text, "policy": pol, "baseline": base}))
            .collect();
        write_atomic(&self.dir.join(format!("samples-phase-{phase}.json")), &serde_json::to_string_pretty(&rows)?)
    }

    fn load_data(&self, upto: usize) -> Result<Vec<StoredPair>> {
        let p = self.dir.join("data.jsonl");
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let s: StoredPair = serde_json::from_str(line).with_context(|| format!("{}:{}", p.display(), i + 1))?;
            if s.phase <= upto {
                out.push(s);
            }
        }
        Ok(out)
    }
}

fn to_pair(c: &Candidate, pref: Preference) -> Option<PreferencePair> {
    let (chosen, rejected, rc, rr) = match pref {
        Preference::A => (&c.a, &c.b, c.ref_logp_a, c.ref_logp_b),
        Preference::B => (&c.b, &c.a, c.ref_logp_b, c.ref_logp_a),
        Preference::Tie | Preference::NoDecision => return None,
    };
    Some(PreferencePair {
        prompt: c.prompt.clone(),
        chosen: chosen.clone(),
        rejected: rejected.clone(),
        ref_chosen: rc,
        ref_rejected: rr,
    })
}

fn merge_stats(acc: &mut AcquireStats, s: AcquireStats) {
    acc.prompts_drawn += s.prompts_drawn;
    acc.sequences_sampled += s.sequences_sampled;
    acc.sequences_scored += s.sequences_scored;
    acc.sampling_seconds += s.sampling_seconds;
    acc.scoring_seconds += s.scoring_seconds;
    acc.candidate_margins.extend(s.candidate_margins);
    acc.candidate_entropies.extend(s.candidate_entropies);
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving {} into place", path.display()))?;
    Ok(())
}
