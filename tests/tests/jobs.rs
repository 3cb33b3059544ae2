//! Jobs over HTTP: a whole round (acquire, oracle labels, DPO, evaluation) on the tiny model,
//! watched through server-sent events; a second round acquired by the trained policy; rater
//! rounds waiting for labels; cancellation; and recovery of jobs a dead server left running.

mod common;

use apl::store::jobs::MAX_ATTEMPTS;
use common::{Backend, Server, backends};
use serde_json::{Value, json};

fn tiny(labeller: &str) -> Value {
    json!({
        "rating": {"overlap": 2},
        "loop_settings": {
            "acquisition": "certainty",
            "pairs_per_round": 4,
            "acquire": {"over_generate": 2, "batch_size": 8},
            "completion_tokens": [3, 5],
            "labeller": labeller,
            "trainable": {"kind": "all"},
            "train": {"epochs": 2, "pairs_per_step": 2, "micro_batch": 2, "adam": {"lr": 1e-3}},
            "eval": {"prompts": 4, "judge": "length", "batch_size": 4}
        }
    })
}

async fn prompts(s: &Server, project: &str, split: &str, n: usize) {
    let body: String =
        (0..n).map(|i| json!({"prompt": format!("{split} prompt number {i} is")}).to_string() + "\n").collect();
    let r = s
        .raw(
            "POST",
            &format!("/api/projects/{project}/prompts?format=jsonl&split={split}"),
            Some(common::ADMIN),
            body.into_bytes(),
            "text/plain",
        )
        .await
        .ok();
    assert_eq!(r["imported"], n);
}

/// Reads a job's event stream to its end; returns every job state sent.
async fn watch(s: &Server, job: &str) -> Vec<Value> {
    let mut resp =
        s.client.get(format!("{}/api/jobs/{job}/events?access_token={}", s.base, common::ADMIN)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while let Some(chunk) =
        tokio::time::timeout_at(deadline.into(), resp.chunk()).await.expect("job ends in time").unwrap()
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                assert!(block.contains("event: job"), "{block}");
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    events
}

async fn job(s: &Server, project: &str, kind: &str, params: Value) -> Value {
    let r =
        s.admin("POST", &format!("/api/projects/{project}/jobs"), Some(json!({"kind": kind, "params": params}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_runs_end_to_end_with_live_progress() {
    for b in backends() {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("loop", tiny("length")).await;
        prompts(&s, &p.id, "train", 24).await;
        prompts(&s, &p.id, "eval", 4).await;
        let j = job(&s, &p.id, "round", json!({})).await;
        assert_eq!(j["state"], "queued");
        let events = watch(&s, j["id"].as_str().unwrap()).await;
        let last = events.last().unwrap();
        assert_eq!(last["state"], "done", "{last}");
        let phases: Vec<&str> = events.iter().filter_map(|e| e["progress"]["phase"].as_str()).collect();
        assert!(phases.len() >= 2, "progress was streamed: {phases:?}");
        let res = &last["result"];
        assert_eq!(res["generate"]["round"], 1);
        assert_eq!(res["generate"]["pairs"], 4);
        assert_eq!(res["label"]["judge"], "length");
        let wr = res["evaluate"]["win_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&wr));
        assert_eq!(res["evaluate"]["n"], 4);
        let losses = res["train"]["epoch_losses"].as_array().unwrap();
        assert_eq!(losses.len(), 2);

        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["rounds"], 1);
        assert_eq!(detail["stats"]["checkpoints"], 1);
        assert_eq!(detail["stats"]["judge_labels"], 4);
        // While the policy is the starting model every margin is 0: no over-generation.
        assert_eq!(detail["stats"]["prompts_unused"], 24 - 4);

        // Round 2 is acquired by the trained policy: certainty now has margins to rank.
        let j2 = job(&s, &p.id, "generate", json!({"pairs": 2})).await;
        let end = watch(&s, j2["id"].as_str().unwrap()).await.pop().unwrap();
        assert_eq!(end["state"], "done", "{end}");
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["prompts_unused"], 20 - 2 * 2, "2 pairs x over_generate 2");
        let pairs = s.admin("GET", &format!("/api/projects/{}/pairs?round=2", p.id), None).await.ok();
        let pairs = pairs.as_array().unwrap();
        assert_eq!(pairs.len(), 2);
        for q in pairs {
            assert_eq!(q["acquisition"], "certainty");
            let (ra, rb, m) = (q["r_a"].as_f64().unwrap(), q["r_b"].as_f64().unwrap(), q["margin"].as_f64().unwrap());
            assert!((ra - rb - m).abs() < 1e-6);
            assert_eq!(q["target_votes"], 0, "oracle rounds do not go to raters");
        }
        // Rounds, checkpoints and evaluations are listed for the dashboard (no server paths).
        let rounds = s.admin("GET", &format!("/api/projects/{}/rounds", p.id), None).await.ok();
        assert_eq!(rounds.as_array().unwrap().len(), 2);
        assert_eq!(rounds[0]["pairs"], 4);
        assert!(rounds[0]["policy_checkpoint"].is_null());
        assert!(rounds[1]["policy_checkpoint"].is_string(), "round 2 came from the trained policy");
        let cks = s.admin("GET", &format!("/api/projects/{}/checkpoints", p.id), None).await;
        assert!(!cks.text.contains("safetensors"), "{}", cks.text);
        assert_eq!(cks.body[0]["report"]["epoch_losses"].as_array().unwrap().len(), 2);
        let evals = s.admin("GET", &format!("/api/projects/{}/evaluations", p.id), None).await.ok();
        assert_eq!(evals[0]["checkpoint_id"], cks.body[0]["id"]);
        assert_eq!(evals[0]["details"]["samples"].as_array().unwrap().len(), 4);
        // The judge-labelled pairs export as DPO data from the judge source.
        let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl?source=judge", p.id), None).await;
        assert!(dpo.text.lines().count() >= 1);
    }
}

/// A chat-completions server that prefers the longer continuation (in characters), with the
/// paper's answer format; counts its calls.
async fn length_judge_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::Json;
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
    let mut cfg = tiny("judge");
    cfg["loop_settings"]["eval"]["judge"] = json!("judge");
    cfg["loop_settings"]["judge"] =
        json!({"base_url": url, "model": "scripted", "api_key_env": null, "price_prompt_per_million": 2.0});
    let p = s.project("judged", cfg).await;
    prompts(&s, &p.id, "train", 24).await;
    prompts(&s, &p.id, "eval", 4).await;
    let j = job(&s, &p.id, "round", json!({})).await;
    let last = watch(&s, j["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["state"], "done", "{last}");
    let res = &last["result"];
    assert_eq!(res["label"]["judge"], "llm:scripted");
    assert_eq!(res["label"]["labelled"], 4);
    assert_eq!(res["label"]["report"]["calls"], 4);
    assert_eq!(res["evaluate"]["judge_report"]["calls"], 4);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 8);
    // The judge's labels, un-swapped: every exported chosen text is at least as long.
    let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl?source=judge", p.id), None).await;
    assert_eq!(dpo.text.lines().count(), 4);
    for line in dpo.text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let len = |k: &str| v[k].as_str().unwrap().chars().count();
        assert!(len("chosen") >= len("rejected"), "{v}");
    }
    // Analytics: the judge's labels, the evaluation with its length-controlled rate, the
    // leaderboard, and usage summed from the audit log.
    let a = s.admin("GET", &format!("/api/projects/{}/analytics", p.id), None).await.ok();
    assert_eq!(a["judges"][0]["judge"], "llm:scripted");
    assert_eq!(a["judges"][0]["labels"], 4);
    assert_eq!(a["evaluations"][0]["judge"], "llm:scripted");
    assert!(a["evaluations"][0]["length_controlled"]["raw"].is_number());
    assert_eq!(a["leaderboard"].as_array().unwrap().len(), 2);
    assert_eq!(a["judge_usage"]["calls"], 8);
    assert_eq!(a["judge_usage"]["prompt_tokens"], 400);
    assert!((a["judge_usage"]["cost_usd"].as_f64().unwrap() - 400.0 * 2.0 / 1e6).abs() < 1e-12);
    // Bad judge settings are refused by name.
    let mut bad = tiny("judge");
    bad["loop_settings"]["judge"] = json!({"base_url": "ftp://x", "model": "m"});
    let r = s.admin("POST", "/api/projects", Some(json!({"name": "bad", "task": "generic", "config": bad}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("judge.base_url"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rater_rounds_wait_for_labels_and_jobs_can_be_cancelled() {
    for b in backends() {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("humans", tiny("raters")).await;
        prompts(&s, &p.id, "train", 8).await;
        let j = job(&s, &p.id, "round", json!({"pairs": 2, "acquisition": "random"})).await;
        let end = watch(&s, j["id"].as_str().unwrap()).await.pop().unwrap();
        assert_eq!(end["state"], "done", "{end}");
        assert!(end["result"]["waiting_for"].as_str().unwrap().contains("raters"));
        let pairs = s.admin("GET", &format!("/api/projects/{}/pairs", p.id), None).await.ok();
        assert!(pairs.as_array().unwrap().iter().all(|q| q["target_votes"] == 2));
        // Training before any label fails with its reason.
        let t = job(&s, &p.id, "train", json!({})).await;
        let end = watch(&s, t["id"].as_str().unwrap()).await.pop().unwrap();
        assert_eq!(end["state"], "failed");
        assert!(end["error"].as_str().unwrap().contains("no labelled pairs"), "{end}");
        // A rater labels a pair; the raters' pairs can now train.
        let ann = s.rater(&p.id, "ann").await;
        let a = s.call("POST", "/api/rate/next", Some(&ann), None).await.ok()["assignment"].clone();
        s.call("POST", "/api/rate/labels", Some(&ann), Some(json!({"pair": a["pair"], "choice": "left"}))).await.ok();
        let t = job(&s, &p.id, "train", json!({})).await;
        let end = watch(&s, t["id"].as_str().unwrap()).await.pop().unwrap();
        assert_eq!(end["state"], "done", "{end}");
        assert_eq!(end["result"]["pairs"], 1);

        // Evaluation without eval prompts fails clearly; a queued job can be cancelled.
        let e = job(&s, &p.id, "evaluate", json!({})).await;
        let end = watch(&s, e["id"].as_str().unwrap()).await.pop().unwrap();
        assert!(end["error"].as_str().unwrap().contains("evaluation prompts"), "{end}");
        let stopped = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
        let q = stopped.project("queued", tiny("length")).await;
        let j = job(&stopped, &q.id, "generate", json!({})).await;
        let c = stopped.admin("POST", &format!("/api/jobs/{}/cancel", j["id"].as_str().unwrap()), None).await.ok();
        assert_eq!(c["state"], "cancelled");
        let again = stopped.admin("POST", &format!("/api/jobs/{}/cancel", j["id"].as_str().unwrap()), None).await;
        assert_eq!(again.status, 409);
        let listed = stopped.admin("GET", &format!("/api/projects/{}/jobs", q.id), None).await.ok();
        assert_eq!(listed.as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn jobs_left_running_by_a_dead_server_are_resumed_then_failed() {
    for b in backends() {
        let s = common::start(&b, common::Options { worker: false, ..Default::default() }).await;
        let p = s.project("orphans", tiny("length")).await;
        let j = job(&s, &p.id, "generate", json!({})).await;
        let id = j["id"].as_str().unwrap();
        for attempt in 1..=MAX_ATTEMPTS {
            // A server takes the job and dies (its heartbeat stops).
            let taken = s.store.claim_job("dead-server").await.unwrap().unwrap();
            assert_eq!(taken.id, id);
            assert_eq!(taken.attempts, attempt);
            assert_eq!(s.store.recover_jobs(0).await.unwrap(), 1);
            let now = s.admin("GET", &format!("/api/jobs/{id}"), None).await.ok();
            if attempt < MAX_ATTEMPTS {
                assert_eq!(now["state"], "queued");
                assert!(now["progress"]["message"].as_str().unwrap().contains("restart"));
            } else {
                assert_eq!(now["state"], "failed");
                assert!(now["error"].as_str().unwrap().contains("stopped while running"), "{now}");
            }
        }
        // A live heartbeat keeps a job its owner's.
        let j = job(&s, &p.id, "generate", json!({})).await;
        s.store.claim_job("alive").await.unwrap().unwrap();
        assert_eq!(s.store.recover_jobs(60_000).await.unwrap(), 0);
        let now = s.admin("GET", &format!("/api/jobs/{}", j["id"].as_str().unwrap()), None).await.ok();
        assert_eq!(now["state"], "running");
        let _ = Backend::Sqlite;
    }
}
