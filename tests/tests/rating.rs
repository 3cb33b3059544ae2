//! The rater flow over HTTP, on SQLite and (when configured) PostgreSQL: assignment with
//! overlap, leases, gold pairs, undo, exports, and everything a rater must not be able to do.

mod common;

use std::collections::{BTreeMap, HashSet};

use apl_shared::settings::{LoopSettings, TrainConfig};
use apl_shared::{
    Assignment, Choice, JobKind, JobParams, LabelAck, NewJob, NewProject, NewRater, OPEN_AHEAD, Project, ProjectConfig,
    RaterChoice, RaterHome, RaterProgress, RaterStats, RatingConfig, Side, Task,
};
use common::{Backend, typed};
use reqwest::Method;
use serde_json::json;

fn cfg(overlap: u32, gold_rate: f64) -> ProjectConfig {
    ProjectConfig {
        rating: RatingConfig {
            overlap,
            gold_rate,
            lease_seconds: 600,
            guidelines: "Pick the better one.".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The side that shows the "good" completion.
fn good_side(a: &Assignment) -> RaterChoice {
    if a.left.starts_with("good") { RaterChoice::Left } else { RaterChoice::Right }
}

backend_test!(raters_label_with_overlap_and_the_exports_hold_their_votes);
async fn raters_label_with_overlap_and_the_exports_hold_their_votes(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("overlap", cfg(2, 0.0)).await;
    assert_eq!(s.trl_pairs(&p.id, 3, "rate=true").await.imported, 3);
    let tokens = [s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await, s.rater(&p.id, "cy").await];

    let me: RaterHome = s.with_token(&tokens[0]).get("/api/rate/me").await;
    assert_eq!(me.guidelines, "Pick the better one.");
    assert_eq!(me.progress, RaterProgress { done: 0, target: 3, at_least: false });

    // A rater's view holds only these fields: nothing about models, scores, sides or gold.
    // Which fields leave the server is a question about the wire: the keys are read raw.
    let raw = s.with_token(&tokens[0]).send(Method::POST, "/api/rate/next").await.ok();
    let view: serde_json::Value = raw.json();
    let keys: HashSet<&str> = view["assignment"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["pair", "prompt", "left", "right", "lease_expires_at", "progress"]));
    let a = raw.json::<apl_shared::NextPair>().assignment.unwrap();
    // Asking again returns the same held pair.
    assert_eq!(s.next(&tokens[0]).await.unwrap().pair, a.pair);

    // Everyone labels everything they are given, always picking the "good" side.
    let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &tokens {
        while let Some(a) = s.next(t).await {
            let choice = good_side(&a);
            let ack: LabelAck = s.label(t, &a.pair, choice).await.ok().json();
            assert_eq!(ack.choice, choice);
            assert_eq!(ack.pair, a.pair);
            given.entry(a.pair.clone()).or_default().push(t.clone());
        }
    }
    // Overlap 2: each of the 3 pairs went to exactly 2 distinct raters.
    assert_eq!(given.len(), 3);
    for raters in given.values() {
        assert_eq!(raters.len(), 2);
        assert_ne!(raters[0], raters[1]);
    }
    let me: RaterHome = s.with_token(&tokens[0]).get("/api/rate/me").await;
    assert_eq!(me.progress.done, given.values().filter(|r| r.contains(&tokens[0])).count() as i64);

    // Exports: 6 votes, 3 DPO rows whose chosen is the good completion.
    let votes = s.votes(&p.id).await;
    assert_eq!(votes.len(), 6);
    assert!(votes.iter().all(|v| v.choice == Choice::A && v.time_ms == 1500), "the good text is a: {votes:?}");
    // The CSV is a file format: checked as text.
    let csv = s.admin().send(Method::GET, &format!("/api/projects/{}/export/votes.csv", p.id)).await.ok();
    assert_eq!(csv.text.lines().count(), 7);
    assert!(csv.text.starts_with("pair_id,pair_kind,round,rater_id,rater,choice,left,time_ms"));
    let rows = s.dpo(&p.id, None).await;
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r.chosen.starts_with("good"), "{r:?}");
        assert!(r.rejected.starts_with("bad"));
        assert_eq!(r.metadata.votes.a, 2);
        assert_eq!(r.metadata.chosen_is, Side::A);
        assert_eq!(r.metadata.raters.len(), 2);
    }
    let raters: Vec<RaterStats> = s.get(&format!("/api/projects/{}/raters", p.id)).await;
    assert_eq!(raters.iter().map(|r| r.labels).sum::<i64>(), 6);
    let stats = s.stats(&p.id).await;
    assert_eq!((stats.pairs_complete, stats.labels), (3, 6));
}

backend_test!(retries_are_idempotent_undo_gives_the_pair_back_and_skips_free_the_slot);
async fn retries_are_idempotent_undo_gives_the_pair_back_and_skips_free_the_slot(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("undo", cfg(1, 0.0)).await;
    s.trl_pairs(&p.id, 2, "rate=true").await;
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);

    let a = s.next(&ann).await.unwrap();
    let pair = a.pair.clone();
    let first: LabelAck = s.label(&ann, &pair, RaterChoice::Left).await.ok().json();
    // The same label again (a client retry) is acknowledged once more, not stored twice.
    let again: LabelAck = s.label(&ann, &pair, RaterChoice::Left).await.ok().json();
    assert_eq!(first.created_at, again.created_at);
    // A different answer must go through undo.
    let r = s.label(&ann, &pair, RaterChoice::Right).await;
    assert_eq!(r.status, 409);
    assert!(r.message().contains("undo"), "{}", r.text);

    // Undo: the label is gone and the same pair, same sides, comes back first.
    let back: Assignment = s.with_token(&ann).delete(&format!("/api/rate/labels/{pair}")).await;
    assert_eq!(back.pair, pair);
    assert_eq!(back.left, a.left);
    assert_eq!(s.next(&ann).await.unwrap().pair, pair);
    assert!(s.votes(&p.id).await.is_empty());
    s.label(&ann, &pair, RaterChoice::Right).await.ok();
    let own: Vec<LabelAck> = s.with_token(&ann).get("/api/rate/labels").await;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].choice, RaterChoice::Right);

    // Overlap 1: the first pair is full, ben gets the other; a skip frees it for ann.
    let b2 = s.next(&ben).await.unwrap();
    assert_ne!(b2.pair, pair);
    s.label(&ben, &b2.pair, RaterChoice::Skip).await.ok();
    assert!(s.next(&ben).await.is_none(), "ben skipped it and the other pair is full");
    let a2 = s.next(&ann).await.unwrap();
    assert_eq!(a2.pair, b2.pair);
    // Ben cannot undo his skip now that ann holds the pair.
    let r = s.with_token(&ben).send(Method::DELETE, &format!("/api/rate/labels/{}", b2.pair)).await;
    assert_eq!(r.status, 409, "{}", r.text);
    // Skips do not count as votes.
    assert_eq!(s.dpo(&p.id, Some(apl_shared::LabelSource::Human)).await.len(), 1);
}

backend_test!(a_label_can_bring_the_next_pair_in_the_same_round_trip);
async fn a_label_can_bring_the_next_pair_in_the_same_round_trip(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    // Overlap 2: each pair has two slots, so the claims fill slot 0, then slot 1.
    let p = s.project("label-next", cfg(2, 0.0)).await;
    s.trl_pairs(&p.id, 3, "rate=true").await;
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
    let label_next = |pair: &str| apl_shared::LabelRequest {
        pair: pair.into(),
        choice: RaterChoice::Left,
        time_ms: 700,
        rationale: None,
        next: true,
    };
    for token in [&ann, &ben] {
        let mut a = s.next(token).await.unwrap();
        let mut seen = vec![a.pair.clone()];
        loop {
            let ack: LabelAck =
                s.with_token(token).send_json(Method::POST, "/api/rate/labels", &label_next(&a.pair)).await.ok().json();
            assert_eq!(ack.pair, a.pair);
            let next = ack.next.expect("asked for the next pair");
            match next.assignment {
                Some(n) => {
                    assert!(!seen.contains(&n.pair), "a pair came back to the rater who labelled it");
                    // The acknowledgement's progress is the new pair's.
                    assert_eq!(ack.progress, n.progress);
                    assert_eq!(n.progress, RaterProgress { done: seen.len() as i64, target: 3, at_least: false });
                    seen.push(n.pair.clone());
                    a = n;
                }
                None => {
                    assert_eq!(next.status, apl_shared::NextStatus::Done);
                    assert_eq!(ack.progress, RaterProgress { done: 3, target: 3, at_least: false });
                    break;
                }
            }
        }
        assert_eq!(seen.len(), 3);
    }
    // Both raters labelled every pair once: two votes each, none lost, none doubled.
    let votes = s.votes(&p.id).await;
    assert_eq!(votes.len(), 6);
    let slots: Vec<(i64, i64)> = sqlx::query_as("SELECT MIN(slot), MAX(slot) FROM assignments GROUP BY pair_id")
        .fetch_all(&s.store.pool)
        .await
        .unwrap();
    assert_eq!(slots, vec![(0, 1); 3]);
    // Without `next` the acknowledgement carries none (and says nothing of it on the wire).
    let r = s.label(&ann, &votes_pair(&s, &p.id).await, RaterChoice::Left).await.ok();
    assert!(!r.text.contains("\"next\""), "{}", r.text);
}

backend_test!(a_large_pool_is_counted_a_hundred_ahead);
/// The pairs still open to a rater are counted a hundred ahead (the count runs on every label):
/// past that the progress says "at least", below it the exact number; a quota is exact.
async fn a_large_pool_is_counted_a_hundred_ahead(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("large", cfg(1, 0.0)).await;
    assert_eq!(s.trl_pairs(&p.id, 130, "rate=true").await.imported, 130);
    let ann = s.rater(&p.id, "ann").await;
    let me: RaterHome = s.with_token(&ann).get("/api/rate/me").await;
    assert_eq!(me.progress, RaterProgress { done: 0, target: OPEN_AHEAD, at_least: true });
    for labelled in 1..=31 {
        let a = s.next(&ann).await.unwrap();
        let ack: LabelAck = s.label(&ann, &a.pair, RaterChoice::Left).await.ok().json();
        // 129 open to her after the first label, ..., 100 after the 30th, 99 after the 31st.
        let want = match labelled {
            ..=30 => RaterProgress { done: labelled, target: labelled + OPEN_AHEAD, at_least: true },
            _ => RaterProgress { done: labelled, target: labelled + 99, at_least: false },
        };
        assert_eq!(ack.progress, want, "after {labelled} labels");
    }
    let body = NewRater { name: "ben".into(), quota: Some(120), ..Default::default() };
    let ben: apl_shared::RaterInvite =
        s.admin().send_json(Method::POST, &format!("/api/projects/{}/raters", p.id), &body).await.expect(201);
    let me: RaterHome = s.with_token(&ben.token).get("/api/rate/me").await;
    assert_eq!(me.progress, RaterProgress { done: 0, target: 120, at_least: false });
}

/// A pair of the project that `ann` labelled (the retry of her label is acknowledged again).
async fn votes_pair(s: &common::Server, project: &str) -> String {
    sqlx::query_scalar(
        "SELECT l.pair_id FROM labels l JOIN raters r ON r.id = l.rater_id WHERE r.name = 'ann' AND r.project_id = $1 LIMIT 1",
    )
    .bind(project)
    .fetch_one(&s.store.pool)
    .await
    .unwrap()
}

backend_test!(expired_leases_go_back_to_the_pool);
async fn expired_leases_go_back_to_the_pool(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("leases", cfg(1, 0.0)).await;
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
    let pair = s.next(&ann).await.unwrap().pair;
    assert!(s.next(&ben).await.is_none(), "the only pair is leased to ann");
    // Ann walks away: her lease runs out.
    sqlx::query("UPDATE assignments SET lease_expires = 0").execute(&s.store.pool).await.unwrap();
    assert_eq!(s.next(&ben).await.unwrap().pair, pair);
    // Ann comes back and answers: refused with a clear message, nothing stored.
    let r = s.label(&ann, &pair, RaterChoice::Left).await;
    assert_eq!(r.status, 409);
    assert!(r.message().contains("expired"), "{}", r.text);
    s.label(&ben, &pair, RaterChoice::Left).await.ok();
    assert_eq!(s.votes(&p.id).await.len(), 1);
    // An expired lease nobody took is still its holder's to answer.
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let a3 = s.next(&ann).await.unwrap();
    sqlx::query("UPDATE assignments SET lease_expires = 0 WHERE done = 0").execute(&s.store.pool).await.unwrap();
    s.label(&ann, &a3.pair, RaterChoice::Right).await.ok();
}

backend_test!(gold_pairs_are_mixed_in_and_scored_but_never_revealed);
async fn gold_pairs_are_mixed_in_and_scored_but_never_revealed(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("gold", cfg(1, 1.0)).await;
    s.trl_pairs(&p.id, 2, "gold=true").await;
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let ann = s.rater(&p.id, "ann").await;
    // gold_rate 1: both gold pairs first (each once), then the real one.
    let mut seen = Vec::new();
    loop {
        // Whether a word about gold leaves the server is a question about the wire: the
        // reply is searched as text before it is decoded.
        let r = s.with_token(&ann).send(Method::POST, "/api/rate/next").await.ok();
        assert!(!r.text.contains("gold"), "{}", r.text);
        let Some(a) = r.json::<apl_shared::NextPair>().assignment else { break };
        let good_left = a.left.starts_with("good");
        // Right on the first gold pair, wrong on the second.
        let choice = if seen.is_empty() == good_left { RaterChoice::Left } else { RaterChoice::Right };
        s.label(&ann, &a.pair, choice).await.ok();
        seen.push(a.prompt);
    }
    assert_eq!(seen.len(), 3);
    let stats: Vec<RaterStats> = s.get(&format!("/api/projects/{}/raters", p.id)).await;
    assert_eq!((stats[0].gold_answered, stats[0].gold_correct, stats[0].labels), (2, 1, 3));
    // Gold votes are not training data.
    assert_eq!(s.dpo(&p.id, None).await.len(), 1);
}

backend_test!(raters_cannot_reach_admin_endpoints_or_each_other);
async fn raters_cannot_reach_admin_endpoints_or_each_other(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("auth", cfg(1, 0.0)).await;
    s.trl_pairs(&p.id, 2, "rate=true").await;
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
    // Well-formed bodies, so that only the token can be why a call is refused.
    let project = NewProject { name: "sneaky".into(), task: Task::Generic, config: None };
    let job = NewJob { kind: JobKind::Round, params: JobParams::default() };
    let admin_calls = [
        (Method::GET, "/api/projects".to_string(), None),
        (Method::POST, "/api/projects".to_string(), Some(typed(&project))),
        (Method::GET, format!("/api/projects/{}", p.id), None),
        (Method::GET, format!("/api/projects/{}/raters", p.id), None),
        (Method::GET, format!("/api/projects/{}/pairs", p.id), None),
        (Method::GET, format!("/api/projects/{}/export/votes.csv", p.id), None),
        (Method::GET, format!("/api/projects/{}/export/dpo.jsonl", p.id), None),
        (Method::POST, format!("/api/projects/{}/jobs", p.id), Some(typed(&job))),
        (Method::PUT, format!("/api/projects/{}/config", p.id), Some(typed(&ProjectConfig::default()))),
        (Method::POST, "/api/pair".to_string(), Some(typed(&apl_shared::PairRequest::default()))),
    ];
    for (m, path, body) in &admin_calls {
        for (caller, status) in
            [(s.with_token(&ann), 403), (s.anonymous(), 401), (s.with_token("apl_admin_guess"), 401)]
        {
            let r = match body {
                Some(body) => caller.send_json(m.clone(), path, body).await,
                None => caller.send(m.clone(), path).await,
            };
            assert_eq!(r.status, status, "{m} {path}: {}", r.text);
        }
    }
    let up = s
        .with_token(&ann)
        .upload(&format!("/api/projects/{}/prompts?format=jsonl", p.id), b"{}".to_vec(), "text/plain")
        .await;
    assert_eq!(up.status, 403);
    // The admin token is not a rater token.
    assert_eq!(s.admin().send(Method::POST, "/api/rate/next").await.status, 401);

    // Ann's pair is invisible to Ben: he can neither label it nor undo on it.
    let a = s.next(&ann).await.unwrap();
    let r = s.label(&ben, &a.pair, RaterChoice::Left).await;
    assert!(r.status == 409 || r.status == 404, "{}", r.text);
    assert!(!r.text.contains(&a.left));
    s.label(&ann, &a.pair, RaterChoice::Left).await.ok();
    let r = s.with_token(&ben).send(Method::DELETE, &format!("/api/rate/labels/{}", a.pair)).await;
    assert_eq!(r.status, 404);
    let own: Vec<LabelAck> = s.with_token(&ben).get("/api/rate/labels").await;
    assert!(own.is_empty());
    // A removed rater is locked out at once and their lease returns to the pool.
    let rb = s.next(&ben).await.unwrap();
    let raters: Vec<RaterStats> = s.get(&format!("/api/projects/{}/raters", p.id)).await;
    let ben_id = &raters.iter().find(|r| r.name == "ben").unwrap().id;
    let r = s.admin().send(Method::DELETE, &format!("/api/projects/{}/raters/{ben_id}", p.id)).await;
    assert_eq!(r.status, 204);
    assert_eq!(s.with_token(&ben).send(Method::GET, "/api/rate/me").await.status, 401);
    assert_eq!(s.next(&ann).await.unwrap().pair, rb.pair);
}

backend_test!(malformed_input_is_refused_with_a_message_and_nothing_stored);
/// Requests that must be refused are mostly ones the request types cannot express (an
/// unknown task or field, a malformed body): they are written as `serde_json::Value`, and
/// the refusal's message is what is checked. Where the types can express the mistake (a
/// value out of range), they build the body.
async fn malformed_input_is_refused_with_a_message_and_nothing_stored(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("bad", cfg(1, 0.0)).await;
    let before = s.stats(&p.id).await;
    let cases = [
        (
            format!("/api/projects/{}/prompts?format=jsonl", p.id),
            "{\"prompt\": \"ok\"}\n{\"prompt\": 5}\n",
            "upload:2:",
        ),
        (format!("/api/projects/{}/prompts?format=csv", p.id), "prompt\nfine\n\"\"\n", "upload:3:"),
        (format!("/api/projects/{}/prompts?format=xml", p.id), "x", "format"),
        (format!("/api/projects/{}/prompts?format=jsonl&split=test", p.id), "{\"prompt\": \"ok\"}\n", "split"),
        (format!("/api/projects/{}/prompts?format=jsonl&bogus=1", p.id), "{\"prompt\": \"ok\"}\n", "bogus"),
        (
            format!("/api/projects/{}/pairs?format=trl", p.id),
            "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"chosen\":\"a\"}\n",
            "upload:2: no \"rejected\"",
        ),
    ];
    for (path, body, want) in cases {
        let r = s.admin().upload(&path, body.as_bytes().to_vec(), "text/plain").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.message().contains(want), "{path}: {}", r.text);
    }
    let r =
        s.admin().upload(&format!("/api/projects/{}/prompts?format=jsonl", p.id), vec![0xff, 0xfe], "text/plain").await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("UTF-8"), "{}", r.text);
    assert_eq!(s.stats(&p.id).await, before, "nothing stored");

    let project =
        |name: &str, config: Option<ProjectConfig>| NewProject { name: name.into(), task: Task::Generic, config };
    let zero_overlap =
        ProjectConfig { rating: RatingConfig { overlap: 0, ..Default::default() }, ..Default::default() };
    let negative_beta = ProjectConfig {
        loop_settings: LoopSettings { train: TrainConfig { beta: -1.0, ..Default::default() }, ..Default::default() },
        ..Default::default()
    };
    let json_cases = [
        (Method::POST, "/api/projects".to_string(), json!({"name": "x", "task": "poetry"}), "task"),
        (Method::POST, "/api/projects".to_string(), typed(&project("bad", None)), "already exists"),
        (Method::POST, "/api/projects".to_string(), json!({"name": "y", "colour": 1}), "colour"),
        (Method::POST, "/api/projects".to_string(), typed(&project("z", Some(zero_overlap))), "overlap"),
        (
            Method::POST,
            "/api/projects".to_string(),
            json!({"name": "z", "config": {"loop_settings": {"acquisition": "magic"}}}),
            "loop_settings",
        ),
        (Method::PUT, format!("/api/projects/{}/config", p.id), typed(&negative_beta), "beta"),
        (
            Method::PUT,
            format!("/api/projects/{}/config", p.id),
            json!({"rating": {"auto_continue": {"fraction": 0.0}}}),
            "rating.auto_continue.fraction: must be above 0",
        ),
        (
            Method::PUT,
            format!("/api/projects/{}/config", p.id),
            json!({"rating": {"auto_continue": {"fraction": 1.5}}}),
            "at most 1",
        ),
        (
            Method::PUT,
            format!("/api/projects/{}/config", p.id),
            json!({"rating": {"auto_continue": {"when": "later"}}}),
            "when",
        ),
        (
            Method::POST,
            format!("/api/projects/{}/raters", p.id),
            typed(&NewRater { name: String::new(), ..Default::default() }),
            "name",
        ),
        (Method::POST, format!("/api/projects/{}/jobs", p.id), json!({"kind": "dance"}), "kind"),
        (
            Method::POST,
            format!("/api/projects/{}/jobs", p.id),
            typed(&NewJob { kind: JobKind::Generate, params: JobParams { pairs: Some(0), ..Default::default() } }),
            "pairs",
        ),
    ];
    for (m, path, body, want) in json_cases {
        let r = s.admin().send_json(m.clone(), &path, &body).await;
        assert!(r.status == 400 || r.status == 409, "{m} {path} {body}: {}", r.text);
        assert!(r.message().contains(want), "{m} {path} {body}: {}", r.text);
    }
    for (path, want) in [
        (format!("/api/projects/{}/pairs?limit=0", p.id), "limit"),
        (format!("/api/projects/{}/export/dpo.jsonl?source=crowd", p.id), "source"),
    ] {
        let r = s.admin().send(Method::GET, &path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.message().contains(want), "{path}: {}", r.text);
    }
    let r = s.admin().upload("/api/projects", b"{not json".to_vec(), "application/json").await;
    assert_eq!(r.status, 400);
    assert!(r.message().starts_with("request body"), "{}", r.text);
    let r = s.admin().send_json(Method::POST, "/api/projects", &project(&"x".repeat(100_000), None)).await;
    assert_eq!(r.status, 413);
    assert!(r.message().contains("too large"), "{}", r.text);
    assert_eq!(s.admin().send(Method::GET, "/api/projects/nope").await.status, 404);
    assert_eq!(s.get::<Vec<Project>>("/api/projects").await.len(), 1);

    // Raters' malformed labels.
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let ann = s.rater(&p.id, "ann").await;
    let pair = s.next(&ann).await.unwrap().pair;
    let label = |pair: &str, rationale: Option<String>| apl_shared::LabelRequest {
        pair: pair.into(),
        choice: RaterChoice::Left,
        time_ms: 0,
        rationale,
        next: false,
    };
    for (body, want) in [
        (json!({"pair": pair, "choice": "up"}), "request body"),
        (typed(&label(&pair, Some("x".repeat(3000)))), "rationale"),
        (json!({"pair": pair, "choice": "left", "extra": 1}), "extra"),
        (typed(&label("nope", None)), "not assigned"),
    ] {
        let r = s.with_token(&ann).send_json(Method::POST, "/api/rate/labels", &body).await;
        assert!(r.status == 400 || r.status == 404, "{body}: {}", r.text);
        assert!(r.message().contains(want), "{body}: {}", r.text);
    }
    assert!(s.votes(&p.id).await.is_empty());
}

backend_test!(many_raters_at_once_never_exceed_the_overlap, flavor = "multi_thread", worker_threads = 4);
async fn many_raters_at_once_never_exceed_the_overlap(b: Backend) {
    let s = std::sync::Arc::new(common::start(&b, Default::default()).await);
    let p = s.project("race", cfg(2, 0.0)).await;
    s.trl_pairs(&p.id, 12, "rate=true").await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(s.rater(&p.id, &format!("r{i}")).await);
    }
    let mut handles = Vec::new();
    for t in tokens {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let r = s.with_token(&t).send(Method::POST, "/api/rate/next").await;
                if r.status == 409 {
                    continue; // others took every open pair at once: ask again
                }
                let Some(a) = r.ok().json::<apl_shared::NextPair>().assignment else { return n };
                s.label(&t, &a.pair, RaterChoice::Left).await.ok();
                n += 1;
            }
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    assert_eq!(total, 24, "12 pairs x overlap 2");
    let mut per_pair: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for v in s.votes(&p.id).await {
        let fresh = per_pair.entry(v.pair_id).or_default().insert(v.rater_id);
        assert!(fresh, "one label per (pair, rater)");
    }
    assert_eq!(per_pair.len(), 12);
    assert!(per_pair.values().all(|r| r.len() == 2));
}
