//! Attacks and accidents, reproduced over HTTP as an outsider would try them (issue: hardening):
//! each test is the reproduction, and fails on a server without the fix.

mod common;

use apl_shared::{ProjectConfig, RaterChoice, RatingConfig};
use common::Backend;
use reqwest::Method;

// A rater's rationale and a rater's name that a spreadsheet would run as formulas reach the
// admin's `votes.csv` as text: every such cell starts with `'`.
backend_test!(csv_exports_carry_no_formulas);
async fn csv_exports_carry_no_formulas(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let cfg = ProjectConfig { rating: RatingConfig { overlap: 1, ..Default::default() }, ..Default::default() };
    let p = s.project("=HYPERLINK(\"http://evil.example\")", cfg).await;
    s.trl_pairs(&p.id, 2, "rate=true").await;
    let attacks = ["=cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0"];
    let token = s.rater(&p.id, "+cmd|' /C calc'!A0").await;
    for rationale in attacks {
        let a = s.next(&token).await.unwrap();
        let body = apl_shared::LabelRequest {
            pair: a.pair,
            choice: RaterChoice::Left,
            time_ms: 900,
            rationale: Some(rationale.into()),
            next: false,
        };
        s.with_token(&token).send_json(Method::POST, "/api/rate/labels", &body).await.ok();
    }
    let csv = s.admin().send(Method::GET, &format!("/api/projects/{}/export/votes.csv", p.id)).await.ok();
    let mut read = csv::Reader::from_reader(csv.text.as_bytes());
    let header = read.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = read.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let mut rationales: Vec<&str> = rows.iter().map(|r| &r[col("rationale")]).collect();
    rationales.sort_unstable();
    assert_eq!(rationales, ["'=cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"]);
    assert!(rows.iter().all(|r| &r[col("rater")] == "'+cmd|' /C calc'!A0"));
    // Numbers stay numbers.
    assert!(rows.iter().all(|r| &r[col("time_ms")] == "900"));
    // No cell of the file starts a formula.
    for r in &rows {
        for cell in r.iter() {
            let t = cell.trim_start();
            assert!(!t.starts_with(['=', '+', '@']) && !cell.starts_with(['\t', '\r']), "{cell:?}");
        }
    }
}

/// What a scripted judge saw: requests (with their Authorization header) per path.
#[derive(Default)]
struct Seen {
    auth: Vec<Option<String>>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Seen>>;

/// A chat-completions server on 127.0.0.1 that records every request and answers with `reply`.
async fn judge_server(reply: fn() -> axum::response::Response) -> (u16, Shared) {
    use axum::http::HeaderMap;
    let seen: Shared = Default::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            s.lock().unwrap().auth.push(headers.get("authorization").map(|v| v.to_str().unwrap().to_string()));
            reply()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

fn answer_a() -> axum::response::Response {
    use axum::response::IntoResponse;
    axum::Json(serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": "Comparison: fine.\nPreferred: A"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5}
    }))
    .into_response()
}

const KEY: &str = "sk-hardening-test-0123456789";

/// A server whose judge key is in its secrets file, with these `--judge-allow` entries.
async fn server_with_key(allow: &[&str]) -> (common::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("JUDGE_API_KEY={KEY}\n")).unwrap();
    let opts = common::Options {
        judge_allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        secrets_file: Some(secrets),
        ..Default::default()
    };
    (common::start(&Backend::Sqlite, opts).await, dir)
}

/// A project whose rounds are labelled by the judge at `base_url`; runs one round, returns it.
async fn judged_round(s: &common::Server, base_url: &str) -> apl_shared::Job {
    use apl_shared::settings::{AcquireConfig, EvalSettings, JudgeSettings, LoopSettings, TrainConfig};
    use apl_shared::{JobKind, JobParams, Labeller, Split};
    let cfg = ProjectConfig {
        loop_settings: LoopSettings {
            pairs_per_round: 2,
            acquire: AcquireConfig { batch_size: 4, ..Default::default() },
            completion_tokens: (3, 4),
            labeller: Labeller::Judge,
            train: TrainConfig { epochs: 1, pairs_per_step: 2, micro_batch: 2, ..Default::default() },
            eval: EvalSettings { prompts: 2, judge: Labeller::Length, batch_size: 2, ..Default::default() },
            judge: JudgeSettings {
                base_url: base_url.into(),
                model: "m".into(),
                api_key_env: Some("JUDGE_API_KEY".into()),
                retries: 1,
                backoff_seconds: 0.01,
                timeout_seconds: 5.0,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let p = s.project(&format!("judged {}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)), cfg).await;
    let texts = |split: Split, n: usize| -> Vec<String> { (0..n).map(|i| format!("{split} prompt {i} was")).collect() };
    s.prompts(&p.id, Split::Train, &texts(Split::Train, 8)).await;
    s.prompts(&p.id, Split::Eval, &texts(Split::Eval, 2)).await;
    let j = s.job(&p.id, JobKind::Round, JobParams::default()).await;
    s.wait(&j.id).await
}

/// Every spelling of an internal address is refused after resolution, before a connection:
/// the judge never sees a request, let alone the key; the job says why and how to allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_reaches_no_internal_address_unless_allowed() {
    let (port, seen) = judge_server(answer_a).await;
    let (s, _dir) = server_with_key(&[]).await;
    for host in ["127.0.0.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]", "[::1]", "localhost", "127.1"] {
        let job = judged_round(&s, &format!("http://{host}:{port}/v1")).await;
        assert_eq!(job.state, apl_shared::JobState::Failed, "{host}: {job:?}");
        let err = job.error.unwrap_or_default();
        assert!(err.contains("internal address") && err.contains("--judge-allow"), "{host}: {err}");
        assert!(!err.contains(KEY));
    }
    for (host, kind) in [("169.254.169.254", "link-local"), ("10.0.0.1", "private"), ("[fd00::1]", "unique-local")] {
        let job = judged_round(&s, &format!("http://{host}/v1")).await;
        assert!(job.error.unwrap_or_default().contains(kind), "{host}");
    }
    assert!(seen.lock().unwrap().auth.is_empty(), "a refused host saw a request");

    // Allowed by the operator: the same judge works, with the key.
    let (s, _dir) = server_with_key(&["127.0.0.1"]).await;
    let job = judged_round(&s, &format!("http://127.0.0.1:{port}/v1")).await;
    assert_eq!(job.state, apl_shared::JobState::Done, "{job:?}");
    let auth = seen.lock().unwrap().auth.clone();
    assert!(!auth.is_empty() && auth.iter().all(|a| a.as_deref() == Some(&format!("Bearer {KEY}")[..])));
}

/// A judge that redirects elsewhere (a 307 would re-POST the prompt and the key) is not
/// followed; a reply of the wrong shape is described, never echoed; an endless reply is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_odd_replies_and_huge_replies_are_refused() {
    use axum::response::IntoResponse;
    let (target, target_seen) = judge_server(answer_a).await;
    static TARGET: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    TARGET.set(target).unwrap();
    let (redirect, _) = judge_server(|| {
        let to = format!("http://127.0.0.1:{}/v1/chat/completions", TARGET.get().unwrap());
        (axum::http::StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to)]).into_response()
    })
    .await;
    let (odd, _) = judge_server(|| {
        axum::Json(serde_json::json!({"error": "SECRET-INTERNAL-TEXT from the server", "id": 1})).into_response()
    })
    .await;
    let (huge, _) = judge_server(|| {
        let body = format!("{{\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}]}}", "A".repeat(3 << 20));
        ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
    })
    .await;
    let (s, _dir) = server_with_key(&["127.0.0.1"]).await;

    let job = judged_round(&s, &format!("http://127.0.0.1:{redirect}/v1")).await;
    let err = job.error.unwrap_or_default();
    assert!(err.contains("307") && err.contains("not followed"), "{err}");
    assert!(target_seen.lock().unwrap().auth.is_empty(), "the redirect was followed");

    let job = judged_round(&s, &format!("http://127.0.0.1:{odd}/v1")).await;
    let err = job.error.unwrap_or_default();
    assert!(err.contains("fields [error, id]") && !err.contains("SECRET"), "{err}");
    // Nor is it in the audit logs.
    let logs: Vec<String> = std::fs::read_dir(s.dir.path().join("judge"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!logs.is_empty() && logs.iter().all(|l| !l.contains("SECRET")));

    let job = judged_round(&s, &format!("http://127.0.0.1:{huge}/v1")).await;
    let err = job.error.unwrap_or_default();
    assert!(err.contains("over 1048576 bytes"), "{err}");
}

/// Cancelling a job stops its judge calls in flight: with a judge that takes 30 s per answer,
/// the cancelled job ends within seconds (it used to hold the worker for the whole call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_drops_its_judge_calls_in_flight() {
    use apl_shared::{Job, JobState};
    let seen: Shared = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move || {
        let s = s2.clone();
        async move {
            s.lock().unwrap().auth.push(None);
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            answer_a()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (s, _dir) = server_with_key(&["127.0.0.1"]).await;
    let started = std::time::Instant::now();
    let round = {
        let s = &s;
        async move { judged_round(s, &format!("http://127.0.0.1:{port}/v1")).await }
    };
    let cancel = async {
        // Wait for the first judge call, then cancel the running job.
        while seen.lock().unwrap().auth.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let projects: Vec<apl_shared::Project> = s.get("/api/projects").await;
        let jobs: Vec<Job> = s.get(&format!("/api/projects/{}/jobs", projects[0].id)).await;
        let running = jobs.iter().find(|j| j.state == JobState::Running).expect("a running job");
        let _: Job = s.admin().post_empty(&format!("/api/jobs/{}/cancel", running.id)).await;
    };
    let (job, ()) = tokio::join!(round, cancel);
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// A round the tiny fixture model runs in a moment: 3 pairs, labelled and judged by length.
fn tiny_round() -> apl_shared::settings::LoopSettings {
    use apl_shared::Labeller;
    use apl_shared::settings::{AcquireConfig, EvalSettings, LoopSettings, TrainConfig};
    LoopSettings {
        pairs_per_round: 3,
        acquire: AcquireConfig { batch_size: 4, ..Default::default() },
        completion_tokens: (3, 6),
        exact_length: false,
        labeller: Labeller::Length,
        train: TrainConfig { epochs: 1, pairs_per_step: 2, micro_batch: 2, ..Default::default() },
        eval: EvalSettings { prompts: 2, judge: Labeller::Length, batch_size: 2, ..Default::default() },
        ..Default::default()
    }
}

/// The DPO export defaults to the labels training uses (a judge-labelled project exported
/// nothing by default), and an export with nothing in it is a clear refusal, not an empty file
/// that crashes `datasets`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpo_export_follows_training_and_never_answers_empty() {
    use apl_shared::{JobKind, JobParams, JobState, LabelSource, Split};
    let s = common::start(&Backend::Sqlite, Default::default()).await;
    let cfg = ProjectConfig { loop_settings: tiny_round(), ..Default::default() };
    let p = s.project("judged", cfg).await;
    let path = format!("/api/projects/{}/export/dpo.jsonl", p.id);
    let r = s.admin().send(Method::GET, &path).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.message().contains("no preferences from human_then_judge labels"), "{}", r.text);
    let texts = |split: Split| -> Vec<String> { (0..8).map(|i| format!("{split} prompt {i} was")).collect() };
    s.prompts(&p.id, Split::Train, &texts(Split::Train)).await;
    s.prompts(&p.id, Split::Eval, &texts(Split::Eval)).await;
    let j = s.wait(&s.job(&p.id, JobKind::Round, JobParams::default()).await.id).await;
    assert_eq!(j.state, JobState::Done, "{j:?}");
    // The default (the project's train_on) holds the labeller's preferences.
    let rows = s.dpo(&p.id, None).await;
    assert!(!rows.is_empty());
    assert_eq!(rows, s.dpo(&p.id, Some(LabelSource::Judge)).await);
    // Only human labels asked for: none, and the refusal says so.
    let r = s.admin().send(Method::GET, &format!("{path}?source=human")).await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("from human labels"), "{}", r.text);
}

// One rater submitting and undoing the same pair at once, over and over (two browser tabs, a
// retrying client): every answer is a 2xx or a clear 4xx, never a 500, and the pair's vote
// count always equals its stored labels (it went negative on PostgreSQL).
backend_test!(concurrent_submit_and_undo_stay_consistent, flavor = "multi_thread", worker_threads = 4);
async fn concurrent_submit_and_undo_stay_consistent(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let cfg = ProjectConfig { rating: RatingConfig { overlap: 1, ..Default::default() }, ..Default::default() };
    let p = s.project("race", cfg).await;
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let token = s.rater(&p.id, "ann").await;
    let pair = s.next(&token).await.unwrap().pair;
    let body = apl_shared::LabelRequest {
        pair: pair.clone(),
        choice: RaterChoice::Left,
        time_ms: 5,
        rationale: None,
        next: false,
    };
    for round in 0..5 {
        let mut calls = Vec::new();
        for k in 0..8 {
            let (s, token, body, pair) = (&s, token.clone(), body.clone(), pair.clone());
            calls.push(async move {
                if k % 2 == 0 {
                    s.with_token(&token).send_json(Method::POST, "/api/rate/labels", &body).await
                } else {
                    s.with_token(&token).send(Method::DELETE, &format!("/api/rate/labels/{pair}")).await
                }
            });
        }
        for r in futures_util::future::join_all(calls).await {
            assert!(r.status < 500, "round {round}: {} {} -> {}: {}", r.method, r.path, r.status, r.text);
        }
        let (votes, labels): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT votes FROM pairs WHERE id = $1), \
             (SELECT COUNT(*) FROM labels WHERE pair_id = $1 AND choice <> 'skip')",
        )
        .bind(&pair)
        .fetch_one(&s.store.pool)
        .await
        .unwrap();
        assert_eq!(votes, labels, "round {round}: votes {votes}, labels {labels}");
        assert!((0..=1).contains(&votes), "round {round}: {votes}");
    }
}

// Guessing rater tokens: after 30 wrong tokens in a minute the address is refused (429 with
// Retry-After) whatever it presents, a correct token included, so a guess cannot get through
// (other addresses: `api::limit`'s unit test). `?access_token=` works only on the event streams. An invite
// with an expiry stops working after it, saying so.
backend_test!(token_guessing_is_limited_and_invites_expire);
async fn token_guessing_is_limited_and_invites_expire(b: Backend) {
    let s = common::start(&b, Default::default()).await;
    let p = s.project("limits", ProjectConfig::default()).await;
    s.trl_pairs(&p.id, 2, "rate=true").await;
    let good = s.rater(&p.id, "ann").await;
    // A token in the URL is not accepted on ordinary routes.
    let r = s.anonymous().send(Method::POST, &format!("/api/rate/next?access_token={good}")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = s.anonymous().send(Method::GET, &format!("/api/projects?access_token={}", common::ADMIN)).await;
    assert_eq!(r.status, 401, "{}", r.text);

    let mut statuses = Vec::new();
    for i in 0..40 {
        let guess = format!("apl_rater_guess{i:032}");
        statuses.push(s.with_token(&guess).send(Method::POST, "/api/rate/next").await.status);
    }
    assert!(statuses[..30].iter().all(|&c| c == 401), "{statuses:?}");
    assert!(statuses[30..].iter().all(|&c| c == 429), "{statuses:?}");
    let r = s.with_token(&good).send(Method::POST, "/api/rate/next").await;
    assert_eq!(r.status, 429, "locked out, correct token or not: {}", r.text);
    assert!(r.message().contains("too many wrong tokens"), "{}", r.text);

    // An expiring invite (on a fresh server: this address is locked out here).
    let s = common::start(&b, Default::default()).await;
    let p = s.project("expiry", ProjectConfig::default()).await;
    let body = apl_shared::NewRater { name: "bo".into(), expires_in_hours: Some(0.0001), ..Default::default() };
    let inv: apl_shared::RaterInvite = s.post(&format!("/api/projects/{}/raters", p.id), &body).await;
    assert!(inv.rater.expires_at.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = s.with_token(&inv.token).send(Method::GET, "/api/rate/me").await;
    assert_eq!(r.status, 401);
    assert!(r.message().contains("expired"), "{}", r.text);
    let bad = apl_shared::NewRater { name: "cy".into(), expires_in_hours: Some(-1.0), ..Default::default() };
    let r = s.admin().send_json(Method::POST, &format!("/api/projects/{}/raters", p.id), &bad).await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("expires_in_hours"), "{}", r.text);
}

// A rater with nothing to do learns why: no pairs yet (ask again in 30 s), every remaining pair
// leased to others (ask again when the first lease ends), or done. All three used to look the
// same ("no more pairs").
backend_test!(next_says_done_wait_or_nothing_yet);
async fn next_says_done_wait_or_nothing_yet(b: Backend) {
    use apl_shared::{NextPair, NextStatus};
    let s = common::start(&b, Default::default()).await;
    let cfg = ProjectConfig {
        rating: RatingConfig { overlap: 1, lease_seconds: 120, ..Default::default() },
        ..Default::default()
    };
    let p = s.project("why", cfg).await;
    let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
    let next = |t: String| {
        let s = &s;
        async move { s.with_token(&t).send(Method::POST, "/api/rate/next").await.ok().json::<NextPair>() }
    };
    let n = next(ben.clone()).await;
    assert_eq!((n.status, n.retry_after_seconds, n.assignment.is_none()), (NextStatus::NothingYet, Some(30), true));
    s.trl_pairs(&p.id, 1, "rate=true").await;
    let held = next(ann.clone()).await;
    assert_eq!(held.status, NextStatus::Assigned);
    let n = next(ben.clone()).await;
    assert_eq!(n.status, NextStatus::Wait, "{n:?}");
    assert!((110..=120).contains(&n.retry_after_seconds.unwrap()), "{n:?}");
    s.label(&ann, &held.assignment.unwrap().pair, RaterChoice::Left).await.ok();
    let n = next(ben.clone()).await;
    assert_eq!((n.status, n.retry_after_seconds), (NextStatus::Done, None));
    assert_eq!(next(ann).await.status, NextStatus::Done);
}

// Prompt imports: idempotent by text per split (the IMDB pool imported twice doubled the
// counts); a prompt past the model's context is refused with its record number instead of
// failing every later round; a prompt over the field cap, or with a NUL, refuses the file.
backend_test!(prompt_imports_are_idempotent_and_capped);
async fn prompt_imports_are_idempotent_and_capped(b: Backend) {
    use apl_shared::{ImportReport, Split};
    let s = common::start(&b, Default::default()).await;
    let p = s.project("imports", ProjectConfig::default()).await;
    let path = format!("/api/projects/{}/prompts?format=jsonl&split=train", p.id);
    let line = |t: &str| serde_json::json!({"prompt": t}).to_string() + "\n";
    let file: String = ["one", "two", "two", " one "].iter().map(|t| line(t)).collect();
    let first: ImportReport = s.admin().upload(&path, file.clone().into_bytes(), "text/plain").await.expect(201);
    assert_eq!((first.imported, first.duplicates, first.refused), (2, 2, 0));
    let again: ImportReport = s.admin().upload(&path, file.into_bytes(), "text/plain").await.expect(201);
    assert_eq!((again.imported, again.duplicates), (0, 4));
    // The same text in the other split is another prompt.
    let eval = format!("/api/projects/{}/prompts?format=jsonl&split=eval", p.id);
    let r: ImportReport = s.admin().upload(&eval, line("one").into_bytes(), "text/plain").await.expect(201);
    assert_eq!(r.imported, 1);
    assert_eq!(s.store.prompts(&p.id, Split::Train, false, 100).await.unwrap().len(), 2);

    // Longer than the model's context (the fixture's positions, less the completions).
    let long = "word ".repeat(3500);
    let file = line("fits") + &line(&long);
    let r: ImportReport = s.admin().upload(&path, file.into_bytes(), "text/plain").await.expect(201);
    assert_eq!((r.imported, r.refused), (1, 1));
    assert!(r.notes[0].starts_with("record 2: the prompt is") && r.notes[0].contains("positions"), "{:?}", r.notes);

    for (text, want) in [("x".repeat(20_001), "at most 20000"), ("a\0b".to_string(), "NUL")] {
        let r = s.admin().upload(&path, line(&text).into_bytes(), "text/plain").await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.message().contains(want) && r.message().contains("upload:1"), "{}", r.text);
    }
}

// Pair imports: a repeated row or a file imported twice adds nothing; a row's other fields come
// back in the DPO export; a file larger than the server takes is refused whole; the import
// commits in batches yet is seen all at once: an import that stopped half-way (a crash) is seen
// by nobody and is deleted with what it wrote.
backend_test!(pair_imports_are_idempotent_keep_their_fields_and_are_seen_whole);
async fn pair_imports_are_idempotent_keep_their_fields_and_are_seen_whole(b: Backend) {
    use apl_shared::{ImportReport, LabelSource, Split};
    let s = common::start(&b, common::Options { max_import_rows: 600, ..Default::default() }).await;
    let p = s.project("pairs", ProjectConfig::default()).await;
    let path = format!("/api/projects/{}/pairs?format=trl", p.id);
    let row = |i: usize| {
        let mut v = serde_json::json!({"prompt": format!("prompt {i}"), "chosen": "good", "rejected": "bad"});
        if i == 0 {
            v["score"] = serde_json::json!(0.9);
            v["id"] = serde_json::json!("hh-rlhf/0");
        }
        v.to_string() + "\n"
    };
    // 450 rows (nine batches), the last repeating the first.
    let file: String = (0..449).chain([0]).map(row).collect();
    let first: ImportReport =
        s.admin().upload(&path, file.clone().into_bytes(), "application/x-ndjson").await.expect(201);
    assert_eq!((first.imported, first.duplicates), (449, 1));
    let again: ImportReport = s.admin().upload(&path, file.into_bytes(), "application/x-ndjson").await.expect(201);
    assert_eq!((again.imported, again.duplicates), (0, 450));
    // The same texts as gold pairs are other pairs.
    let gold: ImportReport =
        s.admin().upload(&format!("{path}&gold=true"), row(1).into_bytes(), "application/x-ndjson").await.expect(201);
    assert_eq!(gold.imported, 1);

    let rows = s.dpo(&p.id, Some(LabelSource::Judge)).await;
    assert_eq!(rows.len(), 449);
    let with_fields = rows.iter().find(|r| r.prompt == "prompt 0").unwrap();
    let extra = with_fields.metadata.extra.as_ref().expect("the row's own fields");
    assert_eq!(serde_json::Value::Object(extra.0.clone()), serde_json::json!({"score": 0.9, "id": "hh-rlhf/0"}));
    assert!(rows.iter().filter(|r| r.prompt != "prompt 0").all(|r| r.metadata.extra.is_none()));

    let big: String = (1000..1601).map(row).collect();
    let r = s.admin().upload(&path, big.into_bytes(), "application/x-ndjson").await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.message().contains("601 records") && r.message().contains("--max-import-rows"), "{}", r.text);

    // While another import into the project runs (its heartbeat fresh), a second is refused: its
    // duplicates check could not see the first's rows.
    let pool = &s.store.pool;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    sqlx::query(
        "INSERT INTO imports (id, project_id, done, records, created_at, heartbeat) VALUES ('live', $1, 0, 9, $2, $2)",
    )
    .bind(&p.id)
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    let r = s.admin().upload(&path, row(7).into_bytes(), "application/x-ndjson").await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("another import into this project is running"), "{}", r.text);
    sqlx::query("DELETE FROM imports WHERE id = 'live'").execute(pool).await.unwrap();

    // An import that stopped after its first batch: its rows exist but nobody sees them.
    let stopped: ImportReport = s
        .admin()
        .upload(
            &format!("/api/projects/{}/prompts?format=jsonl&split=train", p.id),
            b"{\"prompt\":\"half\"}\n".to_vec(),
            "text/plain",
        )
        .await
        .expect(201);
    assert_eq!(stopped.imported, 1);
    sqlx::query(
        "INSERT INTO imports (id, project_id, done, records, created_at, heartbeat) VALUES ('stopped', $1, 0, 2, 0, 0)",
    )
    .bind(&p.id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE prompts SET import_id = 'stopped' WHERE text IN ('half', 'prompt 5')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE pairs SET import_id = 'stopped' WHERE prompt_id IN (SELECT id FROM prompts WHERE text = 'prompt 5')",
    )
    .execute(pool)
    .await
    .unwrap();
    let visible = s.store.prompts(&p.id, Split::Train, true, 1000).await.unwrap();
    assert!(visible.iter().all(|q| q.text != "half"), "a prompt of an unfinished import is offered");
    let rows = s.dpo(&p.id, Some(LabelSource::Judge)).await;
    assert_eq!(rows.len(), 448, "a pair of an unfinished import is exported");
    assert_eq!(s.store.sweep_imports(false).await.unwrap(), 1);
    let count = |q: &'static str| async move { sqlx::query_scalar::<_, i64>(q).fetch_one(pool).await.unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM prompts WHERE text IN ('half', 'prompt 5')").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM imports WHERE done = 0").await, 0);
    // Nothing of another import went with it.
    assert_eq!(s.dpo(&p.id, Some(LabelSource::Judge)).await.len(), 448);
}

// Admins see a project's prompts with what became of them, disable one (no round draws it; its
// pairs stay) and delete one no pair uses; a prompt too long for the model that got in anyway
// (stored before the import check, or the completion length raised since) is passed over by
// acquisition and counted in the round, not allowed to fail every round.
backend_test!(
    prompts_are_listed_disabled_deleted_and_too_long_ones_passed_over,
    flavor = "multi_thread",
    worker_threads = 2
);
async fn prompts_are_listed_disabled_deleted_and_too_long_ones_passed_over(b: Backend) {
    use apl_shared::{JobKind, JobParams, JobState, PromptInfo, PromptUpdate, RoundRow, Split};
    let s = common::start(&b, Default::default()).await;
    let cfg = ProjectConfig { loop_settings: tiny_round(), ..Default::default() };
    let p = s.project("prompts", cfg).await;
    let texts: Vec<String> = (0..6).map(|i| format!("train prompt {i} was")).collect();
    s.prompts(&p.id, Split::Train, &texts).await;
    s.prompts(&p.id, Split::Eval, &["an eval prompt".to_string()]).await;
    let list = |q: &'static str| {
        let path = format!("/api/projects/{}/prompts{q}", p.id);
        let s = &s;
        async move { s.get::<Vec<PromptInfo>>(&path).await }
    };
    let all = list("").await;
    assert_eq!(all.len(), 7);
    let train = list("?split=train&limit=2&offset=1").await;
    assert_eq!(train.iter().map(|q| q.text.as_str()).collect::<Vec<_>>(), ["train prompt 1 was", "train prompt 2 was"]);
    assert!(all.iter().all(|q| !q.disabled && q.pairs == 0 && q.used_round.is_none()));

    // Disable the first training prompt; store one too long for the model as an old server did.
    let first = &all[0];
    assert_eq!(first.text, "train prompt 0 was");
    let one = |id: &str| format!("/api/projects/{}/prompts/{id}", p.id);
    let r = s.admin().send_json(Method::PATCH, &one(&first.id), &PromptUpdate { disabled: true }).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let long = "word ".repeat(3500);
    sqlx::query(
        "INSERT INTO prompts (id, project_id, text, reference, split, source, used_round, created_at) \
         VALUES ('long', $1, $2, NULL, 'train', 'upload', NULL, 0)",
    )
    .bind(&p.id)
    .bind(&long)
    .execute(&s.store.pool)
    .await
    .unwrap();
    let j = s.wait(&s.job(&p.id, JobKind::Generate, JobParams::default()).await.id).await;
    assert_eq!(j.state, JobState::Done, "{j:?}");
    let rounds: Vec<RoundRow> = s.get(&format!("/api/projects/{}/rounds", p.id)).await;
    assert_eq!(rounds[0].stats.prompts_skipped, 1, "{:?}", rounds[0].stats);
    let after = list("?split=train").await;
    let by_text = |t: &str| after.iter().find(|q| q.text == t).unwrap().clone();
    assert!(by_text(&long).used_round.is_some(), "the long prompt is marked used, not drawn again");
    let disabled = by_text("train prompt 0 was");
    assert!(disabled.disabled && disabled.used_round.is_none() && disabled.pairs == 0, "{disabled:?}");
    let used = after.iter().find(|q| q.pairs > 0).expect("a prompt with a pair").clone();

    // Deleting: a prompt with pairs is refused (its labels would go), one without is gone.
    let r = s.admin().send(Method::DELETE, &one(&used.id)).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("disable it instead"), "{}", r.text);
    let r = s.admin().send(Method::DELETE, &one(&disabled.id)).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(list("?split=train").await.len(), after.len() - 1);
    for (method, want) in [(Method::DELETE, 404), (Method::PATCH, 404)] {
        let r = if method == Method::PATCH {
            s.admin().send_json(method, &one("nope"), &PromptUpdate { disabled: false }).await
        } else {
            s.admin().send(method, &one("nope")).await
        };
        assert_eq!(r.status, want, "{}", r.text);
    }
}

// Every SQLite connection of the pool runs with the settings durability rests on (WAL,
// synchronous FULL, foreign keys, a busy timeout); PostgreSQL's fsync and synchronous_commit
// are checked at start (a warning when off). A database made by the first schema, with data,
// migrates to today's with the data intact.
backend_test!(store_settings_hold_and_old_databases_migrate);
async fn store_settings_hold_and_old_databases_migrate(b: Backend) {
    use apl::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(&b, dir.path()).await;
    // The first schema only, as a server of that version made it, with a project, a rater and
    // a prompt in it.
    sqlx::any::install_default_drivers();
    let raw = if url.starts_with("postgres") { url.clone() } else { format!("sqlite://{url}?mode=rwc") };
    let pool = sqlx::AnyPool::connect(&raw).await.unwrap();
    let mut first = sqlx::migrate!("../server/migrations");
    first.migrations = std::borrow::Cow::Owned(first.migrations[..1].to_vec());
    first.run(&pool).await.unwrap();
    // Its settings as that version wrote them: no acquire.pair_lengths.
    let mut config = serde_json::to_value(ProjectConfig::default()).unwrap();
    config["loop_settings"]["acquire"].as_object_mut().unwrap().remove("pair_lengths");
    let config = config.to_string();
    for q in [
        format!(
            "INSERT INTO projects (id, name, task, config, created_at) VALUES ('p1', 'old', 'generic', '{config}', 1)"
        ),
        "INSERT INTO raters (id, project_id, name, token_hash, quota, disabled, created_at) \
         VALUES ('r1', 'p1', 'ann', 'h1', NULL, 0, 2)"
            .into(),
        "INSERT INTO prompts (id, project_id, text, reference, split, source, used_round, created_at) \
         VALUES ('q1', 'p1', 'an old prompt', NULL, 'train', 'upload', NULL, 3)"
            .into(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q)).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::connect(&url).await.unwrap();
    let old = store.project("p1").await.unwrap();
    assert_eq!(old.name, "old");
    // Its rounds keep drawing one length per pair, as before pair_lengths existed.
    assert_eq!(old.config.loop_settings.acquire.pair_lengths, apl_shared::settings::PairLengths::Matched);
    let raters = store.rater_stats("p1").await.unwrap();
    assert_eq!((raters.len(), raters[0].name.as_str(), raters[0].expires_at), (1, "ann", None));
    let prompts = store.prompts("p1", apl_shared::Split::Train, false, 10).await.unwrap();
    assert_eq!(prompts[0].text, "an old prompt");

    match b {
        Backend::Sqlite => {
            // All the pool's connections at once, so every one of them is looked at.
            let mut conns = Vec::new();
            for _ in 0..apl::store::SQLITE_CONNECTIONS {
                conns.push(store.pool.acquire().await.unwrap());
            }
            for c in &mut conns {
                let get = |q: &'static str| sqlx::query_scalar::<_, i64>(q);
                assert_eq!(get("PRAGMA foreign_keys").fetch_one(&mut **c).await.unwrap(), 1);
                assert_eq!(get("PRAGMA synchronous").fetch_one(&mut **c).await.unwrap(), 2, "FULL");
                assert_eq!(get("PRAGMA busy_timeout").fetch_one(&mut **c).await.unwrap(), 10_000);
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **c).await.unwrap();
                assert_eq!(mode, "wal");
            }
        }
        Backend::Postgres(_) => assert!(store.durability_problems().await.unwrap().is_empty()),
    }
    let warned = apl::store::durability_problems("off", "off");
    assert!(warned.len() == 2 && warned[0].contains("fsync = off") && warned[1].contains("synchronous_commit"));
    assert!(apl::store::durability_problems("on", "on").is_empty());
}
