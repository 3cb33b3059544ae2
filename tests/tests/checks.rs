//! Human win-rate checks over HTTP, on SQLite and (when configured) PostgreSQL: an evaluation's
//! samples go to the chosen raters only, before their other pairs, blind and with sides
//! randomised; the panel's figures match values computed by hand from the labels given, undo
//! takes them back, requests are validated field by field, and check pairs never leak into
//! training data (pair list, stats, exports, the label job).

mod common;

use apl_shared::settings::{EvalSettings, LoopSettings};
use apl_shared::{
    Assignment, CheckPair, EvalSample, EvaluationDetails, EvaluationRow, HumanCheck, JobKind, JobParams, JobState,
    LabelSource, Labeller, NewHumanCheck, Outcome, PairRecord, ProjectConfig, RateInterval, RaterChoice, RaterHome,
    RaterProgress, RatingConfig, Split, WinRate,
};
use common::{Backend, Server, typed};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;

fn cfg(overlap: u32) -> ProjectConfig {
    ProjectConfig {
        rating: RatingConfig {
            overlap,
            gold_rate: 0.0,
            lease_seconds: 600,
            guidelines: "Pick the better one.".into(),
            ..Default::default()
        },
        loop_settings: LoopSettings {
            labeller: Labeller::Length,
            completion_tokens: (3, 5),
            eval: EvalSettings { prompts: 4, judge: Labeller::Length, batch_size: 4, ..Default::default() },
            ..Default::default()
        },
    }
}

/// A rater's (id, token).
async fn rater(s: &Server, project: &str, name: &str) -> (String, String) {
    let invite = s.invite(project, name).await;
    (invite.rater.id, invite.token)
}

async fn eval_prompts(s: &Server, project: &str, n: usize) {
    let texts: Vec<String> = (0..n).map(|i| format!("eval prompt {i}")).collect();
    s.prompts(project, Split::Eval, &texts).await;
}

/// The evaluation sample an assignment shows ("policy N" on one side), if it is a check pair.
fn sample_of(a: &Assignment) -> Option<usize> {
    [&a.left, &a.right].iter().find_map(|text| text.strip_prefix("policy ")?.parse().ok())
}

/// What a rater says about a check pair: an outcome for the policy (answered on the side the
/// policy's text is shown), or an answer that names no side.
#[derive(Debug, Clone, Copy)]
enum Says {
    Policy(Outcome),
    Plain(RaterChoice),
}

/// The rater's answer on `a` for what they say.
fn answer(a: &Assignment, says: Says) -> RaterChoice {
    let policy_left = a.left.starts_with("policy ");
    match says {
        Says::Policy(Outcome::Win) if policy_left => RaterChoice::Left,
        Says::Policy(Outcome::Win) => RaterChoice::Right,
        Says::Policy(Outcome::Loss) if policy_left => RaterChoice::Right,
        Says::Policy(Outcome::Loss) => RaterChoice::Left,
        Says::Policy(Outcome::Tie) => RaterChoice::Tie,
        Says::Plain(choice) => choice,
    }
}

/// An evaluation of the starting model stored as the evaluate job stores one: sample 0 records
/// its prompt's id, samples 1 and 2 only their text, sample 3's prompt was never imported.
async fn stored_evaluation(s: &Server, project: &str) -> String {
    let prompts = s.store.prompts(project, Split::Eval, false, 10).await.unwrap();
    let outcomes = [Outcome::Win, Outcome::Loss, Outcome::Tie, Outcome::Win];
    let samples: Vec<EvalSample> = (0..4)
        .map(|i| EvalSample {
            prompt_id: if i == 0 { prompts.first().map(|p| p.id.clone()) } else { None },
            prompt: if i < 3 { format!("eval prompt {i}") } else { "a prompt nobody imported".to_string() },
            policy: format!("policy {i}"),
            baseline: format!("baseline {i}"),
            outcome: Some(outcomes[i]),
        })
        .collect();
    let e = EvaluationRow {
        id: format!("eval-{project}"),
        checkpoint_id: None,
        judge: "length".into(),
        baseline: "reference samples".into(),
        win_rate: 0.625,
        stderr: 0.24,
        n: 4,
        details: EvaluationDetails {
            win_rate: WinRate { win_rate: 0.625, stderr: 0.24, n: 4, wins: 2, ties: 1, losses: 1 },
            samples,
        },
        created_at: 1,
    };
    s.store.add_evaluation(project, &e).await.unwrap();
    e.id
}

fn close(x: Option<f64>, want: f64) -> bool {
    x.is_some_and(|v| (v - want).abs() < 1e-12)
}

#[track_caller]
fn assert_rate(r: Option<RateInterval>, rate: f64, n: usize) {
    let r = r.unwrap_or_else(|| panic!("no rate, expected {rate}"));
    assert!(close(Some(r.rate), rate), "rate {r:?} != {rate}");
    assert_eq!(r.n, n, "{r:?}");
    assert!((0.0..=rate).contains(&r.low) && (rate..=1.0).contains(&r.high), "{r:?}");
}

async fn progress(s: &Server, token: &str) -> RaterProgress {
    s.with_token(token).get::<RaterHome>("/api/rate/me").await.progress
}

async fn checks(s: &Server, project: &str) -> Vec<HumanCheck> {
    s.get(&format!("/api/projects/{project}/checks")).await
}

backend_test!(
    a_check_goes_to_its_raters_first_and_reports_humans_beside_the_judge,
    flavor = "multi_thread",
    worker_threads = 2
);
async fn a_check_goes_to_its_raters_first_and_reports_humans_beside_the_judge(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("check", cfg(3)).await;
    eval_prompts(&s, &p.id, 4).await;
    let eval = stored_evaluation(&s, &p.id).await;
    assert_eq!(s.trl_pairs(&p.id, 2, "rate=true").await.imported, 2);
    let (ann_id, ann) = rater(&s, &p.id, "ann").await;
    let (ben_id, ben) = rater(&s, &p.id, "ben").await;
    let (_, cy) = rater(&s, &p.id, "cy").await;

    let body = NewHumanCheck {
        evaluation: eval.clone(),
        raters: vec![ben_id.clone(), ann_id.clone()],
        overlap: Some(2),
        pairs: None,
    };
    let c: HumanCheck =
        s.admin().send_json(Method::POST, &format!("/api/projects/{}/checks", p.id), &body).await.expect(201);
    let check = c.id.clone();
    assert_eq!(c.evaluation, eval);
    assert!(c.checkpoint.is_none());
    assert_eq!(c.judge, "length");
    assert_eq!(c.raters, [ann_id.clone(), ben_id.clone()], "in the order they joined");
    assert_eq!((c.overlap, c.pairs), (2, 4));
    assert_eq!((c.votes, c.target_votes), (0, 8));
    assert!(c.human.is_none() && c.judge_rate.is_none() && c.agreement.is_none() && c.kappa.is_none());

    // Prompts: sample 0 by its recorded id, 1 and 2 by text, 3 as a new evaluation prompt.
    let rows = sqlx::query(
        "SELECT p.prompt_id, pr.split, pr.source FROM check_pairs c JOIN pairs p ON p.id = c.pair_id \
         JOIN prompts pr ON pr.id = p.prompt_id WHERE c.check_id = $1 ORDER BY c.sample",
    )
    .bind(&check)
    .fetch_all(&s.store.pool)
    .await
    .unwrap();
    let imported = s.store.prompts(&p.id, Split::Eval, false, 10).await.unwrap();
    let got: Vec<(String, Split, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    for i in 0..3 {
        assert_eq!(got[i].0, imported[i].id, "sample {i}");
    }
    assert_eq!((got[3].1, got[3].2.as_str()), (Split::Eval, "check"));

    // Progress counts the check pairs only for its raters.
    assert_eq!(progress(&s, &ann).await, RaterProgress { done: 0, target: 6, at_least: false });
    assert_eq!(progress(&s, &ben).await, RaterProgress { done: 0, target: 6, at_least: false });
    assert_eq!(progress(&s, &cy).await, RaterProgress { done: 0, target: 2, at_least: false });

    // Cy is not in the check: only training pairs, never a check pair.
    let mut cy_pairs = 0;
    while let Some(a) = s.next(&cy).await {
        assert!(sample_of(&a).is_none() && a.prompt.starts_with("Prompt "), "{a:?}");
        s.label(&cy, &a.pair, RaterChoice::Left).await.ok();
        cy_pairs += 1;
    }
    assert_eq!(cy_pairs, 2);

    // Ann and ben get the check's pairs first (sides at random), then the training pairs.
    // Ann: win, win, tie, loss. Ben: win, loss, both_bad, skip.
    use Says::{Plain, Policy};
    let plans = [
        (&ann, [Policy(Outcome::Win), Policy(Outcome::Win), Policy(Outcome::Tie), Policy(Outcome::Loss)]),
        (&ben, [Policy(Outcome::Win), Policy(Outcome::Loss), Plain(RaterChoice::BothBad), Plain(RaterChoice::Skip)]),
    ];
    let mut ben_s1 = String::new();
    for (token, plan) in plans {
        let mut seen = Vec::new();
        while let Some(a) = s.next(token).await {
            match sample_of(&a) {
                Some(i) => {
                    assert!(seen.iter().all(Option::is_some), "a check pair after a training pair");
                    let prompt = if i < 3 { format!("eval prompt {i}") } else { "a prompt nobody imported".into() };
                    assert_eq!(a.prompt, prompt);
                    if token == &ben && i == 1 {
                        ben_s1 = a.pair.clone();
                    }
                    s.label(token, &a.pair, answer(&a, plan[i])).await.ok();
                }
                None => {
                    s.label(token, &a.pair, RaterChoice::Left).await.ok();
                }
            }
            seen.push(sample_of(&a));
        }
        let mut samples: Vec<usize> = seen.iter().flatten().copied().collect();
        samples.sort();
        assert_eq!(samples, [0, 1, 2, 3]);
        assert_eq!(seen.len(), 6, "four check pairs then two training pairs: {seen:?}");
    }
    assert!(!ben_s1.is_empty());
    assert_eq!(progress(&s, &ann).await, RaterProgress { done: 6, target: 6, at_least: false });
    assert_eq!(
        progress(&s, &ben).await,
        RaterProgress { done: 5, target: 5, at_least: false },
        "his skip is neither done nor open"
    );

    // By hand, pair scores are s0 (1+1)/2 = 1, s1 (1+0)/2 = 1/2, s2 (1/2+1/2)/2 = 1/2,
    // s3 0 (ann's loss; ben's skip does not count). Human rate 2/4 = 0.5; the judge's on the
    // same pairs (1 + 0 + 1/2 + 1)/4 = 0.625. Majorities win, tie, tie, loss against the
    // judge's win, loss, tie, win: agreement 2/4. Kappa: p_o = 1/2, p_e = (1/4)(2/4) [win] +
    // (2/4)(1/4) [tie] + (1/4)(1/4) [loss] = 5/16, kappa = (8/16 - 5/16)/(11/16) = 3/11.
    let full = checks(&s, &p.id).await;
    assert_eq!(full.len(), 1);
    let c = &full[0];
    assert_eq!((c.votes, c.target_votes), (7, 8));
    assert_rate(c.human, 0.5, 4);
    assert_rate(c.judge_rate, 0.625, 4);
    assert!(close(c.agreement, 0.5), "{c:?}");
    assert!(close(c.kappa, 3.0 / 11.0), "{c:?}");
    assert_eq!(checks(&s, &p.id).await, full, "the same figures on every load");

    // The side-by-side view: sample order, texts unshuffled, votes as outcomes for the policy.
    let pairs: Vec<CheckPair> = s.get(&format!("/api/checks/{check}/pairs")).await;
    assert_eq!(pairs.len(), 4);
    assert_eq!(pairs[0].prompt, "eval prompt 0");
    assert_eq!((pairs[0].policy.as_str(), pairs[0].baseline.as_str()), ("policy 0", "baseline 0"));
    let judges: Vec<Outcome> = pairs.iter().map(|q| q.judge).collect();
    assert_eq!(judges, [Outcome::Win, Outcome::Loss, Outcome::Tie, Outcome::Win]);
    let mut human: Vec<Vec<Outcome>> = pairs.iter().map(|q| q.human.clone()).collect();
    human.iter_mut().for_each(|h| h.sort());
    assert_eq!(
        human,
        [
            vec![Outcome::Win, Outcome::Win],
            vec![Outcome::Win, Outcome::Loss],
            vec![Outcome::Tie, Outcome::Tie],
            vec![Outcome::Loss]
        ]
    );
    assert_eq!(pairs[1].pair, ben_s1);

    // Ben undoes his loss on s1: s1 scores 1 (a win against the judge's loss). Human
    // (1 + 1 + 1/2 + 0)/4 = 0.625, judge unchanged 0.625, agreement still 2/4 (s0, s2);
    // kappa: majorities win, win, tie, loss vs win, loss, tie, win: p_o = 1/2,
    // p_e = (2/4)(2/4) + (1/4)(1/4) + (1/4)(1/4) = 6/16, kappa = (8 - 6)/(16 - 6) = 0.2.
    let back: Assignment = s.with_token(&ben).delete(&format!("/api/rate/labels/{ben_s1}")).await;
    let undone = checks(&s, &p.id).await;
    let c = &undone[0];
    assert_eq!(c.votes, 6);
    assert_rate(c.human, 0.625, 4);
    assert_rate(c.judge_rate, 0.625, 4);
    assert!(close(c.agreement, 0.5) && close(c.kappa, 0.2), "{c:?}");
    // The pair comes back to ben with the same sides; his loss again restores every figure.
    assert_eq!(s.next(&ben).await.unwrap().pair, ben_s1);
    s.label(&ben, &ben_s1, answer(&back, Policy(Outcome::Loss))).await.ok();
    assert_eq!(checks(&s, &p.id).await, full);

    // None of it is training data: not listed, not counted, not exported, not judged.
    let listed: Vec<PairRecord> = s.get(&format!("/api/projects/{}/pairs", p.id)).await;
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|q| !q.completion_a.starts_with("policy ") && !q.completion_b.starts_with("policy ")),
        "{listed:?}"
    );
    let stats = s.stats(&p.id).await;
    assert_eq!((stats.pairs, stats.labels), (2, 6));
    assert_eq!(stats.prompts_eval, 5, "one prompt was added for sample 3");
    for source in [LabelSource::Human, LabelSource::Judge, LabelSource::HumanThenJudge] {
        let dpo = s.dpo(&p.id, Some(source)).await;
        assert_eq!(dpo.len(), 2, "{source}: {dpo:?}");
        for row in &dpo {
            let texts = [&row.prompt, &row.chosen, &row.rejected];
            assert!(texts.iter().all(|t| !t.contains("policy ") && !t.contains("eval prompt")), "{source}: {row:?}");
        }
    }
    let votes = s.votes(&p.id).await;
    assert_eq!(votes.len(), 6, "three raters on two training pairs");
    assert!(votes.iter().all(|v| v.pair_id != ben_s1));
    let j = s.job(&p.id, JobKind::Label, JobParams::default()).await;
    let done = s.wait(&j.id).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.result.as_ref().and_then(|r| r.label.as_ref()).map(|l| l.labelled), Some(2), "{done:?}");
    let judged: i64 = sqlx::query(
        "SELECT COUNT(*) FROM judge_labels j JOIN pairs p ON p.id = j.pair_id WHERE p.check_id IS NOT NULL",
    )
    .fetch_one(&s.store.pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(judged, 0);
}

backend_test!(check_requests_are_validated_field_by_field);
/// The refused bodies are built from `NewHumanCheck` where it can express the mistake (a
/// value out of range); the one it cannot (an unknown field) is written as JSON.
async fn check_requests_are_validated_field_by_field(b: Backend) {
    let s = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
    let p = s.project("valid", cfg(1)).await;
    let other = s.project("other", cfg(1)).await;
    eval_prompts(&s, &p.id, 4).await;
    let eval = stored_evaluation(&s, &p.id).await;
    let foreign = stored_evaluation(&s, &other.id).await;
    let (ann, ann_token) = rater(&s, &p.id, "ann").await;
    let (ben, _) = rater(&s, &p.id, "ben").await;
    let (gone, _) = rater(&s, &p.id, "gone").await;
    let r = s.admin().send(Method::DELETE, &format!("/api/projects/{}/raters/{gone}", p.id)).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (outsider, _) = rater(&s, &other.id, "outsider").await;
    let empty = EvaluationRow {
        id: "empty".into(),
        checkpoint_id: None,
        judge: "length".into(),
        baseline: "reference samples".into(),
        win_rate: 0.5,
        stderr: 0.0,
        n: 0,
        details: EvaluationDetails {
            win_rate: WinRate { win_rate: 0.5, stderr: 0.0, n: 0, wins: 0, ties: 0, losses: 0 },
            samples: Vec::new(),
        },
        created_at: 2,
    };
    s.store.add_evaluation(&p.id, &empty).await.unwrap();

    let check = |evaluation: &str, raters: &[&String], overlap: Option<u32>, pairs: Option<usize>| NewHumanCheck {
        evaluation: evaluation.into(),
        raters: raters.iter().map(|r| r.to_string()).collect(),
        overlap,
        pairs,
    };
    let path = format!("/api/projects/{}/checks", p.id);
    for (body, status, field) in [
        (typed(&check("nope", &[&ann], None, None)), 400, "evaluation: no evaluation \"nope\""),
        (typed(&check(&foreign, &[&ann], None, None)), 400, "evaluation: no evaluation"),
        (typed(&check("empty", &[&ann], None, None)), 400, "evaluation: evaluation \"empty\" has no samples"),
        (typed(&check(&eval, &[], None, None)), 400, "raters: at least one"),
        (typed(&check(&eval, &[&ann, &outsider], None, None)), 400, "raters: no rater"),
        (typed(&check(&eval, &[&ann, &gone], None, None)), 400, "raters: rater"),
        (typed(&check(&eval, &[&ann, &ann], None, None)), 400, "raters: "),
        (typed(&check(&eval, &[&ann, &ben], Some(3), None)), 400, "overlap: must be 1 to 2"),
        (typed(&check(&eval, &[&ann], Some(0), None)), 400, "overlap: "),
        (typed(&check(&eval, &[&ann], None, Some(5))), 400, "pairs: must be 1 to 4"),
        (typed(&check(&eval, &[&ann], None, Some(0))), 400, "pairs: "),
        (json!({"evaluation": eval, "raters": [ann], "size": 2}), 400, "request body"),
    ] {
        let r = s.admin().send_json(Method::POST, &path, &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.message().starts_with(field), "{body}: {}", r.text);
    }
    assert!(checks(&s, &p.id).await.is_empty(), "nothing was stored");
    assert_eq!(s.stats(&p.id).await.prompts_eval, 4, "nor a prompt");

    // Admin only; unknown project and check are 404s.
    let ok = check(&eval, &[&ann], None, Some(2));
    assert_eq!(s.with_token(&ann_token).send_json(Method::POST, &path, &ok).await.status, 403);
    assert_eq!(s.anonymous().send(Method::GET, &path).await.status, 401);
    assert_eq!(s.admin().send_json(Method::POST, "/api/projects/nope/checks", &ok).await.status, 404);
    assert_eq!(s.admin().send(Method::GET, "/api/projects/nope/checks").await.status, 404);
    let r = s.admin().send(Method::GET, "/api/checks/nope/pairs").await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("nope"), "{}", r.text);

    // Defaults: overlap 1, every sample; the list is newest first.
    let first: HumanCheck = s.admin().send_json(Method::POST, &path, &ok).await.expect(201);
    assert_eq!(s.stats(&p.id).await.prompts_eval, 4, "samples 0 and 1 have their prompts");
    assert_eq!((first.pairs, first.overlap, first.target_votes), (2, 1, 2));
    let second: HumanCheck = s.post(&path, &check(&eval, &[&ben], None, None)).await;
    assert_eq!(second.pairs, 4);
    let ids: Vec<String> = checks(&s, &p.id).await.into_iter().map(|c| c.id).collect();
    assert_eq!(ids, [second.id, first.id]);
    assert!(checks(&s, &other.id).await.is_empty());
    // Sample 3's prompt was added once; a third check finds it by its text.
    assert_eq!(s.stats(&p.id).await.prompts_eval, 5);
    let _: HumanCheck = s.post(&path, &check(&eval, &[&ann, &ben], Some(2), None)).await;
    assert_eq!(s.stats(&p.id).await.prompts_eval, 5);
}

backend_test!(a_check_of_an_evaluate_job_uses_its_recorded_prompts, flavor = "multi_thread", worker_threads = 2);
async fn a_check_of_an_evaluate_job_uses_its_recorded_prompts(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("evaluated", cfg(1)).await;
    eval_prompts(&s, &p.id, 4).await;
    let j = s.job(&p.id, JobKind::Evaluate, JobParams::default()).await;
    let done = s.wait(&j.id).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let evals: Vec<EvaluationRow> = s.get(&format!("/api/projects/{}/evaluations", p.id)).await;
    let samples = evals[0].details.samples.clone();
    assert_eq!(samples.len(), 4);
    assert!(samples.iter().all(|x| x.prompt_id.is_some() && x.outcome.is_some()), "{samples:?}");

    let (ann_id, ann) = rater(&s, &p.id, "ann").await;
    let body = NewHumanCheck { evaluation: evals[0].id.clone(), raters: vec![ann_id], overlap: None, pairs: Some(2) };
    let c: HumanCheck = s.post(&format!("/api/projects/{}/checks", p.id), &body).await;
    assert_eq!(c.pairs, 2);
    let rows = sqlx::query(
        "SELECT p.prompt_id FROM check_pairs c JOIN pairs p ON p.id = c.pair_id WHERE c.check_id = $1 \
         ORDER BY c.sample",
    )
    .bind(&c.id)
    .fetch_all(&s.store.pool)
    .await
    .unwrap();
    let used: Vec<Option<String>> = rows.iter().map(|r| Some(r.get(0))).collect();
    assert_eq!(used, [samples[0].prompt_id.clone(), samples[1].prompt_id.clone()]);
    assert_eq!(s.stats(&p.id).await.prompts_eval, 4, "no prompt added");

    // Ann calls both a tie: human rate 1/2; the judge's is the mean of its first two
    // outcomes, and agreement the share of those that are ties.
    for _ in 0..2 {
        let a = s.next(&ann).await.unwrap();
        s.label(&ann, &a.pair, RaterChoice::Tie).await.ok();
    }
    assert!(s.next(&ann).await.is_none());
    let outcome = |i: usize| samples[i].outcome.unwrap();
    let judge = (outcome(0).score() + outcome(1).score()) / 2.0;
    let ties = (0..2).filter(|&i| outcome(i) == Outcome::Tie).count() as f64 / 2.0;
    let all = checks(&s, &p.id).await;
    let c = &all[0];
    assert_rate(c.human, 0.5, 2);
    assert_rate(c.judge_rate, judge, 2);
    assert!(close(c.agreement, ties), "{c:?}");
    let pairs: Vec<CheckPair> = s.get(&format!("/api/checks/{}/pairs", c.id)).await;
    assert_eq!(pairs[0].judge, outcome(0));
    assert_eq!(pairs[1].human, [Outcome::Tie]);
    // The check shows the evaluation's texts: the policy's and the baseline's samples.
    assert_eq!(
        (pairs[0].policy.as_str(), pairs[0].baseline.as_str()),
        (samples[0].policy.as_str(), samples[0].baseline.as_str())
    );
}
