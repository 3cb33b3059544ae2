//! Human win-rate checks over HTTP, on SQLite and (when configured) PostgreSQL: an evaluation's
//! samples go to the chosen raters only, before their other pairs, blind and with sides
//! randomised; the panel's figures match values computed by hand from the labels given, undo
//! takes them back, requests are validated field by field, and check pairs never leak into
//! training data (pair list, stats, exports, the label job).

mod common;

use apl::store::rounds::EvaluationRow;
use common::{Server, each_backend};
use serde_json::{Value, json};
use sqlx::Row;

fn cfg(overlap: u32) -> Value {
    json!({
        "rating": {"overlap": overlap, "gold_rate": 0.0, "lease_seconds": 600, "guidelines": "Pick the better one."},
        "loop_settings": {
            "labeller": "length",
            "completion_tokens": [3, 5],
            "eval": {"prompts": 4, "judge": "length", "batch_size": 4}
        }
    })
}

/// A rater's (id, token).
async fn rater(s: &Server, project: &str, name: &str) -> (String, String) {
    let r = s.admin("POST", &format!("/api/projects/{project}/raters"), Some(json!({"name": name}))).await.ok();
    (r["rater"]["id"].as_str().unwrap().to_string(), r["token"].as_str().unwrap().to_string())
}

async fn eval_prompts(s: &Server, project: &str, n: usize) {
    let body: String = (0..n).map(|i| json!({"prompt": format!("eval prompt {i}")}).to_string() + "\n").collect();
    let path = format!("/api/projects/{project}/prompts?format=jsonl&split=eval");
    let r = s.raw("POST", &path, Some(common::ADMIN), body.into_bytes(), "text/plain").await.ok();
    assert_eq!(r["imported"], n);
}

async fn next(s: &Server, token: &str) -> Value {
    s.call("POST", "/api/rate/next", Some(token), None).await.ok()["assignment"].clone()
}

async fn label(s: &Server, token: &str, pair: &str, choice: &str) -> Value {
    s.call("POST", "/api/rate/labels", Some(token), Some(json!({"pair": pair, "choice": choice, "time_ms": 1500})))
        .await
        .ok()
}

/// The evaluation sample an assignment shows ("policy N" on one side), if it is a check pair.
fn sample_of(a: &Value) -> Option<usize> {
    ["left", "right"].iter().find_map(|side| a[*side].as_str()?.strip_prefix("policy ")?.parse().ok())
}

/// The rater's answer for a human outcome for the policy.
fn answer(a: &Value, outcome: &str) -> &'static str {
    let policy_left = a["left"].as_str().unwrap().starts_with("policy ");
    match outcome {
        "win" if policy_left => "left",
        "win" => "right",
        "loss" if policy_left => "right",
        "loss" => "left",
        "tie" => "tie",
        "both_bad" => "both_bad",
        _ => "skip",
    }
}

/// An evaluation of the starting model stored as the evaluate job stores one: sample 0 records
/// its prompt's id, samples 1 and 2 only their text, sample 3's prompt was never imported.
async fn stored_evaluation(s: &Server, project: &str) -> String {
    let prompts = s.store.prompts(project, "eval", false, 10).await.unwrap();
    let outcomes = ["win", "loss", "tie", "win"];
    let samples: Vec<Value> = (0..4)
        .map(|i| {
            let prompt = if i < 3 { format!("eval prompt {i}") } else { "a prompt nobody imported".to_string() };
            let mut v = json!({"prompt": prompt, "policy": format!("policy {i}"), "reference": format!("reference {i}"),
                               "outcome": outcomes[i]});
            if i == 0
                && let Some(first) = prompts.first()
            {
                v["prompt_id"] = json!(first.0);
            }
            v
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
        details: json!({"samples": samples}),
        created_at: 1,
    };
    s.store.add_evaluation(project, &e).await.unwrap();
    e.id
}

fn close(x: &Value, want: f64) -> bool {
    x.as_f64().is_some_and(|v| (v - want).abs() < 1e-12)
}

#[track_caller]
fn assert_rate(r: &Value, rate: f64, n: usize) {
    assert!(close(&r["rate"], rate), "rate {r} != {rate}");
    assert_eq!(r["n"], n, "{r}");
    let (lo, hi) = (r["low"].as_f64().unwrap(), r["high"].as_f64().unwrap());
    assert!((0.0..=rate).contains(&lo) && (rate..=1.0).contains(&hi), "{r}");
}

async fn progress(s: &Server, token: &str) -> Value {
    s.call("GET", "/api/rate/me", Some(token), None).await.ok()["progress"].clone()
}

async fn checks(s: &Server, project: &str) -> Value {
    s.admin("GET", &format!("/api/projects/{project}/checks"), None).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_goes_to_its_raters_first_and_reports_humans_beside_the_judge() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("check", cfg(3)).await;
        eval_prompts(&s, &p.id, 4).await;
        let eval = stored_evaluation(&s, &p.id).await;
        assert_eq!(s.trl_pairs(&p.id, 2, "rate=true").await["imported"], 2);
        let (ann_id, ann) = rater(&s, &p.id, "ann").await;
        let (ben_id, ben) = rater(&s, &p.id, "ben").await;
        let (_, cy) = rater(&s, &p.id, "cy").await;

        let body = json!({"evaluation": eval, "raters": [ben_id, ann_id], "overlap": 2});
        let r = s.admin("POST", &format!("/api/projects/{}/checks", p.id), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let c = r.body;
        let check = c["id"].as_str().unwrap().to_string();
        assert_eq!(c["evaluation"], eval.as_str());
        assert!(c["checkpoint"].is_null());
        assert_eq!(c["judge"], "length");
        assert_eq!(c["raters"], json!([ann_id, ben_id]), "in the order they joined");
        assert_eq!((c["overlap"].as_i64(), c["pairs"].as_i64()), (Some(2), Some(4)));
        assert_eq!((c["votes"].as_i64(), c["target_votes"].as_i64()), (Some(0), Some(8)));
        assert!(c["human"].is_null() && c["judge_rate"].is_null() && c["agreement"].is_null() && c["kappa"].is_null());

        // Prompts: sample 0 by its recorded id, 1 and 2 by text, 3 as a new evaluation prompt.
        let rows = sqlx::query(
            "SELECT p.prompt_id, pr.split, pr.source FROM check_pairs c JOIN pairs p ON p.id = c.pair_id \
             JOIN prompts pr ON pr.id = p.prompt_id WHERE c.check_id = $1 ORDER BY c.sample",
        )
        .bind(&check)
        .fetch_all(&s.store.pool)
        .await
        .unwrap();
        let imported = s.store.prompts(&p.id, "eval", false, 10).await.unwrap();
        let got: Vec<(String, String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect::<Vec<_>>();
        for i in 0..3 {
            assert_eq!(got[i].0, imported[i].0, "sample {i}");
        }
        assert_eq!((got[3].1.as_str(), got[3].2.as_str()), ("eval", "check"));

        // Progress counts the check pairs only for its raters.
        assert_eq!(progress(&s, &ann).await, json!({"done": 0, "target": 6}));
        assert_eq!(progress(&s, &ben).await, json!({"done": 0, "target": 6}));
        assert_eq!(progress(&s, &cy).await, json!({"done": 0, "target": 2}));

        // Cy is not in the check: only training pairs, never a check pair.
        let mut cy_pairs = 0;
        loop {
            let a = next(&s, &cy).await;
            if a.is_null() {
                break;
            }
            assert!(sample_of(&a).is_none() && a["prompt"].as_str().unwrap().starts_with("Prompt "), "{a}");
            label(&s, &cy, a["pair"].as_str().unwrap(), "left").await;
            cy_pairs += 1;
        }
        assert_eq!(cy_pairs, 2);

        // Ann and ben get the check's pairs first (sides at random), then the training pairs.
        // Ann: win, win, tie, loss. Ben: win, loss, both_bad, skip.
        let plans = [(&ann, ["win", "win", "tie", "loss"]), (&ben, ["win", "loss", "both_bad", "skip"])];
        let mut ben_s1 = String::new();
        for (token, plan) in plans {
            let mut seen = Vec::new();
            loop {
                let a = next(&s, token).await;
                if a.is_null() {
                    break;
                }
                let pair = a["pair"].as_str().unwrap().to_string();
                match sample_of(&a) {
                    Some(i) => {
                        assert!(seen.iter().all(Option::is_some), "a check pair after a training pair");
                        let prompt = if i < 3 { format!("eval prompt {i}") } else { "a prompt nobody imported".into() };
                        assert_eq!(a["prompt"], prompt.as_str());
                        if token == &ben && i == 1 {
                            ben_s1 = pair.clone();
                        }
                        label(&s, token, &pair, answer(&a, plan[i])).await;
                    }
                    None => {
                        label(&s, token, &pair, "left").await;
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
        assert_eq!(progress(&s, &ann).await, json!({"done": 6, "target": 6}));
        assert_eq!(progress(&s, &ben).await, json!({"done": 5, "target": 5}), "his skip is neither done nor open");

        // By hand, pair scores are s0 (1+1)/2 = 1, s1 (1+0)/2 = 1/2, s2 (1/2+1/2)/2 = 1/2,
        // s3 0 (ann's loss; ben's skip does not count). Human rate 2/4 = 0.5; the judge's on the
        // same pairs (1 + 0 + 1/2 + 1)/4 = 0.625. Majorities win, tie, tie, loss against the
        // judge's win, loss, tie, win: agreement 2/4. Kappa: p_o = 1/2, p_e = (1/4)(2/4) [win] +
        // (2/4)(1/4) [tie] + (1/4)(1/4) [loss] = 5/16, kappa = (8/16 - 5/16)/(11/16) = 3/11.
        let full = checks(&s, &p.id).await;
        assert_eq!(full.as_array().unwrap().len(), 1);
        let c = &full[0];
        assert_eq!((c["votes"].as_i64(), c["target_votes"].as_i64()), (Some(7), Some(8)));
        assert_rate(&c["human"], 0.5, 4);
        assert_rate(&c["judge_rate"], 0.625, 4);
        assert!(close(&c["agreement"], 0.5), "{c}");
        assert!(close(&c["kappa"], 3.0 / 11.0), "{c}");
        assert_eq!(checks(&s, &p.id).await, full, "the same figures on every load");

        // The side-by-side view: sample order, texts unshuffled, votes as outcomes for the policy.
        let pairs = s.admin("GET", &format!("/api/checks/{check}/pairs"), None).await.ok();
        let pairs = pairs.as_array().unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[0]["prompt"], "eval prompt 0");
        assert_eq!(
            (pairs[0]["policy"].as_str(), pairs[0]["reference"].as_str()),
            (Some("policy 0"), Some("reference 0"))
        );
        let judges: Vec<&str> = pairs.iter().map(|q| q["judge"].as_str().unwrap()).collect();
        assert_eq!(judges, ["win", "loss", "tie", "win"]);
        let mut human: Vec<Vec<String>> =
            pairs.iter().map(|q| serde_json::from_value(q["human"].clone()).unwrap()).collect();
        human.iter_mut().for_each(|h| h.sort());
        assert_eq!(human, [vec!["win", "win"], vec!["loss", "win"], vec!["tie", "tie"], vec!["loss"]]);
        assert_eq!(pairs[1]["pair"], ben_s1.as_str());

        // Ben undoes his loss on s1: s1 scores 1 (a win against the judge's loss). Human
        // (1 + 1 + 1/2 + 0)/4 = 0.625, judge unchanged 0.625, agreement still 2/4 (s0, s2);
        // kappa: majorities win, win, tie, loss vs win, loss, tie, win: p_o = 1/2,
        // p_e = (2/4)(2/4) + (1/4)(1/4) + (1/4)(1/4) = 6/16, kappa = (8 - 6)/(16 - 6) = 0.2.
        let back = s.call("DELETE", &format!("/api/rate/labels/{ben_s1}"), Some(&ben), None).await.ok();
        let undone = checks(&s, &p.id).await;
        let c = &undone[0];
        assert_eq!(c["votes"], 6);
        assert_rate(&c["human"], 0.625, 4);
        assert_rate(&c["judge_rate"], 0.625, 4);
        assert!(close(&c["agreement"], 0.5) && close(&c["kappa"], 0.2), "{c}");
        // The pair comes back to ben with the same sides; his loss again restores every figure.
        assert_eq!(next(&s, &ben).await["pair"], ben_s1.as_str());
        label(&s, &ben, &ben_s1, answer(&back, "loss")).await;
        assert_eq!(checks(&s, &p.id).await, full);

        // None of it is training data: not listed, not counted, not exported, not judged.
        let listed = s.admin("GET", &format!("/api/projects/{}/pairs", p.id), None).await.ok();
        assert_eq!(listed.as_array().unwrap().len(), 2);
        assert!(!listed.to_string().contains("policy "), "{listed}");
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!((detail["stats"]["pairs"].as_i64(), detail["stats"]["labels"].as_i64()), (Some(2), Some(6)));
        assert_eq!(detail["stats"]["prompts_eval"], 5, "one prompt was added for sample 3");
        for source in ["human", "judge", "human_then_judge"] {
            let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl?source={source}", p.id), None).await;
            assert_eq!(dpo.text.lines().count(), 2, "{source}: {}", dpo.text);
            assert!(!dpo.text.contains("policy ") && !dpo.text.contains("eval prompt"), "{source}: {}", dpo.text);
        }
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        assert_eq!(votes.text.lines().count(), 6, "three raters on two training pairs");
        assert!(!votes.text.contains(&ben_s1));
        let j = s.admin("POST", &format!("/api/projects/{}/jobs", p.id), Some(json!({"kind": "label"}))).await.ok();
        let done = wait(&s, j["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["result"]["labelled"], 2, "{done}");
        let judged: i64 = sqlx::query(
            "SELECT COUNT(*) FROM judge_labels j JOIN pairs p ON p.id = j.pair_id WHERE p.check_id IS NOT NULL",
        )
        .fetch_one(&s.store.pool)
        .await
        .unwrap()
        .get(0);
        assert_eq!(judged, 0);
    })
    .await;
}

/// Polls a job until it ends.
async fn wait(s: &Server, job: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let j = s.admin("GET", &format!("/api/jobs/{job}"), None).await.ok();
        if !matches!(j["state"].as_str(), Some("queued" | "running")) {
            return j;
        }
        assert!(std::time::Instant::now() < deadline, "job {job} did not end: {j}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn check_requests_are_validated_field_by_field() {
    each_backend(|b| async move {
        let s = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
        let p = s.project("valid", cfg(1)).await;
        let other = s.project("other", cfg(1)).await;
        eval_prompts(&s, &p.id, 4).await;
        let eval = stored_evaluation(&s, &p.id).await;
        let foreign = stored_evaluation(&s, &other.id).await;
        let (ann, ann_token) = rater(&s, &p.id, "ann").await;
        let (ben, _) = rater(&s, &p.id, "ben").await;
        let (gone, _) = rater(&s, &p.id, "gone").await;
        s.admin("DELETE", &format!("/api/projects/{}/raters/{gone}", p.id), None).await;
        let (outsider, _) = rater(&s, &other.id, "outsider").await;
        let empty = EvaluationRow {
            id: "empty".into(),
            checkpoint_id: None,
            judge: "length".into(),
            baseline: "reference samples".into(),
            win_rate: 0.5,
            stderr: 0.0,
            n: 0,
            details: json!({"samples": []}),
            created_at: 2,
        };
        s.store.add_evaluation(&p.id, &empty).await.unwrap();

        let path = format!("/api/projects/{}/checks", p.id);
        for (body, status, field) in [
            (json!({"evaluation": "nope", "raters": [ann]}), 400, "evaluation: no evaluation \"nope\""),
            (json!({"evaluation": foreign, "raters": [ann]}), 400, "evaluation: no evaluation"),
            (json!({"evaluation": "empty", "raters": [ann]}), 400, "evaluation: evaluation \"empty\" has no samples"),
            (json!({"evaluation": eval, "raters": []}), 400, "raters: at least one"),
            (json!({"evaluation": eval, "raters": [ann, outsider]}), 400, "raters: no rater"),
            (json!({"evaluation": eval, "raters": [ann, gone]}), 400, "raters: rater"),
            (json!({"evaluation": eval, "raters": [ann, ann]}), 400, "raters: "),
            (json!({"evaluation": eval, "raters": [ann, ben], "overlap": 3}), 400, "overlap: must be 1 to 2"),
            (json!({"evaluation": eval, "raters": [ann], "overlap": 0}), 400, "overlap: "),
            (json!({"evaluation": eval, "raters": [ann], "pairs": 5}), 400, "pairs: must be 1 to 4"),
            (json!({"evaluation": eval, "raters": [ann], "pairs": 0}), 400, "pairs: "),
            (json!({"evaluation": eval, "raters": [ann], "size": 2}), 400, "request body"),
        ] {
            let r = s.admin("POST", &path, Some(body.clone())).await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(r.message().starts_with(field), "{body}: {}", r.message());
        }
        assert!(checks(&s, &p.id).await.as_array().unwrap().is_empty(), "nothing was stored");
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_eval"], 4, "nor a prompt");

        // Admin only; unknown project and check are 404s.
        let ok = json!({"evaluation": eval, "raters": [ann], "pairs": 2});
        assert_eq!(s.call("POST", &path, Some(&ann_token), Some(ok.clone())).await.status, 403);
        assert_eq!(s.call("GET", &path, None, None).await.status, 401);
        assert_eq!(s.admin("POST", "/api/projects/nope/checks", Some(ok.clone())).await.status, 404);
        assert_eq!(s.admin("GET", "/api/projects/nope/checks", None).await.status, 404);
        let r = s.admin("GET", "/api/checks/nope/pairs", None).await;
        assert_eq!(r.status, 404);
        assert!(r.message().contains("nope"), "{}", r.message());

        // Defaults: overlap 1, every sample; the list is newest first.
        let first = s.admin("POST", &path, Some(ok)).await.ok();
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_eval"], 4, "samples 0 and 1 have their prompts");
        assert_eq!(
            (first["pairs"].as_i64(), first["overlap"].as_i64(), first["target_votes"].as_i64()),
            (Some(2), Some(1), Some(2))
        );
        let second = s.admin("POST", &path, Some(json!({"evaluation": eval, "raters": [ben]}))).await.ok();
        assert_eq!(second["pairs"], 4);
        let ids: Vec<Value> = checks(&s, &p.id).await.as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids, [second["id"].clone(), first["id"].clone()]);
        assert!(checks(&s, &other.id).await.as_array().unwrap().is_empty());
        // Sample 3's prompt was added once; a third check finds it by its text.
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_eval"], 5);
        s.admin("POST", &path, Some(json!({"evaluation": eval, "raters": [ann, ben], "overlap": 2}))).await.ok();
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_eval"], 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_of_an_evaluate_job_uses_its_recorded_prompts() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("evaluated", cfg(1)).await;
        eval_prompts(&s, &p.id, 4).await;
        let j = s.admin("POST", &format!("/api/projects/{}/jobs", p.id), Some(json!({"kind": "evaluate"}))).await.ok();
        let done = wait(&s, j["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "done", "{done}");
        let evals = s.admin("GET", &format!("/api/projects/{}/evaluations", p.id), None).await.ok();
        let samples = evals[0]["details"]["samples"].as_array().unwrap().clone();
        assert_eq!(samples.len(), 4);
        assert!(samples.iter().all(|x| x["prompt_id"].is_string()), "{samples:?}");

        let (ann_id, ann) = rater(&s, &p.id, "ann").await;
        let body = json!({"evaluation": evals[0]["id"], "raters": [ann_id], "pairs": 2});
        let c = s.admin("POST", &format!("/api/projects/{}/checks", p.id), Some(body)).await.ok();
        assert_eq!(c["pairs"], 2);
        let rows = sqlx::query("SELECT p.prompt_id FROM check_pairs c JOIN pairs p ON p.id = c.pair_id WHERE c.check_id = $1 ORDER BY c.sample")
            .bind(c["id"].as_str().unwrap())
            .fetch_all(&s.store.pool)
            .await
            .unwrap();
        let used: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(used, [samples[0]["prompt_id"].as_str().unwrap(), samples[1]["prompt_id"].as_str().unwrap()]);
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_eval"], 4, "no prompt added");

        // Ann calls both a tie: human rate 1/2; the judge's is the mean of its first two
        // outcomes, and agreement the share of those that are ties.
        for _ in 0..2 {
            let a = next(&s, &ann).await;
            label(&s, &ann, a["pair"].as_str().unwrap(), "tie").await;
        }
        assert!(next(&s, &ann).await.is_null());
        let score = |o: &Value| match o.as_str().unwrap() {
            "win" => 1.0,
            "tie" => 0.5,
            _ => 0.0,
        };
        let judge = (score(&samples[0]["outcome"]) + score(&samples[1]["outcome"])) / 2.0;
        let ties = samples[..2].iter().filter(|x| x["outcome"] == "tie").count() as f64 / 2.0;
        let all = checks(&s, &p.id).await;
        let c = &all[0];
        assert_rate(&c["human"], 0.5, 2);
        assert_rate(&c["judge_rate"], judge, 2);
        assert!(close(&c["agreement"], ties), "{c}");
        let pairs = s.admin("GET", &format!("/api/checks/{}/pairs", c["id"].as_str().unwrap()), None).await.ok();
        assert_eq!(pairs[0]["judge"], samples[0]["outcome"]);
        assert_eq!(pairs[1]["human"], json!(["tie"]));
    })
    .await;
}
