//! The server's driver of the learning round (`apl_engine::round`): jobs the model worker runs
//! from the database queue. `generate` acquires a round of pairs with the current policy,
//! `label` has an automatic labeller label the pairs it has not judged, `train` runs DPO as the
//! settings' `mode` says (`reset`: from the starting model on every labelled pair; `continue`:
//! from the newest checkpoint on every labelled pair; `online`: from the newest checkpoint and
//! its optimiser state, one pass over the newest round's pairs), `evaluate` measures a
//! checkpoint's win-rate against the starting model's samples on held-out prompts, and `round`
//! does all four (with human raters only `generate`: training waits for their labels).
//!
//! The round's stages are the engine's; what this driver adds is where their inputs come from
//! and where their results go: the project's prompts and labels in the store, checkpoints in
//! the data directory. A job runs on a blocking thread and reads and writes the store through
//! the runtime handle. Its progress goes to a watch channel; a heartbeat task writes it to the
//! database every half second, and learns there if the job was cancelled. Each job commits
//! its results at its end in one transaction, so a job run again after a crash starts over
//! cleanly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::remote::{Remote, RemoteError};
use apl_engine::acquire::PromptItem;
use apl_engine::backend::{Local, ModelBackend};
use apl_engine::model::ModelError;
use apl_engine::oracle::length::LengthOracle;
use apl_engine::oracle::{Comparison, Oracle};
use apl_engine::round::{Baseline, EvalSeeds, Observer, Round, RoundError};
use apl_engine::train::optim::Adam;
use apl_engine::train::policy::Policy;
use apl_engine::train::trainer::{PreferencePair, PrefixCache, StepStats};
use apl_shared::settings::{Backend, InvalidSetting, LoopSettings, Trainer};
use apl_shared::{
    Acquisition, EvalSample, Evaluated, EvaluationDetails, Generated, Job, JobKind, JobParams, JobProgress, JobResult,
    LabelledBy, Labeller, Mode, PairKind, Project, Split, TrainSummary, Trained,
};
use tokio::runtime::Handle;

use super::Worker;
use super::progress::{Tracker, stage_history};
use crate::judge::JudgeError;
use crate::judge::local::LocalJudge;
use crate::store::imports::{NewCompletion, NewPair, PromptRef};
use crate::store::jobs::{JobOutcome, STALE_MS};
use crate::store::rounds::{CheckpointRow, EvaluationRow, NewRound};
use crate::store::{Store, StoreError, new_id, now_ms};

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Judge(#[from] JudgeError),
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Trainer(#[from] crate::trl::TrlError),
    #[error("loading checkpoint {id}")]
    Checkpoint {
        id: String,
        #[source]
        source: ModelError,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The job cannot run with what the project has (no prompts, no labels, no oracle).
    #[error("{0}")]
    Cannot(String),
}

type JobResultOf<T> = Result<T, JobError>;

/// An oracle the worker keeps (sentiment, length) or one made for the job (the judges).
enum OracleRef<'a> {
    Borrowed(&'a dyn Oracle),
    Owned(Box<dyn Oracle + 'a>),
}

impl<'a> std::ops::Deref for OracleRef<'a> {
    type Target = dyn Oracle + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            OracleRef::Borrowed(o) => *o,
            OracleRef::Owned(o) => o.as_ref(),
        }
    }
}

/// What a running job can reach.
struct Ctx<'a> {
    worker: &'a Worker,
    store: &'a Store,
    rt: Handle,
    project: Project,
    progress: &'a Tracker<'a>,
    cancelled: &'a Arc<AtomicBool>,
}

impl Observer for Ctx<'_> {
    fn progress(&self, stage: &str, done: usize, total: usize) {
        self.progress.step(stage, done, total, None);
    }

    fn step(&self, stats: &StepStats, total: usize) {
        self.progress.step("training", stats.step + 1, total, Some(stats.loss));
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

impl Ctx<'_> {
    fn settings(&self) -> &LoopSettings {
        &self.project.config.loop_settings
    }

    fn round(&self) -> Round<'_> {
        Round { settings: self.settings(), tokenizer: &self.worker.tokenizer, observer: self }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = crate::store::Result<T>>) -> JobResultOf<T> {
        Ok(self.rt.block_on(f)?)
    }

    fn phase(&self, phase: &str, message: String) {
        self.progress.phase(phase, message);
    }

    fn oracle(&self, kind: Labeller) -> JobResultOf<OracleRef<'_>> {
        let s = self.settings();
        Ok(match kind {
            Labeller::Sentiment => OracleRef::Borrowed(self.worker.sentiment()? as &dyn Oracle),
            Labeller::Length => OracleRef::Borrowed(&LengthOracle),
            // Cancelling the job stops its calls in flight, not only the next chunk's.
            Labeller::Judge => OracleRef::Owned(Box::new(
                self.worker.llm_judge(&self.project.id, &s.judge)?.cancelled_by(self.cancelled.clone()),
            )),
            Labeller::LocalJudge => OracleRef::Owned(Box::new(LocalJudge::new(
                self.worker.model.clone(),
                self.worker.tokenizer.clone(),
                s.judge.clone(),
                s.acquire.batch_size,
            ))),
            Labeller::Raters => return Err(JobError::Cannot("human raters are not an automatic labeller".into())),
        })
    }

    /// The project's model server, checked and cancelled with the job (None: this engine).
    fn remote(&self) -> JobResultOf<Option<Remote>> {
        match &self.settings().backend {
            Backend::Local => Ok(None),
            Backend::Remote(r) => {
                let remote = self.worker.remote(r)?.cancelled_by(self.cancelled.clone());
                remote.check()?;
                Ok(Some(remote))
            }
        }
    }

    /// The name the model server serves `checkpoint`'s policy under (its PEFT adapter beside
    /// the checkpoint, written and loaded on first use); None for the starting model.
    fn served(
        &self,
        remote: &Remote,
        policy: &Policy,
        checkpoint: Option<&CheckpointRow>,
    ) -> JobResultOf<Option<String>> {
        let Some(c) = checkpoint else { return Ok(None) };
        let dir = std::path::Path::new(&c.path).with_extension("peft");
        Ok(Some(remote.serve_policy(policy, &dir, &c.id)?))
    }

    /// The policy of `checkpoint` (the starting model when none).
    fn policy(&self, checkpoint: Option<&CheckpointRow>) -> JobResultOf<Policy> {
        let s = self.settings();
        let mut p = Policy::new(self.worker.checkpoint.clone(), s.trainable.clone(), s.seed)?;
        if let Some(c) = checkpoint {
            p.load_trainable(std::path::Path::new(&c.path))
                .map_err(|source| JobError::Checkpoint { id: c.id.clone(), source })?;
        }
        Ok(p)
    }
}

impl Worker {
    /// The job loop: takes queued jobs one at a time until the process ends. Jobs orphaned by
    /// a dead process are queued again first (all running ones at once when `sole` is set, as
    /// for the only process over an SQLite file).
    pub async fn run_jobs(self: Arc<Self>, store: Arc<Store>, sole: bool) {
        let owner = format!("{}-{}", std::process::id(), new_id());
        let mut first = true;
        loop {
            let stale = if first && sole { 0 } else { STALE_MS };
            first = false;
            match store.recover_jobs(stale).await {
                Ok(n) if n > 0 => tracing::warn!(jobs = n, "requeued or failed jobs left running by a stopped server"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "recovering orphaned jobs"),
            }
            // Human-rated rounds that are labelled enough go on by themselves.
            match store.queue_due_continues().await {
                Ok(queued) => {
                    for j in queued {
                        tracing::info!(project = %j.project_id, job = %j.id, round = ?j.params.after_round, "round labelled: continuing");
                    }
                }
                Err(e) => tracing::error!(error = %e, "checking for labelled rounds"),
            }
            match store.claim_job(&owner).await {
                Ok(Some(job)) => self.clone().run_one(store.clone(), &owner, job).await,
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "taking a job");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run_one(self: Arc<Self>, store: Arc<Store>, owner: &str, job: Job) {
        tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, "job started");
        let start = JobProgress { phase: "starting".into(), ..Default::default() };
        let (tx, mut rx) = tokio::sync::watch::channel(start);
        let last = tx.subscribe();
        let cancelled = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (store, owner, id, cancelled, done) =
                (store.clone(), owner.to_string(), job.id.clone(), cancelled.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let p = rx.borrow_and_update().clone();
                    match store.job_progress(&id, &owner, &p).await {
                        Ok(true) => {}
                        Ok(false) => cancelled.store(true, Ordering::Relaxed),
                        Err(e) => tracing::warn!(job = %id, error = %e, "writing job progress"),
                    }
                    tokio::select! {
                        _ = rx.changed() => tokio::time::sleep(Duration::from_millis(500)).await,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            })
        };
        let rt = Handle::current();
        let (worker, st, j, c) = (self.clone(), store.clone(), job.clone(), cancelled.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let _guard = worker.busy.lock().unwrap_or_else(|p| p.into_inner());
            run_blocking(&worker, &st, rt, &j, &tx, &c).map_err(|e| crate::error::describe(&e))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the job panicked: {e}")));
        done.store(true, Ordering::Relaxed);
        heartbeat.abort();
        let outcome = match outcome {
            Ok(r) => {
                tracing::info!(job = %job.id, "job done");
                JobOutcome::Done(Box::new(r))
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "job failed");
                JobOutcome::Failed(e)
            }
        };
        // The final progress is kept: its stage timings make the next job's estimate.
        let last = last.borrow().clone();
        if let Err(e) = store.finish_job(&job.id, owner, &outcome, &last).await {
            tracing::error!(job = %job.id, error = %e, "recording the end of a job");
        }
    }
}

/// What a human-rated round waits for once acquired.
const WAITING_FOR_RATERS: &str =
    "raters: the round goes on (train, evaluate, next round) once they have labelled it, by itself with auto-continue";

fn run_blocking(
    worker: &Worker,
    store: &Store,
    rt: Handle,
    job: &Job,
    progress: &tokio::sync::watch::Sender<JobProgress>,
    cancelled: &Arc<AtomicBool>,
) -> JobResultOf<JobResult> {
    let project = rt.block_on(store.project(&job.project_id))?;
    project.config.loop_settings.validate().map_err(|e| e.within("loop_settings"))?;
    // How long each stage took the last time it ran here: the whole job's time-left estimate.
    let history = stage_history(&rt.block_on(store.jobs(&job.project_id))?);
    let tracker = Tracker::new(progress, history);
    let ctx = Ctx { worker, store, rt, project, progress: &tracker, cancelled };
    let result = run_stages(&ctx, job)?;
    tracker.finish();
    Ok(result)
}

/// The job's stages, in order, as its kind says.
fn run_stages(ctx: &Ctx, job: &Job) -> JobResultOf<JobResult> {
    let p = &job.params;
    let plan = |stages: &[JobKind]| ctx.progress.plan(stages.to_vec());
    Ok(match job.kind {
        JobKind::Generate | JobKind::Label | JobKind::Train | JobKind::Evaluate => {
            plan(&[job.kind]);
            match job.kind {
                JobKind::Generate => JobResult { generate: Some(generate(ctx, p)?), ..Default::default() },
                JobKind::Label => JobResult { label: Some(label(ctx)?), ..Default::default() },
                JobKind::Train => JobResult { train: Some(train(ctx)?), ..Default::default() },
                _ => JobResult { evaluate: Some(evaluate(ctx, p)?), ..Default::default() },
            }
        }
        JobKind::Continue => {
            // Evaluation needs evaluation prompts and an automatic judge; without them the
            // cycle goes on (the raters are waiting), unevaluated.
            let can_evaluate = ctx.block(ctx.store.can_evaluate(&ctx.project))?;
            plan(match can_evaluate {
                true => &[JobKind::Train, JobKind::Evaluate, JobKind::Generate],
                false => &[JobKind::Train, JobKind::Generate],
            });
            // Run again after a crash, it does not train a second time on the same labels: a
            // checkpoint of the round it continues from is the one it made.
            let round = p.after_round.unwrap_or(ctx.block(ctx.store.next_round_number(&ctx.project.id))? - 1);
            let made = ctx.block(ctx.store.latest_checkpoint(&ctx.project.id))?.filter(|c| c.round >= round);
            let train = match made {
                Some(c) => {
                    ctx.progress.stage(JobKind::Train);
                    ctx.progress.untimed();
                    Some(Trained { checkpoint: c.id, pairs: c.pairs as usize, epoch_losses: Vec::new() })
                }
                None => Some(train(ctx)?),
            };
            // A failed evaluation (a judge down) does not keep the raters from the next round:
            // it is said in the result, and `evaluate` can be run again by hand.
            let mut waiting_for = WAITING_FOR_RATERS.to_string();
            let evaluate = match can_evaluate {
                true => match evaluate(ctx, &JobParams::default()) {
                    Ok(e) => Some(e),
                    Err(e) if ctx.cancelled.load(Ordering::Relaxed) => return Err(e),
                    Err(e) => {
                        ctx.progress.untimed();
                        let e = crate::error::describe(&e);
                        tracing::warn!(project = %ctx.project.id, error = %e, "continue: the evaluation failed");
                        waiting_for.push_str(&format!(" (the evaluation failed: {e}; run evaluate again)"));
                        None
                    }
                },
                false => None,
            };
            let generate = Some(generate(ctx, p)?);
            JobResult { generate, train, evaluate, waiting_for: Some(waiting_for), label: None }
        }
        JobKind::Round => {
            if !ctx.settings().labeller.is_automatic() {
                plan(&[JobKind::Generate]);
                let generate = Some(generate(ctx, p)?);
                let waiting_for = Some(WAITING_FOR_RATERS.to_string());
                return Ok(JobResult { generate, waiting_for, ..Default::default() });
            }
            plan(&[JobKind::Generate, JobKind::Label, JobKind::Train, JobKind::Evaluate]);
            JobResult {
                generate: Some(generate(ctx, p)?),
                label: Some(label(ctx)?),
                train: Some(train(ctx)?),
                evaluate: Some(evaluate(ctx, &JobParams::default())?),
                waiting_for: None,
            }
        }
    })
}

/// Acquires a round of pairs with the newest checkpoint's policy and stores them.
fn generate(ctx: &Ctx, p: &JobParams) -> JobResultOf<Generated> {
    let s = ctx.settings();
    let pid = &ctx.project.id;
    let m = p.pairs.unwrap_or(s.pairs_per_round);
    let acq = p.acquisition.unwrap_or(s.acquisition);
    ctx.progress.stage(JobKind::Generate);
    ctx.phase("preparing", format!("round of {m} pairs by {acq}"));
    let number = ctx.block(ctx.store.next_round_number(pid))?;
    let checkpoint = ctx.block(ctx.store.latest_checkpoint(pid))?;
    let policy = ctx.policy(checkpoint.as_ref())?;
    let per_pair = match acq {
        Acquisition::Random => 1,
        Acquisition::Certainty | Acquisition::Uncertainty => s.acquire.over_generate,
        Acquisition::Entropy => s.acquire.entropy_over_sample,
        Acquisition::Hybrid => s.acquire.over_generate * s.acquire.entropy_over_sample,
    };
    let want = (m * per_pair.max(1) * 2 + 64) as i64;
    let pool = ctx.block(ctx.store.prompts(pid, Split::Train, true, want))?;
    if pool.is_empty() {
        return Err(JobError::Cannot("no unused training prompts: import prompts first".into()));
    }
    let tok = &ctx.worker.tokenizer;
    // A prompt that cannot fit the model with the longest completion (imported before the
    // check at import, or the completion length raised since) is passed over and marked used,
    // not allowed to fail every later round.
    let room = ctx.worker.max_positions().saturating_sub(s.completion_tokens.1);
    let skipped = std::cell::Cell::new(0usize);
    let mut next = 0usize;
    let mut used: Vec<String> = Vec::new();
    let mut by_text: HashMap<String, String> = HashMap::new();
    let mut draw = |n: usize| -> apl_engine::model::Result<Vec<PromptItem>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && next < pool.len() {
            let row = &pool[next];
            next += 1;
            used.push(row.id.clone());
            let ids = tok.encode(&row.text, true)?;
            if ids.len() > room {
                skipped.set(skipped.get() + 1);
                continue;
            }
            by_text.entry(row.text.clone()).or_insert_with(|| row.id.clone());
            out.push(PromptItem { ids, text: row.text.clone() });
        }
        Ok(out)
    };
    ctx.phase("acquiring", String::new());
    let seed = s.seed ^ (number as u64).wrapping_mul(0x9e37_79b9);
    let local = Local::new(&policy, None, tok.eos_ids());
    let remote = ctx.remote()?;
    let served = match &remote {
        Some(r) => ctx.served(r, &policy, checkpoint.as_ref())?,
        None => None,
    };
    let serving = remote.as_ref().map(|r| r.serving(served.as_deref()));
    let backend: &dyn ModelBackend = serving.as_ref().map_or(&local as &dyn ModelBackend, |s| s);
    let (cands, mut stats) = ctx.round().acquire(backend, acq, m, &mut draw, seed, checkpoint.is_none())?;
    stats.prompts_skipped = skipped.get();
    if stats.prompts_skipped > 0 {
        tracing::warn!(project = %pid, skipped = stats.prompts_skipped, room, "prompts too long for the model passed over");
    }
    let source = format!("policy:{}", checkpoint.as_ref().map_or("base", |c| c.id.as_str()));
    let target = if s.labeller.is_automatic() { 0 } else { ctx.project.config.rating.overlap as i64 };
    let mut pairs = Vec::with_capacity(cands.len());
    for c in &cands {
        let prompt_id = by_text
            .get(&c.prompt_text)
            .ok_or_else(|| JobError::Cannot("an acquired pair lost its prompt".into()))?
            .clone();
        let rewards = c.rewards(s.train.beta);
        let completion = |text: &str, tokens: usize, logp: Option<f32>| NewCompletion {
            text: text.to_string(),
            source: source.clone(),
            logp: logp.map(f64::from),
            tokens: Some(tokens as i64),
        };
        pairs.push(NewPair {
            prompt: PromptRef::Existing(prompt_id),
            a: completion(&c.text_a, c.a.len(), c.logp_a),
            b: completion(&c.text_b, c.b.len(), c.logp_b),
            kind: PairKind::Train,
            round: Some(number),
            acquisition: Some(acq),
            r_a: rewards.map(|r| r.0 as f64),
            r_b: rewards.map(|r| r.1 as f64),
            margin: rewards.map(|r| (r.0 - r.1) as f64),
            entropy: c.prompt_entropy.map(f64::from),
            gold_choice: None,
            target_votes: target,
            known: None,
            import_key: None,
            extra: None,
        });
    }
    let round = NewRound {
        number,
        acquisition: acq,
        policy_checkpoint: checkpoint.as_ref().map(|c| c.id.as_str()),
        stats: &stats,
        pairs: &pairs,
        used_prompts: &used,
    };
    ctx.block(ctx.store.record_round(pid, &round))?;
    Ok(Generated { round: number, pairs: pairs.len(), acquisition: acq, prompts_used: used.len() })
}

/// Labels the training pairs the automatic labeller has not judged.
fn label(ctx: &Ctx) -> JobResultOf<LabelledBy> {
    ctx.progress.stage(JobKind::Label);
    let oracle = ctx.oracle(ctx.settings().labeller)?;
    let judge = oracle.name();
    // Pairs of human win-rate checks are not among them: their raters alone label them.
    let pending = ctx.block(ctx.store.pairs_without_judge(&ctx.project.id, &judge))?;
    ctx.phase("labelling", format!("{} pairs by {judge}", pending.len()));
    let items: Vec<Comparison> = pending.iter().map(|p| Comparison { prompt: &p.prompt, a: &p.a, b: &p.b }).collect();
    let judged = ctx.round().label(&*oracle, &items)?;
    let labels: Vec<_> = pending.iter().zip(judged).map(|(p, j)| (p.id.clone(), j.preference, j.rationale)).collect();
    let stored = ctx.block(ctx.store.add_judge_labels(&judge, &labels))?;
    let undecided = labels.iter().filter(|l| l.1 == apl_shared::Preference::NoDecision).count();
    Ok(LabelledBy { judge, labelled: stored, undecided, report: oracle.report() })
}

/// DPO on the labelled pairs the settings' `train_on` selects; stores the checkpoint.
fn train(ctx: &Ctx) -> JobResultOf<Trained> {
    ctx.progress.stage(JobKind::Train);
    let s = ctx.settings();
    let pid = &ctx.project.id;
    let prefs = ctx.block(ctx.store.preferences(pid, s.train_on))?;
    if prefs.is_empty() {
        return Err(JobError::Cannot(format!("no labelled pairs to train on (labels from {})", s.train_on)));
    }
    ctx.phase("reference log-probs", format!("{} labelled pairs", prefs.len()));
    let tok = &ctx.worker.tokenizer;
    let mut pairs = Vec::with_capacity(prefs.len());
    for p in &prefs {
        let (chosen, rejected) = p.chosen_rejected();
        let pair = PreferencePair {
            prompt: tok.encode(&p.pair.prompt, true)?,
            chosen: tok.encode(chosen, false)?,
            rejected: tok.encode(rejected, false)?,
            ref_chosen: None,
            ref_rejected: None,
        };
        pairs.push((p.pair.round.unwrap_or(0).max(0) as usize, pair));
    }
    pairs.retain(|(_, p)| !p.chosen.is_empty() && !p.rejected.is_empty());
    // Reset (the paper) trains from the starting model; continue and online from the newest
    // checkpoint.
    let start = match s.mode {
        Mode::Reset => None,
        Mode::Continue | Mode::Online => ctx.block(ctx.store.latest_checkpoint(pid))?,
    };
    let id = new_id();
    let dir = ctx.worker.data_dir.join("checkpoints").join(pid);
    std::fs::create_dir_all(&dir).map_err(|source| JobError::Io { what: "creating", path: dir.clone(), source })?;
    let path = dir.join(format!("{id}.safetensors"));
    let (policy, report, trained_pairs) = match &s.trainer {
        Trainer::Command { name } => {
            // The operator's command (TRL) trains from the starting model on every pair.
            let template = ctx.worker.trainer_command(name)?;
            let base_dir = ctx.worker.trainer_base()?;
            let work = ctx.worker.data_dir.join("trainer").join(pid).join(&id);
            let run =
                crate::trl::TrlRun { template, base_dir: &base_dir, work: &work, seed: s.train.seed, own_group: true };
            let all: Vec<PreferencePair> = pairs.into_iter().map(|(_, p)| p).collect();
            ctx.phase("training", format!("{} pairs, trainer command {name:?}", all.len()));
            let (policy, report) = crate::trl::train(&run, s, tok, ctx.worker.checkpoint.clone(), &all, ctx)?;
            (policy, report, all.len())
        }
        Trainer::Apl => {
            let mut policy = ctx.policy(start.as_ref())?;
            let vars = policy.vars().iter().map(|(_, v)| v.clone()).collect();
            let mut opt = Adam::new(vars, s.train.adam.clone()).map_err(ModelError::from)?;
            // Online training goes on with the optimiser where the last job left it, as one run
            // of the experiment does; its state is kept beside the checkpoint it trained.
            if let (Mode::Online, Some(c)) = (s.mode, &start) {
                let path = optimiser_path(std::path::Path::new(&c.path));
                if path.exists() {
                    let state = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
                        .map_err(|e| JobError::Checkpoint { id: c.id.clone(), source: e.into() })?;
                    opt.load_state(&state).map_err(|e| JobError::Checkpoint { id: c.id.clone(), source: e.into() })?;
                }
            }
            let newest = pairs.iter().map(|(r, _)| *r).max().unwrap_or(0);
            let cache = std::cell::RefCell::new(PrefixCache::default());
            // DPO's reference terms from the engine that trains (here), whatever samples: the
            // log-ratios start at 0 only if policy and reference are computed alike.
            let local = Local::new(&policy, Some(&cache), ctx.worker.tokenizer.eos_ids());
            ctx.round().references(&local, &mut pairs, newest)?;
            let trained = ctx.round().train(&mut policy, &mut opt, &mut pairs, newest, s.train.seed, &cache)?;
            if s.mode == Mode::Online {
                let state = opt.state().map_err(ModelError::from)?;
                let at = optimiser_path(&path);
                candle_core::safetensors::save(&state, &at)
                    .map_err(|e| JobError::Checkpoint { id: id.clone(), source: e.into() })?;
            }
            (policy, trained.report, trained.pairs)
        }
    };
    policy.save_trainable(&path)?;
    let round = ctx.block(ctx.store.next_round_number(pid))? - 1;
    let row = CheckpointRow {
        id: id.clone(),
        round,
        path: path.display().to_string(),
        pairs: trained_pairs as i64,
        report: TrainSummary { source: Some(s.train_on), ..report.summary() },
        created_at: now_ms(),
    };
    ctx.block(ctx.store.add_checkpoint(pid, &row))?;
    Ok(Trained { checkpoint: id, pairs: trained_pairs, epoch_losses: report.epoch_losses() })
}

/// Where a checkpoint's optimiser state is kept (online mode only: it is twice the trained
/// weights).
fn optimiser_path(checkpoint: &std::path::Path) -> std::path::PathBuf {
    checkpoint.with_extension("adam.safetensors")
}

/// The baseline's sampling seed, apart from the policy's (see `EvalSeeds`).
const BASELINE_SEED: u64 = 0xba5e_11e5_eed5;

/// A checkpoint's win-rate against the starting model's samples on the held-out prompts.
fn evaluate(ctx: &Ctx, p: &JobParams) -> JobResultOf<Evaluated> {
    ctx.progress.stage(JobKind::Evaluate);
    let s = ctx.settings();
    let pid = &ctx.project.id;
    let checkpoint = match &p.checkpoint {
        Some(id) => Some(ctx.block(ctx.store.checkpoint(pid, id))?),
        None => ctx.block(ctx.store.latest_checkpoint(pid))?,
    };
    let prompts = ctx.block(ctx.store.prompts(pid, Split::Eval, false, s.eval.prompts as i64))?;
    if prompts.is_empty() {
        return Err(JobError::Cannot("no evaluation prompts: import prompts with split=eval first".into()));
    }
    let oracle = ctx.oracle(s.eval.judge)?;
    let policy = ctx.policy(checkpoint.as_ref())?;
    let tok = &ctx.worker.tokenizer;
    let items: Vec<PromptItem> = prompts
        .iter()
        .map(|p| Ok(PromptItem { ids: tok.encode(&p.text, true)?, text: p.text.clone() }))
        .collect::<Result<_, ModelError>>()?;
    // Independent sampling streams for policy and baseline, one length per prompt for both.
    let policy_seed = s.seed ^ 0x5eed_e7a1;
    let seeds = EvalSeeds { policy: policy_seed, baseline: s.seed ^ BASELINE_SEED, lengths: Some(policy_seed) };
    ctx.phase("policy samples", String::new());
    let local = Local::new(&policy, None, tok.eos_ids());
    let remote = ctx.remote()?;
    let ev = match &remote {
        Some(r) => {
            let served = ctx.served(r, &policy, checkpoint.as_ref())?;
            ctx.round().evaluate(&r.serving(served.as_deref()), &items, Baseline::Reference, &*oracle, seeds)?
        }
        None => ctx.round().evaluate(&local, &items, Baseline::Reference, &*oracle, seeds)?,
    };
    let samples = prompts
        .iter()
        .zip(ev.policy.iter().zip(&ev.baseline).zip(&ev.outcomes))
        .map(|(p, ((a, b), o))| EvalSample {
            prompt_id: Some(p.id.clone()),
            prompt: p.text.clone(),
            policy: a.clone(),
            baseline: b.clone(),
            outcome: Some(*o),
        })
        .collect();
    let wr = ev.win_rate;
    let row = EvaluationRow {
        id: new_id(),
        checkpoint_id: checkpoint.as_ref().map(|c| c.id.clone()),
        judge: ev.judge.clone(),
        baseline: "reference samples".into(),
        win_rate: wr.win_rate,
        stderr: wr.stderr,
        n: ev.outcomes.len() as i64,
        details: EvaluationDetails { win_rate: wr, samples },
        created_at: now_ms(),
    };
    ctx.block(ctx.store.add_evaluation(pid, &row))?;
    Ok(Evaluated {
        evaluation: row.id,
        checkpoint: row.checkpoint_id,
        win_rate: wr.win_rate,
        stderr: wr.stderr,
        n: ev.outcomes.len(),
        judge_report: oracle.report(),
    })
}
