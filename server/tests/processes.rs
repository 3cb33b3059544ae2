//! Scale-out over PostgreSQL: two API processes (`--no-worker`) and one process with the job
//! worker, all on one database, as behind a load balancer. Raters' requests alternate between
//! the two API processes, so the lease race runs across processes; every pair still gets
//! exactly `overlap` distinct raters and its vote count equals its stored labels. A job queued
//! through one API process waits for the worker (no API process runs it) and its result is seen
//! through the other. Needs APL_TEST_DATABASE_URL (CI sets it).

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use apl_shared::{Job, JobKind, JobState, Labeller, NewJob, NewProject, ProjectConfig, Task};
use common::process::{ADMIN, call, fresh_postgres, serve};
use reqwest::Method;
use serde_json::{Value, json};

const PAIRS: usize = 120;
const OVERLAP: u32 = 2;
const RATERS: usize = 6;

/// The server processes, killed however the test ends (a failed assertion included).
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// One rater labelling until nothing is left, sending request n to `bases[n % 2]`; returns
/// how many labels were acknowledged.
async fn label_across(c: reqwest::Client, bases: [String; 2], token: String) -> usize {
    let (mut n, mut labels) = (0usize, 0usize);
    loop {
        let base = &bases[n % 2];
        n += 1;
        let v = call(&c, Method::POST, format!("{base}/api/rate/next"), &token, None).await;
        let Some(pair) = v["assignment"]["pair"].as_str().map(str::to_string) else {
            match v["status"].as_str() {
                Some("done") => return labels,
                // What is left is leased to raters who are answering it: ask again soon.
                Some("wait") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                _ => panic!("{v}"),
            }
        };
        let base = &bases[n % 2];
        n += 1;
        let body = json!({"pair": pair, "choice": if labels % 2 == 0 { "left" } else { "right" }, "time_ms": 5});
        call(&c, Method::POST, format!("{base}/api/rate/labels"), &token, Some(body)).await;
        labels += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_and_a_worker_share_one_postgres() {
    let Ok(url) = std::env::var("APL_TEST_DATABASE_URL") else {
        eprintln!("APL_TEST_DATABASE_URL not set: several processes over PostgreSQL not checked here");
        return;
    };
    let db = fresh_postgres(&url, "apl_processes").await;
    let dir = tempfile::tempdir().unwrap();
    let (worker, _) = serve(&dir.path().join("w"), &db, &[]);
    let (api_a, a) = serve(&dir.path().join("a"), &db, &["--no-worker"]);
    let (api_b, b) = serve(&dir.path().join("b"), &db, &["--no-worker"]);
    let mut procs = Processes(vec![worker, api_a, api_b]);
    apl::judge::install_crypto();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();

    let mut config = ProjectConfig::default();
    config.rating.overlap = OVERLAP;
    config.loop_settings.labeller = Labeller::Length;
    let new = NewProject { name: "scale-out".into(), task: Task::Generic, config: Some(config) };
    let p = call(&c, Method::POST, format!("{a}/api/projects"), ADMIN, Some(serde_json::to_value(&new).unwrap())).await;
    let pid = p["id"].as_str().unwrap().to_string();
    let lines: String = (0..PAIRS)
        .map(|i| {
            json!({"prompt": format!("p{i}"), "chosen": format!("c{i}"), "rejected": format!("r{i}")}).to_string()
                + "\n"
        })
        .collect();
    let r = c
        .post(format!("{b}/api/projects/{pid}/pairs?format=trl&rate=true"))
        .bearer_auth(ADMIN)
        .body(lines)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut tokens = Vec::new();
    for i in 0..RATERS {
        let base = if i % 2 == 0 { &a } else { &b };
        let inv = call(
            &c,
            Method::POST,
            format!("{base}/api/projects/{pid}/raters"),
            ADMIN,
            Some(json!({"name": format!("r{i}")})),
        )
        .await;
        tokens.push(inv["token"].as_str().unwrap().to_string());
    }

    // Every rater at once, each alternating between the two API processes.
    let raters: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bases = if i % 2 == 0 { [a.clone(), b.clone()] } else { [b.clone(), a.clone()] };
            tokio::spawn(label_across(c.clone(), bases, t.clone()))
        })
        .collect();
    let mut acknowledged = 0;
    for r in raters {
        acknowledged += r.await.unwrap();
    }
    assert_eq!(acknowledged, PAIRS * OVERLAP as usize, "every pair labelled by exactly {OVERLAP} raters");
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.votes, p.target_votes, (SELECT COUNT(DISTINCT l.rater_id) FROM labels l WHERE l.pair_id = p.id) \
         FROM pairs p WHERE p.project_id = $1",
    )
    .bind(&pid)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), PAIRS);
    for (pair, votes, target, raters) in &rows {
        assert_eq!((*votes, *raters), (*target, *target), "pair {pair}: votes, distinct raters and the target agree");
    }
    let per_rater: HashMap<String, i64> = sqlx::query_as("SELECT rater_id, COUNT(*) FROM labels GROUP BY rater_id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(per_rater.len(), RATERS, "every rater labelled: {per_rater:?}");

    // A job queued through A with the worker stopped stays queued: no API process runs jobs.
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let job = NewJob { kind: JobKind::Label, params: Default::default() };
    let queued: Job = serde_json::from_value(
        call(
            &c,
            Method::POST,
            format!("{a}/api/projects/{pid}/jobs"),
            ADMIN,
            Some(serde_json::to_value(&job).unwrap()),
        )
        .await,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = |base: String| {
        let (c, id) = (c.clone(), queued.id.clone());
        async move {
            serde_json::from_value::<Job>(call(&c, Method::GET, format!("{base}/api/jobs/{id}"), ADMIN, None).await)
                .unwrap()
        }
    };
    assert_eq!(seen(b.clone()).await.state, JobState::Queued);
    // The worker back: it runs the job, and B sees it done.
    procs.0[0] = serve(&dir.path().join("w"), &db, &[]).0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = seen(b.clone()).await;
        if j.state.is_finished() {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "the worker did not run the job: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let judged: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM judge_labels WHERE judge <> 'import'").fetch_one(&pool).await.unwrap();
    assert_eq!(judged as usize, PAIRS, "the length labeller judged every pair");
    let _: Value = call(&c, Method::GET, format!("{a}/api/health"), ADMIN, None).await;
}
