//! Jobs the model worker runs from the database queue: `generate` (acquire a round of pairs
//! with the current policy), `label` (an oracle labels pairs it has not judged), `train` (DPO
//! from the starting model on every labelled pair, the paper's reset mode), `evaluate` (win-rate
//! of a checkpoint against the starting model's samples on held-out prompts) and `round` (all
//! four; with human raters, only `generate`, and training waits for their labels).
//!
//! A job runs on a blocking thread and reads and writes the store through the runtime handle.
//! Its progress goes to a watch channel; a heartbeat task writes it to the database every half
//! second, and learns there if the job was cancelled. Each job commits its results at its end
//! in one transaction, so a job run again after a crash starts over cleanly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apl_shared::{Job, JobProgress, Project};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::runtime::Handle;

use super::Worker;
use super::settings::{Labeller, LoopSettings};
use crate::judge::local::LocalJudge;
use crate::store::export::LabelSource;
use crate::store::imports::{NewCompletion, NewPair, PromptRef};
use crate::store::rounds::{CheckpointRow, EvaluationRow, NewRound};
use crate::store::{Store, jobs::STALE_MS, new_id, now_ms};
use apl_engine::acquire::{Acquirer, Acquisition, PromptItem};
use apl_engine::eval::{EvalSampling, Outcome, sample_completions, win_rate};
use apl_engine::oracle::length::LengthOracle;
use apl_engine::oracle::{Comparison, Oracle, Preference};
use apl_engine::train::optim::Adam;
use apl_engine::train::policy::Policy;
use apl_engine::train::trainer::{PreferencePair, PrefixCache, StepStats, fill_reference_cached, train};

pub const KINDS: &[&str] = &["generate", "label", "train", "evaluate", "round"];

/// A job's parameters; every field optional, the project's settings fill the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobParams {
    /// generate / round: pairs to acquire (default: the project's pairs_per_round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<usize>,
    /// generate / round: acquisition function (default: the project's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquisition: Option<Acquisition>,
    /// evaluate: checkpoint id (default: the newest; none yet means the starting model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub kind: String,
    pub params: JobParams,
}

impl JobSpec {
    pub fn parse(kind: &str, params: &Value) -> Result<Self, String> {
        if !KINDS.contains(&kind) {
            return Err(format!("kind: {kind:?} is not one of {}", KINDS.join(", ")));
        }
        let params: JobParams = if params.is_null() {
            JobParams::default()
        } else {
            serde_json::from_value(params.clone()).map_err(|e| format!("params: {e}"))?
        };
        if params.pairs == Some(0) {
            return Err("params.pairs: must be at least 1".into());
        }
        Ok(Self { kind: kind.to_string(), params })
    }
}

type JobResult<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

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
    settings: LoopSettings,
    progress: &'a tokio::sync::watch::Sender<JobProgress>,
    cancelled: &'a AtomicBool,
    phase_start: std::cell::Cell<Instant>,
}

impl Ctx<'_> {
    fn block<T>(&self, f: impl std::future::Future<Output = crate::store::Result<T>>) -> JobResult<T> {
        self.rt.block_on(f).map_err(err)
    }

    fn check(&self) -> JobResult<()> {
        if self.cancelled.load(Ordering::Relaxed) { Err("cancelled".into()) } else { Ok(()) }
    }

    fn phase(&self, phase: &str, message: String) {
        self.phase_start.set(Instant::now());
        self.progress.send_replace(JobProgress { phase: phase.into(), message, ..Default::default() });
    }

    fn step(&self, phase: &str, step: usize, total: usize, loss: Option<f64>) {
        let elapsed = self.phase_start.get().elapsed().as_secs_f64();
        let eta = (step > 0 && total >= step).then(|| elapsed / step as f64 * (total - step) as f64);
        self.progress.send_modify(|p| {
            if p.phase != phase {
                p.phase = phase.to_string();
            }
            p.step = step as u64;
            p.total = total as u64;
            p.loss = loss.or(p.loss);
            p.eta_seconds = eta;
        });
    }

    fn oracle(&self, kind: Labeller) -> JobResult<OracleRef<'_>> {
        match kind {
            Labeller::Sentiment => Ok(OracleRef::Borrowed(self.worker.sentiment()? as &dyn Oracle)),
            Labeller::Length => Ok(OracleRef::Borrowed(&LengthOracle)),
            Labeller::Judge => {
                Ok(OracleRef::Owned(Box::new(self.worker.llm_judge(&self.project.id, &self.settings.judge)?)))
            }
            Labeller::LocalJudge => Ok(OracleRef::Owned(Box::new(LocalJudge::new(
                &self.worker.model,
                &self.worker.tokenizer,
                self.settings.judge.clone(),
                self.settings.acquire.batch_size,
            )))),
            Labeller::Raters => Err("human raters are not an automatic oracle".into()),
        }
    }

    /// The policy of `checkpoint` (the starting model when none).
    fn policy(&self, checkpoint: Option<&CheckpointRow>) -> JobResult<Policy> {
        let mut p = Policy::new(self.worker.checkpoint.clone(), self.settings.trainable.clone(), self.settings.seed)
            .map_err(err)?;
        if let Some(c) = checkpoint {
            p.load_trainable(std::path::Path::new(&c.path)).map_err(|e| format!("loading checkpoint {}: {e}", c.id))?;
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
            run_blocking(&worker, &st, rt, &j, &tx, &c)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the job panicked: {e}")));
        done.store(true, Ordering::Relaxed);
        heartbeat.abort();
        match &outcome {
            Ok(_) => tracing::info!(job = %job.id, "job done"),
            Err(e) => tracing::warn!(job = %job.id, error = %e, "job failed"),
        }
        if let Err(e) = store.finish_job(&job.id, owner, outcome).await {
            tracing::error!(job = %job.id, error = %e, "recording the end of a job");
        }
    }
}

fn run_blocking(
    worker: &Worker,
    store: &Store,
    rt: Handle,
    job: &Job,
    progress: &tokio::sync::watch::Sender<JobProgress>,
    cancelled: &AtomicBool,
) -> JobResult<Value> {
    let spec = JobSpec::parse(&job.kind, &job.params)?;
    let project = rt.block_on(store.project(&job.project_id)).map_err(err)?;
    let settings = LoopSettings::from_value(&project.config.loop_settings)?;
    let ctx = Ctx {
        worker,
        store,
        rt,
        project,
        settings,
        progress,
        cancelled,
        phase_start: std::cell::Cell::new(Instant::now()),
    };
    let p = &spec.params;
    match spec.kind.as_str() {
        "generate" => generate(&ctx, p),
        "label" => label(&ctx),
        "train" => train_job(&ctx),
        "evaluate" => evaluate(&ctx, p),
        "round" => {
            let g = generate(&ctx, p)?;
            if ctx.settings.labeller == Labeller::Raters {
                return Ok(json!({"generate": g, "waiting_for": "raters: train once they have labelled the round"}));
            }
            let l = label(&ctx)?;
            let t = train_job(&ctx)?;
            let e = evaluate(&ctx, &JobParams::default())?;
            Ok(json!({"generate": g, "label": l, "train": t, "evaluate": e}))
        }
        other => Err(format!("unknown job kind {other:?}")),
    }
}

fn generate(ctx: &Ctx, p: &JobParams) -> JobResult<Value> {
    let s = &ctx.settings;
    let pid = &ctx.project.id;
    let m = p.pairs.unwrap_or(s.pairs_per_round);
    let acq = p.acquisition.unwrap_or(s.acquisition);
    ctx.phase("preparing", format!("round of {m} pairs by {}", acq.name()));
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
    let pool = ctx.block(ctx.store.prompts(pid, "train", true, want))?;
    if pool.is_empty() {
        return Err("no unused training prompts: import prompts first".into());
    }
    let tok = &ctx.worker.tokenizer;
    let mut next = 0usize;
    let mut used: Vec<String> = Vec::new();
    let mut by_text: HashMap<String, String> = HashMap::new();
    let mut draw = |n: usize| -> apl_engine::model::Result<Vec<PromptItem>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && next < pool.len() {
            let (id, text, _) = &pool[next];
            next += 1;
            used.push(id.clone());
            by_text.entry(text.clone()).or_insert_with(|| id.clone());
            out.push(PromptItem { ids: tok.encode(text, true)?, text: text.clone() });
        }
        Ok(out)
    };
    let acquirer = Acquirer {
        policy: &policy,
        cache: None,
        tokenizer: tok,
        cfg: &s.acquire,
        completion_len: s.completion_tokens,
        exact_length: s.exact_length,
        beta: s.train.beta,
        policy_is_reference: checkpoint.is_none(),
    };
    ctx.phase("acquiring", String::new());
    let seed = s.seed ^ (number as u64).wrapping_mul(0x9e37_79b9);
    let on = |stage: &str, done: usize, total: usize| ctx.step(stage, done, total, None);
    let (cands, stats) = acquirer.acquire(acq, m, &mut draw, seed, &on).map_err(err)?;
    ctx.check()?;
    let source = format!("policy:{}", checkpoint.as_ref().map_or("base", |c| c.id.as_str()));
    let target = if s.labeller == Labeller::Raters { ctx.project.config.rating.overlap as i64 } else { 0 };
    let mut pairs = Vec::with_capacity(cands.len());
    for c in &cands {
        let prompt_id = by_text.get(&c.prompt_text).ok_or("an acquired pair lost its prompt")?.clone();
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
            kind: "train",
            round: Some(number),
            acquisition: Some(acq.name().to_string()),
            r_a: rewards.map(|r| r.0 as f64),
            r_b: rewards.map(|r| r.1 as f64),
            margin: rewards.map(|r| (r.0 - r.1) as f64),
            entropy: c.prompt_entropy.map(f64::from),
            gold_choice: None,
            target_votes: target,
            known: None,
        });
    }
    let stats_json = json!({
        "prompts_drawn": stats.prompts_drawn,
        "sequences_sampled": stats.sequences_sampled,
        "sequences_scored": stats.sequences_scored,
        "sampling_seconds": stats.sampling_seconds,
        "scoring_seconds": stats.scoring_seconds,
        "candidate_margins": stats.candidate_margins,
    });
    let ckpt_id = checkpoint.as_ref().map(|c| c.id.as_str());
    let round = NewRound {
        number,
        acquisition: acq.name(),
        policy_checkpoint: ckpt_id,
        stats: &stats_json,
        pairs: &pairs,
        used_prompts: &used,
    };
    ctx.block(ctx.store.record_round(pid, &round))?;
    Ok(json!({"round": number, "pairs": pairs.len(), "acquisition": acq.name(), "prompts_used": used.len()}))
}

fn label(ctx: &Ctx) -> JobResult<Value> {
    let oracle = ctx.oracle(ctx.settings.labeller)?;
    let judge = oracle.name();
    // Pairs of human win-rate checks are not among them: their raters alone label them.
    let pending = ctx.block(ctx.store.pairs_without_judge(&ctx.project.id, &judge))?;
    ctx.phase("labelling", format!("{} pairs by {judge}", pending.len()));
    let mut labels = Vec::with_capacity(pending.len());
    // Small chunks, so an LLM judge's progress shows (its calls within a chunk run concurrently).
    const CHUNK: usize = 32;
    for (i, chunk) in pending.chunks(CHUNK).enumerate() {
        ctx.check()?;
        let items: Vec<Comparison> = chunk.iter().map(|p| Comparison { prompt: &p.prompt, a: &p.a, b: &p.b }).collect();
        for (p, j) in chunk.iter().zip(oracle.judge_all(&items).map_err(err)?) {
            let choice = match j.preference {
                Preference::A => "a",
                Preference::B => "b",
                Preference::Tie => "tie",
                Preference::NoDecision => "none",
            };
            labels.push((p.id.clone(), choice, j.rationale));
        }
        ctx.step("labelling", (i * CHUNK + chunk.len()).min(pending.len()), pending.len(), None);
    }
    let stored = ctx.block(ctx.store.add_judge_labels(&judge, &labels))?;
    let undecided = labels.iter().filter(|l| l.1 == "none").count();
    Ok(json!({"judge": judge, "labelled": stored, "undecided": undecided, "report": oracle.report()}))
}

fn train_job(ctx: &Ctx) -> JobResult<Value> {
    let s = &ctx.settings;
    let pid = &ctx.project.id;
    let source: LabelSource = s.train_on.parse().map_err(err)?;
    let prefs = ctx.block(ctx.store.preferences(pid, source))?;
    if prefs.is_empty() {
        return Err(format!("no labelled pairs to train on (labels from {})", s.train_on));
    }
    ctx.phase("reference log-probs", format!("{} labelled pairs", prefs.len()));
    let tok = &ctx.worker.tokenizer;
    let mut pairs = Vec::with_capacity(prefs.len());
    for p in &prefs {
        let (chosen, rejected) = if p.a_wins {
            (&p.pair.completion_a, &p.pair.completion_b)
        } else {
            (&p.pair.completion_b, &p.pair.completion_a)
        };
        pairs.push(PreferencePair {
            prompt: tok.encode(&p.pair.prompt, true).map_err(err)?,
            chosen: tok.encode(chosen, false).map_err(err)?,
            rejected: tok.encode(rejected, false).map_err(err)?,
            ref_chosen: None,
            ref_rejected: None,
        });
    }
    pairs.retain(|p| !p.chosen.is_empty() && !p.rejected.is_empty());
    let policy = ctx.policy(None)?;
    let mut cache = PrefixCache::default();
    fill_reference_cached(&policy, &mut pairs, &mut cache, s.acquire.batch_size).map_err(err)?;
    ctx.check()?;
    let vars = policy.vars().iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(vars, s.train.adam.clone()).map_err(err)?;
    let total = s.train.epochs * pairs.len().div_ceil(s.train.pairs_per_step);
    ctx.phase("training", String::new());
    let report = train(&policy, &mut opt, &pairs, &s.train, &mut cache, |st: &StepStats| {
        ctx.step("training", st.step + 1, total, Some(st.loss))
    })
    .map_err(err)?;
    ctx.check()?;
    let id = new_id();
    let dir = ctx.worker.data_dir.join("checkpoints").join(pid);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("{id}.safetensors"));
    policy.save_trainable(&path).map_err(err)?;
    let round = ctx.block(ctx.store.next_round_number(pid))? - 1;
    let report_json = json!({
        "source": s.train_on,
        "steps": report.steps.len(),
        "epoch_losses": report.epoch_losses(),
        "loss_curve": report.steps.iter().map(|s| s.loss).collect::<Vec<_>>(),
        "accuracy_curve": report.steps.iter().map(|s| s.reward_accuracy).collect::<Vec<_>>(),
        "seconds": report.seconds,
    });
    let row = CheckpointRow {
        id: id.clone(),
        round,
        path: path.display().to_string(),
        pairs: pairs.len() as i64,
        report: report_json.clone(),
        created_at: now_ms(),
    };
    ctx.block(ctx.store.add_checkpoint(pid, &row))?;
    Ok(json!({"checkpoint": id, "pairs": pairs.len(), "epoch_losses": report.epoch_losses()}))
}

fn evaluate(ctx: &Ctx, p: &JobParams) -> JobResult<Value> {
    let s = &ctx.settings;
    let pid = &ctx.project.id;
    let checkpoint = match &p.checkpoint {
        Some(id) => Some(ctx.block(ctx.store.checkpoint(pid, id))?),
        None => ctx.block(ctx.store.latest_checkpoint(pid))?,
    };
    let prompts = ctx.block(ctx.store.prompts(pid, "eval", false, s.eval.prompts as i64))?;
    if prompts.is_empty() {
        return Err("no evaluation prompts: import prompts with split=eval first".into());
    }
    let oracle = ctx.oracle(s.eval.judge)?;
    let policy = ctx.policy(checkpoint.as_ref())?;
    let tok = &ctx.worker.tokenizer;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(&p.1, true)).collect::<Result<_, _>>().map_err(err)?;
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let how = EvalSampling {
        completion_tokens: s.completion_tokens,
        exact_length: s.exact_length,
        temperature: s.eval.temperature,
        batch_size: s.eval.batch_size,
    };
    let seed = s.seed ^ 0x5eed_e7a1;
    ctx.phase("policy samples", String::new());
    let on = |stage: &str, done: usize, total: usize| ctx.step(stage, done, total, None);
    let ours = sample_completions(policy.model(), tok, &refs, &how, seed, &on).map_err(err)?;
    ctx.check()?;
    ctx.phase("reference samples", String::new());
    let theirs = sample_completions(policy.reference(), tok, &refs, &how, seed, &on).map_err(err)?;
    ctx.check()?;
    ctx.phase("judging", String::new());
    let items: Vec<Comparison> =
        prompts.iter().zip(ours.iter().zip(&theirs)).map(|(p, (a, b))| Comparison { prompt: &p.1, a, b }).collect();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
    for chunk in items.chunks(32) {
        ctx.check()?;
        outcomes
            .extend(oracle.judge_all(chunk).map_err(err)?.into_iter().map(|j| Outcome::from_preference(j.preference)));
        ctx.step("judging", outcomes.len(), items.len(), None);
    }
    let wr = win_rate(&outcomes);
    let samples: Vec<Value> = prompts
        .iter()
        .zip(ours.iter().zip(&theirs).zip(&outcomes))
        .map(|(p, ((a, b), o))| json!({"prompt_id": p.0, "prompt": p.1, "policy": a, "reference": b, "outcome": o}))
        .collect();
    let row = EvaluationRow {
        id: new_id(),
        checkpoint_id: checkpoint.as_ref().map(|c| c.id.clone()),
        judge: oracle.name(),
        baseline: "reference samples".into(),
        win_rate: wr.win_rate,
        stderr: wr.stderr,
        n: outcomes.len() as i64,
        details: json!({"win_rate": wr, "samples": samples}),
        created_at: now_ms(),
    };
    ctx.block(ctx.store.add_evaluation(pid, &row))?;
    Ok(
        json!({"evaluation": row.id, "checkpoint": row.checkpoint_id, "win_rate": wr.win_rate, "stderr": wr.stderr, "n": row.n, "judge_report": oracle.report()}),
    )
}
