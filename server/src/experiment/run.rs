//! The experiment's driver of the learning round (`apl_engine::round`): one (acquisition
//! function, seed) run. For each labelled-set size m of the schedule it acquires and labels
//! pairs with the current policy until m have a decision, trains (reset / continue / online),
//! evaluates against the baseline, and records the phase. The stages are the engine's; what
//! this driver adds is where inputs come from (the run's prompt stream, the experiment's
//! oracle) and where results go (files), and the seeds: every one derives from the run's seed
//! and phase, so a run is reproducible and every arm of one seed sees the same prompts.
//!
//! Each finished phase is written to disk (its record, the labelled set, the trained weights),
//! so an interrupted experiment resumes at the first unfinished phase.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use apl_engine::eval::win_rate;
use apl_engine::oracle::Comparison;
use apl_shared::{EvalSample, Outcome, TrainSummary, WinRate};
use serde::{Deserialize, Serialize};

use super::config::ExperimentConfig;
use super::setup::{PromptStream, Setup};
use crate::remote::Remote;
use apl_engine::acquire::{AcquireStats, Acquisition};
use apl_engine::backend::{Local, ModelBackend, Role};
use apl_engine::round::{Baseline, EvalPrompt, EvalSeeds, Observer, Round};
use apl_engine::train::optim::Adam;
use apl_engine::train::policy::Policy;
use apl_engine::train::trainer::{PreferencePair, PrefixCache};

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
    /// The held-out judge's win-rate on the same samples (`held_out_judge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_win_rate: Option<WinRate>,
    pub timings: Timings,
    pub train: TrainSummary,
    pub acquisition_stats: AcquireStats,
    /// r_a - r_b of the pairs kept (certainty / hybrid / uncertainty).
    pub selected_margins: Vec<f32>,
    pub prompts_consumed: usize,
    /// Passes over the prompt pool begun so far (above 1: prompts are being reused).
    #[serde(default)]
    pub prompt_passes: usize,
}

/// An evaluation and the held-out judge's outcomes of its samples (with its seconds).
struct Evaluated {
    ev: apl_engine::round::Evaluation,
    held_out: Option<(Vec<Outcome>, f64)>,
}

impl Evaluated {
    fn held_out_win_rate(&self) -> Option<WinRate> {
        self.held_out.as_ref().map(|(o, _)| win_rate(o))
    }

    fn judging_seconds(&self) -> f64 {
        self.ev.judging_seconds + self.held_out.as_ref().map_or(0.0, |h| h.1)
    }
}

/// One row of `samples-phase-{P}.json`: the sample as the server shows it, and the held-out
/// judge's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleRow {
    #[serde(flatten)]
    pub sample: EvalSample,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_outcome: Option<Outcome>,
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

/// A stage-progress callback as the round's observer.
struct Progress<'a>(StageProgress<'a>);

impl Observer for Progress<'_> {
    fn progress(&self, stage: &str, done: usize, total: usize) {
        (self.0)(stage, done, total)
    }
}

pub struct Run<'a> {
    pub cfg: &'a ExperimentConfig,
    pub setup: &'a Setup,
    pub acquisition: Acquisition,
    pub seed: u64,
    pub dir: PathBuf,
    /// Baseline texts of the evaluation prompts (starting model's samples or references).
    pub baseline: &'a [String],
}

/// The seed of one stage of one phase of a run: acquisition attempt k is stage 1 + 10 k,
/// training 4, evaluation 5.
fn stage_seed(seed: u64, phase: usize, stage: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(phase as u64 * 101).wrapping_add(stage)
}

/// The seed of a seed's baseline samples (shared by every arm, apart from every policy's).
pub fn baseline_seed(seed: u64) -> u64 {
    seed.wrapping_mul(31).wrapping_add(999)
}

/// The seed of a seed's evaluation completion lengths: every policy's and the baseline's
/// completion of one evaluation prompt have the same drawn length (the reference's `gen_lens`),
/// while their tokens come from independent streams.
pub fn eval_length_seed(seed: u64) -> u64 {
    seed.wrapping_mul(131).wrapping_add(0x1e9)
}

fn eval_prompts(setup: &Setup) -> Vec<EvalPrompt> {
    setup.eval.iter().map(|e| e.item.clone()).collect()
}

/// Samples one completion per evaluation prompt at the evaluation temperature, with the
/// lengths `length_seed` draws.
pub fn eval_samples(
    backend: &dyn ModelBackend,
    role: Role,
    setup: &Setup,
    cfg: &ExperimentConfig,
    seed: u64,
    length_seed: u64,
    progress: StageProgress,
) -> Result<Vec<String>> {
    let round = Round { settings: &cfg.settings, tokenizer: &setup.tokenizer, observer: &Progress(progress) };
    Ok(round.sample_eval(backend, role, &eval_prompts(setup), seed, Some(length_seed), "evaluation samples")?)
}

impl Run<'_> {
    fn policy_path(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("policy-phase-{phase}.safetensors"))
    }

    /// The PEFT adapter of phase `phase`'s policy, which the model server reads.
    fn adapter_path(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("policy-phase-{phase}.peft"))
    }

    /// Trains phase `phase`'s policy with the operator's command (TRL), from the base model:
    /// the base written as an HF directory once (`base-hf/` beside the runs, unless the model
    /// is a directory transformers reads whole), the run's files in `trl-phase-P/`.
    fn train_elsewhere(
        &self,
        template: &str,
        pairs: &[PreferencePair],
        phase: usize,
        seed: u64,
        observer: &dyn Observer,
    ) -> Result<(Policy, apl_engine::train::trainer::TrainReport)> {
        let base = &self.setup.base;
        let base_dir = if base.source.join("tokenizer_config.json").exists() {
            base.source.clone()
        } else {
            let dir = self.dir.join("../../base-hf");
            if !dir.join("tokenizer_config.json").exists() {
                crate::trl::write_base(base, &self.setup.tokenizer, &dir)
                    .context("writing the base model for the trainer")?;
            }
            dir
        };
        let work = self.dir.join(format!("trl-phase-{phase}"));
        let run = crate::trl::TrlRun { template, base_dir: &base_dir, work: &work, seed, own_group: false };
        let s = &self.cfg.settings;
        let trained = crate::trl::train(&run, s, &self.setup.tokenizer, base.clone(), pairs, observer)
            .with_context(|| format!("phase {phase}: training with the trainer command"))?;
        Ok(trained)
    }

    /// Has the model server serve the policy of `phase`; its name there.
    fn serve(&self, remote: &Remote, policy: &Policy, phase: usize) -> Result<String> {
        let label = format!("{}-seed{}-phase{phase}", self.acquisition.name(), self.seed);
        remote.serve_policy(policy, &self.adapter_path(phase), &label).context("serving the policy on the model server")
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

    /// Evaluates the policy of `phase` against the baseline, and has the held-out judge (when
    /// there is one) judge the same samples.
    fn evaluate(&self, round: &Round, backend: &dyn ModelBackend, phase: usize) -> Result<Evaluated> {
        // The baseline's texts are fixed per seed; only the policy is sampled here, with the
        // baseline's lengths.
        let seeds = EvalSeeds {
            policy: stage_seed(self.seed, phase, 5),
            baseline: 0,
            lengths: Some(eval_length_seed(self.seed)),
        };
        let prompts = eval_prompts(self.setup);
        let ev = round.evaluate(backend, &prompts, Baseline::Texts(self.baseline), &*self.setup.judge, seeds)?;
        let held_out = match &self.setup.held_out_judge {
            Some(judge) => {
                let t = Instant::now();
                let items: Vec<Comparison> = prompts
                    .iter()
                    .zip(ev.policy.iter().zip(&ev.baseline))
                    .map(|(p, (a, b))| Comparison { prompt: &p.text, a, b })
                    .collect();
                let outcomes: Vec<Outcome> = round
                    .label(&**judge, &items)?
                    .into_iter()
                    .map(|j| Outcome::from_preference(j.preference))
                    .collect();
                Some((outcomes, t.elapsed().as_secs_f64()))
            }
            None => None,
        };
        Ok(Evaluated { ev, held_out })
    }

    /// Runs (or resumes) every phase; returns all phase records.
    pub fn run(&self, progress: StageProgress, on_phase: &dyn Fn(&PhaseRecord)) -> Result<Vec<PhaseRecord>> {
        std::fs::create_dir_all(&self.dir)?;
        let cfg = self.cfg;
        let s = &cfg.settings;
        let observer = Progress(progress);
        let round = Round { settings: s, tokenizer: &self.setup.tokenizer, observer: &observer };
        let mut records = self.finished()?;
        let done: Vec<usize> = records.iter().map(|r| r.phase).collect();
        let mut policy = Policy::new(self.setup.base.clone(), s.trainable.clone(), self.seed)?;
        let mut stream = PromptStream::new(
            &self.setup.pool,
            &self.setup.tokenizer,
            self.seed,
            cfg.task.cycle_prompts,
            &self.setup.held_out,
        );
        let mut data: Vec<StoredPair> = Vec::new();
        let mut oracle_calls = 0;
        let last_done = done.iter().copied().filter(|&p| p > 0).max();
        if let Some(p) = last_done {
            // Resume after phase p: its labelled set, its weights, its place in the prompt stream.
            let rec = records.iter().find(|r| r.phase == p).expect("listed");
            stream.skip_to(rec.prompts_consumed)?;
            oracle_calls = rec.oracle_calls;
            data = self.load_data(p)?;
            policy.load_trainable(&self.policy_path(p)).context("resuming the policy")?;
        }
        // The policy's name on the model server, once trained (`settings.backend` remote).
        let mut served: Option<String> = match (&self.setup.remote, last_done) {
            (Some(r), Some(p)) => Some(self.serve(r, &policy, p)?),
            _ => None,
        };
        let vars = policy.vars().iter().map(|(_, v)| v.clone()).collect();
        let mut opt = Adam::new(vars, s.train.adam.clone())?;
        let cache = RefCell::new(PrefixCache::default());
        let eos = self.setup.tokenizer.eos_ids();

        if s.eval.initial && !done.contains(&0) {
            let local = Local::new(&policy, None, eos);
            let evaluated = match &self.setup.remote {
                Some(r) => self.evaluate(&round, &r.serving(None), 0)?,
                None => self.evaluate(&round, &local, 0)?,
            };
            let ev = &evaluated.ev;
            let rec = PhaseRecord {
                acquisition: self.acquisition,
                seed: self.seed,
                phase: 0,
                m: 0,
                labels: 0,
                new_pairs: 0,
                oracle_calls: 0,
                undecided: 0,
                win_rate: ev.win_rate,
                held_out_win_rate: evaluated.held_out_win_rate(),
                timings: Timings {
                    eval_sampling: ev.sampling_seconds,
                    eval_judging: evaluated.judging_seconds(),
                    ..Default::default()
                },
                train: TrainSummary::default(),
                acquisition_stats: AcquireStats::default(),
                selected_margins: vec![],
                prompts_consumed: 0,
                prompt_passes: 0,
            };
            self.save_samples(0, &evaluated)?;
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
            // Acquire and label until the labelled set reaches m (undecided pairs are dropped).
            // Resuming starts after a trained phase, so phase 1 always has the untrained policy.
            let mut draw = |n: usize| stream.take(n);
            let local = Local::new(&policy, Some(&cache), eos);
            let serving = self.setup.remote.as_ref().map(|r| r.serving(served.as_deref()));
            let backend: &dyn ModelBackend = match &serving {
                Some(s) => s,
                None => &local,
            };
            let decided = round
                .acquire_decided(
                    backend,
                    self.acquisition,
                    m.saturating_sub(data.len()),
                    &mut draw,
                    &|attempt| stage_seed(self.seed, phase, 1 + 10 * attempt as u64),
                    phase == 1,
                    &*self.setup.labeller,
                )
                .with_context(|| format!("phase {phase} (m = {m}): acquiring and labelling"))?;
            timings.acquire_sampling = decided.stats.sampling_seconds;
            timings.acquire_scoring = decided.stats.scoring_seconds;
            timings.labelling = decided.labelling_seconds;
            oracle_calls += decided.oracle_calls;
            let mut selected_margins = Vec::new();
            let mut new_pairs: Vec<StoredPair> = Vec::with_capacity(decided.pairs.len());
            for l in decided.pairs {
                let margin = l.candidate.rewards(s.train.beta).map(|(a, b)| a - b);
                selected_margins.extend(margin);
                new_pairs.push(StoredPair { phase, pair: l.pair, margin, prompt_entropy: l.candidate.prompt_entropy });
            }

            // Reference log-probs, once per pair (certainty already has them from scoring).
            let t = Instant::now();
            let mut fresh: Vec<PreferencePair> = new_pairs.iter().map(|s| s.pair.clone()).collect();
            if cfg.trainer_command.is_none() {
                // DPO's reference terms come from the engine that trains: log-ratios start at 0
                // only if policy and reference are computed alike (a server's kernels, bf16 on a
                // GPU, differ from these).
                if self.setup.remote.is_some() {
                    fresh.iter_mut().for_each(|p| (p.ref_chosen, p.ref_rejected) = (None, None));
                }
                round.fill_reference(&local, &mut fresh)?;
            }
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

            // Train, as the settings' mode says.
            let mut pairs: Vec<(usize, PreferencePair)> = data.iter().map(|s| (s.phase, s.pair.clone())).collect();
            let train_seed = stage_seed(self.seed, phase, 4);
            let trained = match &cfg.trainer_command {
                Some(template) => {
                    let all: Vec<PreferencePair> = pairs.into_iter().map(|(_, p)| p).collect();
                    let (trained, report) = self.train_elsewhere(template, &all, phase, train_seed, &observer)?;
                    policy = trained;
                    report
                }
                None => {
                    round.references(&local, &mut pairs, phase)?;
                    round.train(&mut policy, &mut opt, &mut pairs, phase, train_seed, &cache)?.report
                }
            };
            let report = &trained;
            timings.train_prefix_cache = report.prefix_seconds;
            timings.train_steps = report.seconds - report.prefix_seconds;

            // Evaluate (on the model server, the trained policy loaded there first).
            let local = Local::new(&policy, None, eos);
            let evaluated = match &self.setup.remote {
                Some(r) => {
                    let name = self.serve(r, &policy, phase)?;
                    let e = self.evaluate(&round, &r.serving(Some(&name)), phase)?;
                    served = Some(name);
                    e
                }
                None => self.evaluate(&round, &local, phase)?,
            };
            let ev = &evaluated.ev;
            timings.eval_sampling = ev.sampling_seconds;
            timings.eval_judging = evaluated.judging_seconds();
            timings.total = t_phase.elapsed().as_secs_f64();

            let rec = PhaseRecord {
                acquisition: self.acquisition,
                seed: self.seed,
                phase,
                m,
                labels: data.len(),
                new_pairs: n_new,
                oracle_calls,
                undecided: decided.undecided,
                win_rate: ev.win_rate,
                held_out_win_rate: evaluated.held_out_win_rate(),
                timings,
                train: report.summary(),
                acquisition_stats: decided.stats,
                selected_margins,
                prompts_consumed: stream.consumed,
                prompt_passes: stream.passes(),
            };
            // Weights and data first, the record last: a record on disk means a complete phase.
            policy.save_trainable(&self.policy_path(phase))?;
            self.save_data(&data)?;
            self.save_samples(phase, &evaluated)?;
            self.write_record(&rec)?;
            // Weights two phases back are no longer needed to resume (the last two are kept, so
            // a phase whose record is deleted can be redone from the one before).
            if phase > 2 {
                let _ = std::fs::remove_file(self.policy_path(phase - 2));
                let _ = std::fs::remove_dir_all(self.adapter_path(phase - 2));
            }
            on_phase(&rec);
            records.push(rec);
        }
        records.sort_by_key(|r| r.phase);
        Ok(records)
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

    fn save_samples(&self, phase: usize, evaluated: &Evaluated) -> Result<()> {
        let ev = &evaluated.ev;
        let held_out = |i: usize| evaluated.held_out.as_ref().map(|(o, _)| o[i]);
        let rows: Vec<SampleRow> = self
            .setup
            .eval
            .iter()
            .zip(ev.policy.iter().zip(&ev.baseline).zip(&ev.outcomes))
            .enumerate()
            .map(|(i, (p, ((pol, base), o)))| SampleRow {
                sample: EvalSample {
                    prompt_id: None,
                    prompt: p.item.text.clone(),
                    policy: pol.clone(),
                    baseline: base.clone(),
                    outcome: Some(*o),
                },
                held_out_outcome: held_out(i),
            })
            .collect();
        write_atomic(&self.samples_path(phase), &serde_json::to_string_pretty(&rows)?)
    }

    pub fn samples_path(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("samples-phase-{phase}.json"))
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

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving {} into place", path.display()))?;
    Ok(())
}
