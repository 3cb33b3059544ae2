//! The web frontend in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/run.mjs`) against the real server on the tiny model. This side starts and
//! fills the server, runs the script, and checks what it reports against the database:
//!
//! - a rater labels with the keyboard only, undoes one answer, and loses the connection once:
//!   the database holds exactly the labels given, each once;
//! - an admin starts a round from the dashboard and sees its live progress reach "done";
//! - a human win-rate check is sent from the evaluation panel, a rater labels it, and the
//!   figure the panel shows equals the one computed here from the stored labels;
//! - every page renders without console errors; screenshots of each go to
//!   `target/browser-screenshots/` (or `APL_SCREENSHOTS`).
//!
//! Needs the built frontend (`cargo xtask test` builds it first), Node with
//! `tests/browser/node_modules` (`npm ci` there; `cargo xtask test` does it) and chromium
//! (`/usr/bin/chromium`, or `APL_CHROMIUM`). `APL_SKIP_BROWSER=1` skips it, saying so.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{Backend, Options};
use serde_json::{Value, json};
use sqlx::Row;

/// Typed into the rationale field: its "2" and "t" must stay text, not answer the pair.
const RATIONALE: &str = "2 reasons: tone and topic";

fn chromium() -> Option<PathBuf> {
    let p = std::env::var("APL_CHROMIUM").map(PathBuf::from).unwrap_or_else(|_| "/usr/bin/chromium".into());
    p.exists().then_some(p)
}

fn tiny_round_config() -> Value {
    json!({
        "loop_settings": {
            "acquisition": "random",
            "pairs_per_round": 8,
            "acquire": {"over_generate": 2, "batch_size": 8},
            "completion_tokens": [6, 10],
            "labeller": "length",
            "trainable": {"kind": "all"},
            // Enough epochs that the round outlasts the page's first look at it (with 2, a
            // fast machine finished it in 0.1 s, before the live progress was ever drawn).
            "train": {"epochs": 12, "pairs_per_step": 2, "micro_batch": 2, "adam": {"lr": 1e-3}},
            "eval": {"prompts": 12, "judge": "length", "batch_size": 6}
        }
    })
}

async fn prompts(s: &common::Server, project: &str, split: &str, n: usize) {
    let body: String =
        (0..n).map(|i| json!({"prompt": format!("{split} prompt number {i} is")}).to_string() + "\n").collect();
    let path = format!("/api/projects/{project}/prompts?format=jsonl&split={split}");
    s.raw("POST", &path, Some(common::ADMIN), body.into_bytes(), "text/plain").await.ok();
}

/// What a screen answer means for a pair shown with `left` (a or b) on the left.
fn stored(screen: &str, left: &str) -> String {
    let other = if left == "a" { "b" } else { "a" };
    match screen {
        "left" | "1" => left.into(),
        "right" | "2" => other.into(),
        "t" | "tie" => "tie".into(),
        "x" => "both_bad".into(),
        "skip" => "skip".into(),
        k => panic!("unexpected answer {k}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raters_admins_and_the_panel_in_chromium() {
    if std::env::var("APL_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: APL_SKIP_BROWSER=1");
        return;
    }
    let root = common::root();
    let dist = root.join("dist");
    assert!(
        dist.join("index.html").exists(),
        "the frontend is not built: run `cargo xtask frontend` (or `cargo xtask test`)"
    );
    let browser =
        chromium().expect("no chromium: `apt install chromium`, or set APL_CHROMIUM (APL_SKIP_BROWSER=1 skips)");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci` in tests/browser (`cargo xtask test` does)"
    );

    let s = common::start(&Backend::Sqlite, Options { dist: Some(dist), ..Default::default() }).await;
    // A project with six pairs for raters, and two raters.
    let k = s.project("ratings", json!({})).await;
    s.trl_pairs(&k.id, 6, "rate=true").await;
    let rater = s.rater(&k.id, "Kim").await;
    let phone = s.rater(&k.id, "Pat").await;
    // A project whose rounds run on the tiny model, with one rater for a human check.
    let p = s.project("loop", tiny_round_config()).await;
    prompts(&s, &p.id, "train", 40).await;
    prompts(&s, &p.id, "eval", 12).await;
    let checker = s.admin("POST", &format!("/api/projects/{}/raters", p.id), Some(json!({"name": "Ada"}))).await.ok();
    let check_pairs = 4;

    let shots =
        std::env::var("APL_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|_| root.join("target/browser-screenshots"));
    let cfg = json!({
        "base": s.base, "admin": common::ADMIN, "chromium": browser, "shots": shots,
        "rater": {"token": rater, "phone_token": phone}, "rationale": RATIONALE,
        "round_project": p.id,
        "check": {"rater_id": checker["rater"]["id"], "token": checker["token"], "pairs": check_pairs},
    });
    let script = root.join("tests/browser/run.mjs");
    let dir = root.join("tests/browser");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .env("APL_BROWSER_CONFIG", cfg.to_string())
            .current_dir(dir)
            .output()
            .expect("running node (install Node.js 18+)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!("the browser script reported nothing\nstdout:\n{stdout}\nstderr:\n{stderr}");
    });
    let out: Value = serde_json::from_str(line).unwrap();
    eprintln!("browser: {out:#}");
    assert!(out["failure"].is_null(), "the browser script failed: {}", out["failure"].as_str().unwrap_or_default());
    assert_eq!(out["errors"], json!([]), "pages logged errors");
    assert_eq!(out["wasm"]["encoding"], "gzip", "the app travels gzipped: {}", out["wasm"]);

    // 1. Exactly the labels the rater gave, each once, sides mapped back.
    let votes = s.store.votes(&k.id).await.unwrap();
    let kim: Vec<_> = votes.iter().filter(|v| v.rater == "Kim").collect();
    let given = out["rater"]["labels"].as_array().unwrap();
    assert_eq!(kim.len(), given.len(), "one stored label per answer: {kim:?}");
    let by_pair: HashMap<&str, _> = kim.iter().map(|v| (v.pair_id.as_str(), *v)).collect();
    assert_eq!(by_pair.len(), kim.len(), "no pair labelled twice");
    for g in given {
        let (pair, answer) = (g[0].as_str().unwrap(), g[1].as_str().unwrap());
        let v = by_pair.get(pair).unwrap_or_else(|| panic!("no stored label for {pair}"));
        assert_eq!(v.choice, stored(answer, &v.left), "pair {pair}: answered {answer} with {} on the left", v.left);
    }
    let undone = out["rater"]["undone"].as_str().unwrap();
    assert_ne!(by_pair[undone].choice, "both_bad", "the undone answer is gone, the new one stored");
    assert_eq!(by_pair[undone].rationale.as_deref(), Some(RATIONALE), "the rationale typed is stored with its label");
    assert_eq!(kim.iter().filter(|v| v.rationale.is_some()).count(), 1);
    assert_eq!(out["rater"]["progress"], "5 / 5", "skips do not count as labels");

    // 2. The rounds ran to the end, and the page showed them live.
    assert_eq!(out["round"]["state"], "done", "{}", out["round"]);
    assert_eq!(out["round"]["second"], "done", "{}", out["round"]);
    let seen: Vec<&str> = out["round"]["seen"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(seen.contains(&"progress bar"), "a live progress bar was shown: {seen:?}");
    assert!(seen.len() >= 3, "several phases were shown live: {seen:?}");
    let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
    assert_eq!(detail["stats"]["checkpoints"], 2);
    assert_eq!(detail["stats"]["rounds"], 2);
    assert!(out["round"]["histogram"].as_bool().unwrap(), "round 2's acquisition scores were drawn");
    assert!(out["round"]["curve_points"].as_u64().unwrap() >= 2, "{}", out["round"]);

    // Tables export as CSV: the raters table, with the project's one rater.
    assert_eq!(out["raters_csv"]["name"], "raters.csv");
    let csv = out["raters_csv"]["text"].as_str().unwrap();
    assert!(
        csv.starts_with("id,name,quota,labels,skips,median_seconds,gold_answered,gold_correct,disabled\n"),
        "{csv}"
    );
    assert!(csv.lines().nth(1).unwrap().contains(",Ada,"), "{csv}");

    // 3. The panel's human win-rate equals the one from the stored labels of the check.
    let rows = sqlx::query(
        "SELECT l.pair_id, l.choice, l.left_side FROM labels l JOIN pairs p ON p.id = l.pair_id \
         WHERE p.check_id IS NOT NULL AND p.project_id = $1",
    )
    .bind(&p.id)
    .fetch_all(&s.store.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), check_pairs, "one label per check pair");
    let given: HashMap<String, String> = out["check"]["given"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g[0].as_str().unwrap().to_string(), g[1].as_str().unwrap().to_string()))
        .collect();
    let mut score = 0.0;
    for r in &rows {
        let (pair, choice, left): (String, String, String) =
            (r.try_get(0).unwrap(), r.try_get(1).unwrap(), r.try_get(2).unwrap());
        assert_eq!(choice, stored(&given[&pair], &left), "check pair {pair}");
        score += match choice.as_str() {
            "a" => 1.0, // a is the policy's text
            "b" => 0.0,
            _ => 0.5,
        };
    }
    let rate = score / rows.len() as f64;
    let shown = out["check"]["human"].as_str().unwrap();
    let expected = format!("{:.1}%", 100.0 * rate);
    assert!(shown.starts_with(&expected), "panel shows {shown:?}, labels give {expected}");
    assert!(shown.contains(&format!("(n = {check_pairs})")), "{shown}");

    for name in
        ["rate", "rate-keys", "rate-offline", "rate-done", "rate-phone", "projects", "run-progress", "run", "setup"]
            .into_iter()
            .chain(["raters", "quality", "evaluation", "evaluation-check"])
    {
        assert!(shots.join(format!("{name}.png")).exists(), "screenshot {name}.png");
    }
}
