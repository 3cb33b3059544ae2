//! Jobs over HTTP: a whole round (acquire, oracle labels, DPO, evaluation) on the tiny model,
//! watched through server-sent events; a second round acquired by the trained policy; rater
//! rounds waiting for labels; cancellation; and recovery of jobs a dead server left running;
//! rounds whose sampling and scoring run on a model server (the server tests' mock).

mod common;
#[path = "../../server/tests/common/model_server.rs"]
mod model_server;

use apl::store::jobs::MAX_ATTEMPTS;
use apl_shared::settings::JudgeSettings;
use apl_shared::{
    Acquisition, ActiveRater, CheckpointRow, Cycle, CycleStep, EvaluationRow, Job, JobKind, JobParams, JobState,
    LabelSource, Labeller, Mode, NextPair, NextStatus, PairRecord, Project, ProjectAnalytics, RaterChoice, RoundRow,
    Split,
};
use common::{Backend, Server, tiny};
use reqwest::Method;

async fn prompts(s: &Server, project: &str, split: Split, n: usize) {
    let texts: Vec<String> = (0..n).map(|i| format!("{split} prompt number {i} is")).collect();
    s.prompts(project, split, &texts).await;
}

backend_test!(a_round_runs_end_to_end_with_live_progress, flavor = "multi_thread", worker_threads = 2);
async fn a_round_runs_end_to_end_with_live_progress(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("loop", tiny(Labeller::Length)).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    assert_eq!(j.state, JobState::Queued);
    let events = s.watch(&j.id).await;
    let last = events.last().unwrap();
    assert_eq!(last.state, JobState::Done, "{last:?}");
    let phases: Vec<&str> = events.iter().map(|e| e.progress.phase.as_str()).filter(|p| !p.is_empty()).collect();
    assert!(phases.len() >= 2, "progress was streamed: {phases:?}");
    let res = last.result.as_ref().unwrap();
    let generated = res.generate.as_ref().unwrap();
    assert_eq!((generated.round, generated.pairs), (1, 4));
    assert_eq!(res.label.as_ref().unwrap().judge, "length");
    let evaluated = res.evaluate.as_ref().unwrap();
    assert!((0.0..=1.0).contains(&evaluated.win_rate));
    assert_eq!(evaluated.n, 4);
    assert_eq!(res.train.as_ref().unwrap().epoch_losses.len(), 2);
    assert!(res.waiting_for.is_none());

    let stats = s.stats(&p.id).await;
    assert_eq!((stats.rounds, stats.checkpoints, stats.judge_labels), (1, 1, 4));
    // While the policy is the starting model every margin is 0: no over-generation.
    assert_eq!(stats.prompts_unused, 24 - 4);

    // Round 2 is acquired by the trained policy: certainty now has margins to rank.
    let j2 = s.job(&p.id, JobKind::Generate, JobParams { pairs: Some(2), ..Default::default() }).await;
    let end = s.watch(&j2.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Done, "{end:?}");
    assert_eq!(s.stats(&p.id).await.prompts_unused, 20 - 2 * 2, "2 pairs x over_generate 2");
    let pairs: Vec<PairRecord> = s.get(&format!("/api/projects/{}/pairs?round=2", p.id)).await;
    assert_eq!(pairs.len(), 2);
    for q in &pairs {
        assert_eq!(q.acquisition, Some(Acquisition::Certainty));
        let (ra, rb, m) = (q.r_a.unwrap(), q.r_b.unwrap(), q.margin.unwrap());
        assert!((ra - rb - m).abs() < 1e-6);
        assert_eq!(q.target_votes, 0, "oracle rounds do not go to raters");
    }
    // Rounds, checkpoints and evaluations are listed for the dashboard (no server paths).
    let rounds: Vec<RoundRow> = s.get(&format!("/api/projects/{}/rounds", p.id)).await;
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0].pairs, 4);
    assert!(rounds[0].policy_checkpoint.is_none());
    assert!(rounds[1].policy_checkpoint.is_some(), "round 2 came from the trained policy");
    // Whether the checkpoint list leaks paths is a question about the wire: read as text.
    let cks = s.admin().send(Method::GET, &format!("/api/projects/{}/checkpoints", p.id)).await.ok();
    assert!(!cks.text.contains("safetensors"), "{}", cks.text);
    let cks: Vec<CheckpointRow> = cks.json();
    assert_eq!(cks[0].report.epoch_losses.len(), 2);
    assert_eq!(cks[0].report.source, Some(LabelSource::HumanThenJudge));
    let evals: Vec<EvaluationRow> = s.get(&format!("/api/projects/{}/evaluations", p.id)).await;
    assert_eq!(evals[0].checkpoint_id.as_ref(), Some(&cks[0].id));
    assert_eq!(evals[0].details.samples.len(), 4);
    assert_eq!(evals[0].details.win_rate.n, 4);
    // The judge-labelled pairs export as DPO data from the judge source.
    assert!(!s.dpo(&p.id, Some(LabelSource::Judge)).await.is_empty());
}

/// A chat-completions server that prefers the longer continuation (in characters), with the
/// paper's answer format; counts its calls. It speaks the OpenAI wire format, which no `shared`
/// type describes, so it reads and writes `serde_json::Value`.
async fn length_judge_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::Json;
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |Json(body): Json<Value>| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let user = body["messages"][1]["content"].as_str().unwrap_or_default().to_string();
                let text = |label: &str, next: &str| {
                    let start = user.find(label).unwrap() + label.len();
                    let end = user[start..].find(next).unwrap() + start;
                    user[start..end].chars().count()
                };
                let (a, b) = (text("Continuation A: ", "\n\nContinuation B: "), text("Continuation B: ", "\n\nFIRST"));
                let letter = if a >= b { "A" } else { "B" };
                Json(json!({
                    "choices": [{"message": {"role": "assistant",
                        "content": format!("Comparison: {letter} is longer.\nPreferred: {letter}")}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 8}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_labelled_and_evaluated_by_an_llm_judge() {
    let (url, calls) = length_judge_server().await;
    let s = common::start(&Backend::Sqlite, Default::default()).await;
    let mut cfg = tiny(Labeller::Judge);
    cfg.loop_settings.eval.judge = Labeller::Judge;
    cfg.loop_settings.judge = JudgeSettings {
        base_url: url,
        model: "scripted".into(),
        api_key_env: None,
        price_prompt_per_million: 2.0,
        ..Default::default()
    };
    let p = s.project("judged", cfg).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    let last = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Done, "{last:?}");
    let res = last.result.unwrap();
    let label = res.label.unwrap();
    assert_eq!(label.judge, "llm:scripted");
    assert_eq!(label.labelled, 4);
    assert_eq!(label.report.unwrap().totals.calls, 4);
    assert_eq!(res.evaluate.unwrap().judge_report.unwrap().totals.calls, 4);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 8);
    // The judge's labels, un-swapped: every exported chosen text is at least as long.
    let dpo = s.dpo(&p.id, Some(LabelSource::Judge)).await;
    assert_eq!(dpo.len(), 4);
    for row in &dpo {
        assert!(row.chosen.chars().count() >= row.rejected.chars().count(), "{row:?}");
    }
    // Analytics: the judge's labels, the evaluation with its length-controlled rate, the
    // leaderboard, and usage summed from the audit log.
    let a: ProjectAnalytics = s.get(&format!("/api/projects/{}/analytics", p.id)).await;
    assert_eq!(a.judges[0].judge, "llm:scripted");
    assert_eq!(a.judges[0].labels, 4);
    assert_eq!(a.evaluations[0].judge, "llm:scripted");
    assert!(a.evaluations[0].length_controlled.is_some_and(|lc| lc.raw.is_finite()), "{:?}", a.evaluations[0]);
    assert_eq!(a.leaderboard.len(), 2);
    let usage = a.judge_usage.unwrap();
    assert_eq!(usage.calls, 8);
    assert_eq!(usage.prompt_tokens, 400);
    assert!((usage.cost_usd - 400.0 * 2.0 / 1e6).abs() < 1e-12);
    // Bad judge settings are refused by name.
    let mut bad = tiny(Labeller::Judge);
    bad.loop_settings.judge = JudgeSettings { base_url: "ftp://x".into(), model: "m".into(), ..Default::default() };
    let body = apl_shared::NewProject { name: "bad".into(), task: apl_shared::Task::Generic, config: Some(bad) };
    let r = s.admin().send_json(Method::POST, "/api/projects", &body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("judge.base_url"), "{}", r.text);
}

backend_test!(
    online_rounds_train_on_the_newest_pairs_and_keep_the_optimiser,
    flavor = "multi_thread",
    worker_threads = 2
);
async fn online_rounds_train_on_the_newest_pairs_and_keep_the_optimiser(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let mut config = tiny(Labeller::Length);
    config.loop_settings.mode = Mode::Online;
    let p = s.project("online", config).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    let trained = |j: &Job| j.result.as_ref().and_then(|r| r.train.clone()).expect("a train stage");
    let first = s.wait(&s.job(&p.id, JobKind::Round, JobParams::default()).await.id).await;
    assert_eq!(first.state, JobState::Done, "{first:?}");
    let t1 = trained(&first);
    assert_eq!(t1.epoch_losses.len(), 1, "online: one pass");
    // The optimiser's state is kept beside the checkpoint, for the next round to go on from.
    let dir = s.dir.path().join("checkpoints").join(&p.id);
    assert!(dir.join(format!("{}.adam.safetensors", t1.checkpoint)).exists());
    let second =
        s.wait(&s.job(&p.id, JobKind::Round, JobParams { pairs: Some(2), ..Default::default() }).await.id).await;
    assert_eq!(second.state, JobState::Done, "{second:?}");
    let (t2, labelled) = (trained(&second), second.result.as_ref().unwrap().label.clone().unwrap());
    // Only the newest round's decided pairs; the first round's are not trained on again.
    assert_eq!(t2.pairs, labelled.labelled - labelled.undecided);
    assert!(t2.pairs <= 2, "not the first round's {} again", t1.pairs);
    assert!(dir.join(format!("{}.adam.safetensors", t2.checkpoint)).exists());
}

backend_test!(rater_rounds_wait_for_labels_and_jobs_can_be_cancelled, flavor = "multi_thread", worker_threads = 2);
async fn rater_rounds_wait_for_labels_and_jobs_can_be_cancelled(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("humans", tiny(Labeller::Raters)).await;
    prompts(&s, &p.id, Split::Train, 8).await;
    let params = JobParams { pairs: Some(2), acquisition: Some(Acquisition::Random), ..Default::default() };
    let j = s.job(&p.id, JobKind::Round, params).await;
    let end = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Done, "{end:?}");
    let res = end.result.unwrap();
    assert!(res.waiting_for.unwrap().contains("raters"));
    assert_eq!(res.generate.unwrap().acquisition, Acquisition::Random);
    assert!(res.label.is_none() && res.train.is_none() && res.evaluate.is_none());
    let pairs: Vec<PairRecord> = s.get(&format!("/api/projects/{}/pairs", p.id)).await;
    assert!(pairs.iter().all(|q| q.target_votes == 2));
    // Training before any label fails with its reason.
    let t = s.job(&p.id, JobKind::Train, JobParams::default()).await;
    let end = s.watch(&t.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Failed);
    assert!(end.error.as_deref().unwrap().contains("no labelled pairs"), "{end:?}");
    // A rater labels a pair; the raters' pairs can now train.
    let ann = s.rater(&p.id, "ann").await;
    let a = s.next(&ann).await.unwrap();
    s.label(&ann, &a.pair, RaterChoice::Left).await.ok();
    let t = s.job(&p.id, JobKind::Train, JobParams::default()).await;
    let end = s.watch(&t.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Done, "{end:?}");
    assert_eq!(end.result.unwrap().train.unwrap().pairs, 1);

    // Evaluation without eval prompts fails clearly; a queued job can be cancelled.
    let e = s.job(&p.id, JobKind::Evaluate, JobParams::default()).await;
    let end = s.watch(&e.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Failed);
    assert!(end.error.as_deref().unwrap().contains("evaluation prompts"), "{end:?}");
    let stopped = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
    let q: Project = stopped.project("queued", tiny(Labeller::Length)).await;
    let j = stopped.job(&q.id, JobKind::Generate, JobParams::default()).await;
    let c: Job = stopped.admin().post_empty(&format!("/api/jobs/{}/cancel", j.id)).await;
    assert_eq!(c.state, JobState::Cancelled);
    let again = stopped.admin().send(Method::POST, &format!("/api/jobs/{}/cancel", j.id)).await;
    assert_eq!(again.status, 409);
    let listed: Vec<Job> = stopped.get(&format!("/api/projects/{}/jobs", q.id)).await;
    assert_eq!(listed.len(), 1);
}

// Auto-continue (the default for human-rater projects): once two raters have labelled the
// whole round, the server itself trains on their labels, evaluates and acquires the next round
// with the new policy, with no admin action; the raters find the new pairs. It happens once.
backend_test!(human_rounds_go_on_by_themselves_once_labelled, flavor = "multi_thread", worker_threads = 2);
async fn human_rounds_go_on_by_themselves_once_labelled(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    // One vote a pair, so every labelled pair is a preference (two raters picking "left" on
    // randomised sides could tie).
    let mut cfg = tiny(Labeller::Raters);
    cfg.rating.overlap = 1;
    let p = s.project("auto", cfg).await;
    assert!(p.config.rating.auto_continue.enabled, "on by default");
    // Enough prompts for three rounds (2, then 4 and 4 pairs, certainty scoring two each).
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    let cycle_path = format!("/api/projects/{}/cycle", p.id);
    let c: Cycle = s.get(&cycle_path).await;
    assert_eq!((c.round, c.step, c.next.map(|n| n.kind)), (None, None, Some(JobKind::Round)), "before the first round");
    let params = JobParams { pairs: Some(2), acquisition: Some(Acquisition::Random), ..Default::default() };
    let j = s.job(&p.id, JobKind::Round, params).await;
    let first = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(first.state, JobState::Done, "{first:?}");
    let round = first.result.unwrap().generate.unwrap().round;

    // Ann labels one pair: half the round is not enough to go on. Ben labels the rest.
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
    let a = s.next(&ann).await.unwrap();
    s.label(&ann, &a.pair, RaterChoice::Left).await.ok();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", p.id)).await;
    assert!(jobs.iter().all(|j| j.kind != JobKind::Continue), "went on with half the round labelled");
    // The stepper's view: the round is with the raters, one of two pairs complete, Ann active.
    let c: Cycle = s.get(&cycle_path).await;
    assert_eq!((c.round, c.step, c.job.as_ref()), (Some(round), Some(CycleStep::Labelling), None), "{c:?}");
    let r = c.raters.expect("raters' progress");
    assert_eq!((r.pairs, r.complete, r.needed, r.votes_per_pair), (2, 1, 2, 1), "{r:?}");
    assert_eq!(r.pairs_by_votes, vec![1, 1]);
    assert_eq!(r.active, vec![ActiveRater { name: "ann".into(), labels: 1 }]);
    assert!(r.auto_continue && r.labels_per_minute > 0.0, "{r:?}");
    // One vote left at Ann's pace of one label in (at least) half a minute.
    assert!(r.eta_minutes.is_some_and(|m| m > 0.0 && m <= 1.0), "{r:?}");
    assert_eq!(c.next.map(|n| n.kind), Some(JobKind::Continue), "going on early is the admin's next action");
    let mut labelled = 1;
    while let Some(b) = s.next(&ben).await {
        s.label(&ben, &b.pair, RaterChoice::Right).await.ok();
        labelled += 1;
    }
    assert_eq!(labelled, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let cont = loop {
        let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", p.id)).await;
        if let Some(j) = jobs.into_iter().find(|j| j.kind == JobKind::Continue) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "no continue job after the round was labelled");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(cont.params.after_round, Some(round));
    let end = s.watch(&cont.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Done, "{end:?}");
    let res = end.result.unwrap();
    assert_eq!(res.train.as_ref().unwrap().pairs, 2);
    assert!(res.evaluate.is_some());
    let next = res.generate.unwrap();
    assert_eq!((next.round, next.pairs), (round + 1, 4));
    assert!(res.waiting_for.unwrap().contains("raters"));
    // One estimate for the whole job: its stages in order, each timed (kept for the next one).
    assert_eq!(end.progress.stages, vec![JobKind::Train, JobKind::Evaluate, JobKind::Generate]);
    assert_eq!(end.progress.stage_seconds.len(), 3, "{:?}", end.progress);
    assert!(end.progress.stage_seconds.iter().all(Option::is_some), "each stage did its work: {:?}", end.progress);
    assert_eq!((end.progress.stage, end.progress.fraction), (3, 1.0));
    let c: Cycle = s.get(&cycle_path).await;
    assert_eq!((c.round, c.step), (Some(round + 1), Some(CycleStep::Labelling)), "{c:?}");
    assert_eq!(c.raters.as_ref().map(|r| (r.pairs, r.complete)), Some((4, 0)));
    assert_eq!(c.next, None, "nothing to do but label: {c:?}");
    let cks: Vec<CheckpointRow> = s.get(&format!("/api/projects/{}/checkpoints", p.id)).await;
    assert_eq!(cks.iter().map(|c| c.round).collect::<Vec<_>>(), vec![round]);
    let evals: Vec<EvaluationRow> = s.get(&format!("/api/projects/{}/evaluations", p.id)).await;
    assert_eq!(evals.len(), 1);
    // The raters find the next round's pairs without anyone starting it.
    let a = s.next(&ann).await.expect("the next round is there");
    let pairs: Vec<PairRecord> = s.get(&format!("/api/projects/{}/pairs", p.id)).await;
    assert_eq!(pairs.iter().find(|q| q.id == a.pair).unwrap().round, Some(round + 1));
    // And it went on once: no second continue for the same round.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", p.id)).await;
    assert_eq!(jobs.iter().filter(|j| j.kind == JobKind::Continue).count(), 1);

    s.label(&ann, &a.pair, RaterChoice::Left).await.ok();
    // Long training from now on, so the next continue is surely still running when cancelled.
    let mut slow = p.config.clone();
    slow.loop_settings.train.epochs = 2000;
    s.store.set_project_config(&p.id, &slow).await.unwrap();
    // Round 2 labelled: it goes on again; an admin who cancels that continue stops the cycle
    // there (it is not queued again behind their back).
    while let Some(b) = s.next(&ben).await {
        s.label(&ben, &b.pair, RaterChoice::Right).await.ok();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let second = loop {
        let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", p.id)).await;
        if let Some(j) =
            jobs.into_iter().find(|j| j.kind == JobKind::Continue && j.params.after_round == Some(round + 1))
        {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "no continue job after round 2 was labelled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // While it trains: the stepper says so, and the time left covers every stage, each timed by
    // the first continue.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let training = loop {
        let j: Job = s.get(&format!("/api/jobs/{}", second.id)).await;
        if j.progress.phase == "training" && j.progress.step > 0 {
            break j.progress;
        }
        assert!(std::time::Instant::now() < deadline, "the second continue did not train: {j:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(training.eta_complete && training.eta_seconds.is_some_and(|e| e > 0.0), "{training:?}");
    assert!(training.fraction > 0.0 && training.fraction < 1.0, "{training:?}");
    let c: Cycle = s.get(&cycle_path).await;
    assert_eq!((c.step, c.job.as_deref()), (Some(CycleStep::Training), Some(second.id.as_str())), "{c:?}");
    // A rater with nothing left is told the next batch is being prepared, and to ask soon.
    let why = |t: String| {
        let s = &s;
        async move { s.with_token(&t).send(Method::POST, "/api/rate/next").await.ok().json::<NextPair>() }
    };
    let n = why(ann.clone()).await;
    assert_eq!((n.status, n.retry_after_seconds), (NextStatus::NothingYet, Some(5)), "{n:?}");
    let cancel = s.admin().send(Method::POST, &format!("/api/jobs/{}/cancel", second.id)).await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let end = s.watch(&second.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Cancelled, "{end:?}");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", p.id)).await;
    let again: Vec<&Job> = jobs.iter().filter(|j| j.params.after_round == Some(round + 1)).collect();
    assert_eq!(again.len(), 1, "a cancelled continue was queued again: {again:?}");
    // The round is labelled but its continue was cancelled: nothing comes by itself now, so
    // raters are not told a batch is on its way; the stepper says why and offers to go on.
    let n = why(ann.clone()).await;
    assert_eq!((n.status, n.retry_after_seconds), (NextStatus::Done, None), "{n:?}");
    let c: Cycle = s.get(&cycle_path).await;
    assert_eq!((c.round, c.step), (Some(round + 1), Some(CycleStep::Labelling)), "{c:?}");
    assert!(c.note.as_deref().is_some_and(|n| n.contains("auto-continue stopped")), "{c:?}");
    assert_eq!(c.next.map(|n| n.kind), Some(JobKind::Continue));
}

backend_test!(jobs_left_running_by_a_dead_server_are_resumed_then_failed);
async fn jobs_left_running_by_a_dead_server_are_resumed_then_failed(b: Backend) {
    let s = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
    let p = s.project("orphans", tiny(Labeller::Length)).await;
    let j = s.job(&p.id, JobKind::Generate, JobParams::default()).await;
    for attempt in 1..=MAX_ATTEMPTS {
        // A server takes the job and dies (its heartbeat stops).
        let taken = s.store.claim_job("dead-server").await.unwrap().unwrap();
        assert_eq!(taken.id, j.id);
        assert_eq!(taken.attempts, attempt);
        assert_eq!(s.store.recover_jobs(0).await.unwrap(), 1);
        let now: Job = s.get(&format!("/api/jobs/{}", j.id)).await;
        if attempt < MAX_ATTEMPTS {
            assert_eq!(now.state, JobState::Queued);
            assert!(now.progress.message.contains("restart"), "{now:?}");
        } else {
            assert_eq!(now.state, JobState::Failed);
            assert!(now.error.as_deref().unwrap().contains("stopped while running"), "{now:?}");
        }
    }
    // A live heartbeat keeps a job its owner's.
    let j = s.job(&p.id, JobKind::Generate, JobParams::default()).await;
    s.store.claim_job("alive").await.unwrap().unwrap();
    assert_eq!(s.store.recover_jobs(60_000).await.unwrap(), 0);
    let now: Job = s.get(&format!("/api/jobs/{}", j.id)).await;
    assert_eq!(now.state, JobState::Running);
}

/// What the dashboard's paired table relies on: projects with one model, seed and evaluation
/// prompts judge their checkpoints against the same starting-model samples, so their
/// evaluations pair prompt by prompt (`apl_shared::paired::matched`); another seed's do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_with_one_seed_pair_their_evaluations() {
    use apl_shared::paired;
    let s = common::start(&Backend::Sqlite, Default::default()).await;
    let mut ids = Vec::new();
    for (name, acquisition, seed) in [
        ("certainty", Acquisition::Certainty, 0),
        ("random", Acquisition::Random, 0),
        ("other seed", Acquisition::Random, 5),
    ] {
        let mut cfg = tiny(Labeller::Length);
        cfg.loop_settings.acquisition = acquisition;
        cfg.loop_settings.seed = seed;
        cfg.loop_settings.eval.prompts = 8;
        let p = s.project(name, cfg).await;
        prompts(&s, &p.id, Split::Train, 24).await;
        prompts(&s, &p.id, Split::Eval, 8).await;
        let done = s.wait(&s.job(&p.id, JobKind::Round, JobParams::default()).await.id).await;
        assert_eq!(done.state, JobState::Done, "{done:?}");
        ids.push(p.id);
    }
    let evals = |id: String| {
        let s = &s;
        async move {
            let e: Vec<EvaluationRow> = s.get(&format!("/api/projects/{id}/evaluations")).await;
            assert_eq!(e.len(), 1);
            e.into_iter().next().unwrap()
        }
    };
    let (cert, random, other) = (evals(ids[0].clone()).await, evals(ids[1].clone()).await, evals(ids[2].clone()).await);
    let m = paired::matched(&cert.details.samples, &random.details.samples);
    assert_eq!(m.arm.len(), 8, "every prompt has the same baseline sample in both projects");
    let d = paired::paired_difference(&[m], &paired::resamples(&[8], 200, 0)).unwrap();
    let expected = cert.win_rate - random.win_rate;
    assert!((d.estimate - expected).abs() < 1e-9, "{d:?} vs {expected}");
    assert!(d.lo <= d.estimate && d.estimate <= d.hi);
    assert!(
        paired::matched(&cert.details.samples, &other.details.samples).arm.is_empty(),
        "another seed's baseline differs"
    );
}

/// A project whose sampling and scoring run on a model server (`loop_settings.backend`): the
/// round's acquisition, reference log-probs and evaluation are asked of it; the trained
/// checkpoint is served as its PEFT adapter, loaded once under a name from the checkpoint and
/// its content; the next round acquires with it there. A server that fails the prompt
/// log-probs probe fails the job, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_sample_and_score_on_a_model_server() {
    use apl_shared::settings::{Backend as ModelBackend, RemoteBackend, ServerKind, Trainable};
    let (url, mock) = model_server::start_with(Default::default(), Some(model_server::llama())).await;
    let s = common::start(&Backend::Sqlite, Default::default()).await;
    let remote = |url: &str, server| {
        ModelBackend::Remote(RemoteBackend {
            base_url: url.to_string(),
            model: "base".into(),
            server,
            timeout_seconds: 10.0,
            backoff_seconds: 0.01,
            ..Default::default()
        })
    };
    let mut cfg = tiny(Labeller::Length);
    cfg.loop_settings.trainable =
        Trainable::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    cfg.loop_settings.backend = remote(&url, ServerKind::Vllm);
    let p = s.project("served", cfg.clone()).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    for round in 1..=2 {
        let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
        let last = s.watch(&j.id).await.pop().unwrap();
        assert_eq!(last.state, JobState::Done, "round {round}: {last:?}");
    }
    let checkpoints: Vec<CheckpointRow> = s.get(&format!("/api/projects/{}/checkpoints", p.id)).await;
    assert_eq!(checkpoints.len(), 2);
    let adapters = mock.adapters.lock().unwrap().clone();
    // Round 1's checkpoint (evaluated, then acquiring round 2) and round 2's (evaluated).
    assert_eq!(adapters.len(), 2, "{adapters:?}");
    let first = checkpoints.iter().map(|c| c.id.clone()).find(|id| adapters[0].0.starts_with(&format!("apl-{id}-")));
    assert!(first.is_some(), "{adapters:?} {checkpoints:?}");
    assert!(adapters[0].1.ends_with(".peft"), "the adapter beside its checkpoint: {}", adapters[0].1);
    let bodies = mock.bodies.lock().unwrap().clone();
    let sampled_by = |model: &str| bodies.iter().filter(|b| b["model"] == model && b["n"].is_u64()).count();
    assert!(sampled_by("base") > 0 && sampled_by(&adapters[0].0) > 0, "base and trained policy sampled there");
    assert!(bodies.iter().any(|b| b["model"] == "base" && b["prompt_logprobs"].is_u64()), "reference scored there");

    // A server whose echo is one position late fails the round, naming the problem.
    let (bad, _m) = model_server::start(model_server::Faults { shifted: true, ..Default::default() }).await;
    cfg.loop_settings.backend = remote(&bad, ServerKind::LlamaCppPython);
    let p = s.project("late", cfg).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    let j = s.job(&p.id, JobKind::Generate, JobParams::default()).await;
    let last = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Failed);
    assert!(last.error.as_deref().unwrap_or_default().contains("issue #1983"), "{last:?}");
}

/// A project trained by an operator's trainer command (`apl serve --trainer-commands`, TRL in
/// practice; here a stand-in that logs two steps and writes the committed PEFT fixture): the
/// round's checkpoint is its adapter, its loss curve the command's log. A name the operator
/// did not list fails the job, saying which names there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_trainer_command_trains_the_round() {
    use apl_shared::settings::{Trainable, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("trainer.sh");
    let adapter = common::root().join("engine/tests/fixtures/llama-peft");
    std::fs::write(
        &script,
        format!(
            "set -e\ndata=$1; out=$2\nrows=$(wc -l < \"$data/train.jsonl\")\n\
             echo \"{{'loss': 0.6928, 'rewards/accuracies': 0.5, 'epoch': 1.0}}\"\n\
             echo \"{{'loss': 0.5, 'rewards/accuracies': 1.0, 'epoch': 2.0}}\"\n\
             mkdir -p \"$out\"; cp '{0}/adapter_config.json' '{0}/adapter_model.safetensors' \"$out\"/\n\
             echo $rows > \"$out/rows\"\n",
            adapter.display()
        ),
    )
    .unwrap();
    let commands = [("stand-in".to_string(), format!("sh '{}' {{data}} {{out}}", script.display()))].into();
    let s = common::start(&Backend::Sqlite, common::Options { trainer_commands: commands, ..Default::default() }).await;
    let mut cfg = tiny(Labeller::Length);
    cfg.loop_settings.trainable =
        Trainable::Lora { rank: 4, alpha: 8.0, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    cfg.loop_settings.trainer = Trainer::Command { name: "stand-in".into() };
    let p = s.project("trained elsewhere", cfg.clone()).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    prompts(&s, &p.id, Split::Eval, 4).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    let last = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Done, "{last:?}");
    let checkpoints: Vec<CheckpointRow> = s.get(&format!("/api/projects/{}/checkpoints", p.id)).await;
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].report.loss_curve, vec![0.6928, 0.5]);
    assert_eq!(checkpoints[0].report.epoch_losses, vec![0.6928, 0.5]);
    assert_eq!(checkpoints[0].pairs, 4);
    let work = s.dir.path().join("trainer").join(&p.id).join(&checkpoints[0].id);
    assert_eq!(std::fs::read_to_string(work.join("adapter/rows")).unwrap().trim(), "4", "every labelled pair");

    cfg.loop_settings.trainer = Trainer::Command { name: "rm -rf /".into() };
    let p = s.project("unlisted", cfg).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    let last = s.watch(&j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Failed);
    let e = last.error.unwrap_or_default();
    assert!(e.contains("no trainer command \"rm -rf /\"") && e.contains("it has: stand-in"), "{e}");
}

/// Cancelling a job whose trainer command is running stops the command and what it started
/// (its process group), not only the job's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_round_stops_its_trainer_command() {
    use apl_shared::settings::{Trainable, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let script = dir.path().join("slow.sh");
    // A child that outlives a plain kill of the shell: only the group's signal reaches it.
    std::fs::write(&script, format!("sleep 120 &\necho $! > '{}'\nwait\n", marker.display())).unwrap();
    let commands = [("slow".to_string(), format!("sh '{}' {{data}}", script.display()))].into();
    let s = common::start(&Backend::Sqlite, common::Options { trainer_commands: commands, ..Default::default() }).await;
    let mut cfg = tiny(Labeller::Length);
    cfg.loop_settings.trainable = Trainable::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into()] };
    cfg.loop_settings.trainer = Trainer::Command { name: "slow".into() };
    let p = s.project("slow", cfg).await;
    prompts(&s, &p.id, Split::Train, 24).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    let t = std::time::Instant::now();
    while !marker.exists() {
        assert!(t.elapsed().as_secs() < 60, "the trainer command never started");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = std::fs::read_to_string(&marker).unwrap().trim().to_string();
    let _: Job = s.admin().post_empty(&format!("/api/jobs/{}/cancel", j.id)).await;
    // Running, not a zombie left for an init that does not reap (some containers').
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| st.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let t = std::time::Instant::now();
    while alive() && t.elapsed().as_secs() < 15 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!alive(), "the trainer's child {pid} outlived the cancelled job");
}
