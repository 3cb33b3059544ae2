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

use apl_shared::settings::{AcquireConfig, AdamConfig, EvalSettings, LoopSettings, TrainConfig, Trainable};
use apl_shared::{Acquisition, Choice, JobState, Labeller, ProjectConfig, RoundRow, Side, Split};
use common::{Backend, Options};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// Typed into the rationale field: its "2" and "t" must stay text, not answer the pair.
const RATIONALE: &str = "2 reasons: tone and topic";

fn chromium() -> Option<PathBuf> {
    let p = std::env::var("APL_CHROMIUM").map(PathBuf::from).unwrap_or_else(|_| "/usr/bin/chromium".into());
    p.exists().then_some(p)
}

fn tiny_round_config() -> ProjectConfig {
    ProjectConfig {
        loop_settings: LoopSettings {
            acquisition: Acquisition::Random,
            pairs_per_round: 8,
            acquire: AcquireConfig { over_generate: 2, batch_size: 8, ..Default::default() },
            completion_tokens: (6, 10),
            labeller: Labeller::Length,
            trainable: Trainable::All,
            // Enough epochs that the round outlasts the page's first look at it (with 2, a
            // fast machine finished it in 0.1 s, before the live progress was ever drawn).
            train: TrainConfig {
                epochs: 12,
                pairs_per_step: 2,
                micro_batch: 2,
                adam: AdamConfig { lr: 1e-3, ..Default::default() },
                ..Default::default()
            },
            eval: EvalSettings { prompts: 12, judge: Labeller::Length, batch_size: 6, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn prompts(s: &common::Server, project: &str, split: Split, n: usize) {
    let texts: Vec<String> = (0..n).map(|i| format!("{split} prompt number {i} is")).collect();
    s.prompts(project, split, &texts).await;
}

/// What the script is told (`APL_BROWSER_CONFIG`, read by `tests/browser/run.mjs`).
#[derive(Serialize)]
struct ScriptConfig<'a> {
    base: &'a str,
    admin: &'a str,
    chromium: PathBuf,
    shots: PathBuf,
    rater: RaterTokens,
    rationale: &'a str,
    round_project: &'a str,
    check: CheckConfig,
}

#[derive(Serialize)]
struct RaterTokens {
    token: String,
    phone_token: String,
}

#[derive(Serialize)]
struct CheckConfig {
    rater_id: String,
    token: String,
    pairs: usize,
}

/// What the script reports (its `RESULT` line); the parts after a failure may be missing.
#[derive(Debug, Deserialize)]
struct ScriptReport {
    failure: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
    wasm: Option<WasmSeen>,
    rater: Option<RaterSeen>,
    round: Option<RoundSeen>,
    raters_csv: Option<Download>,
    /// The prompt disabled from the Setup tab's prompt list.
    prompt_disabled: Option<String>,
    check: Option<CheckSeen>,
}

#[derive(Debug, Deserialize)]
struct WasmSeen {
    url: String,
    encoding: Option<String>,
}

/// (pair, answer) as the rater gave them: a key or a button.
type Answers = Vec<(String, String)>;

#[derive(Debug, Deserialize)]
struct RaterSeen {
    labels: Answers,
    undone: String,
    progress: String,
}

#[derive(Debug, Deserialize)]
struct RoundSeen {
    /// The job's state as the page shows it (`data-state`).
    state: JobState,
    second: Option<JobState>,
    seen: Vec<String>,
    #[serde(default)]
    histogram: bool,
    #[serde(default)]
    curve_points: u64,
}

#[derive(Debug, Deserialize)]
struct Download {
    name: String,
    text: String,
}

#[derive(Debug, Deserialize)]
struct CheckSeen {
    given: Answers,
    human: String,
}

/// What a screen answer means for a pair shown with `left` on the left.
fn stored(screen: &str, left: Side) -> Choice {
    let side = |s: Side| match s {
        Side::A => Choice::A,
        Side::B => Choice::B,
    };
    match screen {
        "left" | "1" => side(left),
        "right" | "2" => side(left.other()),
        "t" | "tie" => Choice::Tie,
        "x" => Choice::BothBad,
        "skip" => Choice::Skip,
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
    let k = s.project("ratings", ProjectConfig::default()).await;
    s.trl_pairs(&k.id, 6, "rate=true").await;
    let rater = s.rater(&k.id, "Kim").await;
    let phone = s.rater(&k.id, "Pat").await;
    // A project whose rounds run on the tiny model, with one rater for a human check.
    let p = s.project("loop", tiny_round_config()).await;
    prompts(&s, &p.id, Split::Train, 40).await;
    prompts(&s, &p.id, Split::Eval, 12).await;
    let checker = s.invite(&p.id, "Ada").await;
    let check_pairs = 4;

    let shots =
        std::env::var("APL_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|_| root.join("target/browser-screenshots"));
    let cfg = ScriptConfig {
        base: &s.base,
        admin: common::ADMIN,
        chromium: browser,
        shots: shots.clone(),
        rater: RaterTokens { token: rater, phone_token: phone },
        rationale: RATIONALE,
        round_project: &p.id,
        check: CheckConfig { rater_id: checker.rater.id.clone(), token: checker.token.clone(), pairs: check_pairs },
    };
    let cfg = serde_json::to_string(&cfg).unwrap();
    let script = root.join("tests/browser/run.mjs");
    let dir = root.join("tests/browser");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .env("APL_BROWSER_CONFIG", cfg)
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
    eprintln!("browser: {line}");
    let out: ScriptReport =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("the browser script's report: {e}: {line}"));
    assert!(out.failure.is_none(), "the browser script failed: {}", out.failure.unwrap_or_default());
    assert!(out.errors.is_empty(), "pages logged errors: {:?}", out.errors);
    let wasm = out.wasm.expect("the app's wasm was fetched");
    assert!(wasm.url.ends_with("_bg.wasm"), "{wasm:?}");
    assert_eq!(wasm.encoding.as_deref(), Some("gzip"), "the app travels gzipped: {wasm:?}");

    // 1. Exactly the labels the rater gave, each once, sides mapped back.
    let seen = out.rater.expect("the rater's part ran");
    let votes = s.store.votes(&k.id).await.unwrap();
    let kim: Vec<_> = votes.iter().filter(|v| v.rater == "Kim").collect();
    assert_eq!(kim.len(), seen.labels.len(), "one stored label per answer: {kim:?}");
    let by_pair: HashMap<&str, _> = kim.iter().map(|v| (v.pair_id.as_str(), *v)).collect();
    assert_eq!(by_pair.len(), kim.len(), "no pair labelled twice");
    for (pair, answer) in &seen.labels {
        let v = by_pair.get(pair.as_str()).unwrap_or_else(|| panic!("no stored label for {pair}"));
        assert_eq!(v.choice, stored(answer, v.left), "pair {pair}: answered {answer} with {} on the left", v.left);
    }
    let undone = by_pair[seen.undone.as_str()];
    assert_ne!(undone.choice, Choice::BothBad, "the undone answer is gone, the new one stored");
    assert_eq!(undone.rationale.as_deref(), Some(RATIONALE), "the rationale typed is stored with its label");
    assert_eq!(kim.iter().filter(|v| v.rationale.is_some()).count(), 1);
    assert_eq!(seen.progress, "5 / 5", "skips do not count as labels");

    // 2. The rounds ran to the end, and the page showed them live.
    let round = out.round.expect("the round's part ran");
    assert_eq!(round.state, JobState::Done, "{round:?}");
    assert_eq!(round.second, Some(JobState::Done), "{round:?}");
    assert!(round.seen.iter().any(|x| x == "progress bar"), "a live progress bar was shown: {:?}", round.seen);
    assert!(round.seen.len() >= 3, "several phases were shown live: {:?}", round.seen);
    let stats = s.stats(&p.id).await;
    assert_eq!((stats.checkpoints, stats.rounds), (2, 2));
    let rounds: Vec<RoundRow> = s.get(&format!("/api/projects/{}/rounds", p.id)).await;
    let second = rounds.iter().find(|r| r.number == 2).expect("round 2 is stored");
    assert_eq!(second.acquisition, Acquisition::Certainty, "the form's choice reached the job: {second:?}");
    assert!(!second.stats.candidate_margins.is_empty(), "the trained policy scored its candidates: {second:?}");
    assert!(round.histogram, "round 2's acquisition scores were drawn");
    assert!(round.curve_points >= 2, "{round:?}");

    // The Setup tab's prompt list disabled a prompt: stored as disabled, and the only one.
    let text = out.prompt_disabled.expect("a prompt was disabled from the list");
    let disabled: Vec<String> = sqlx::query_scalar("SELECT text FROM prompts WHERE project_id = $1 AND disabled = 1")
        .bind(&p.id)
        .fetch_all(&s.store.pool)
        .await
        .unwrap();
    assert_eq!(disabled, vec![text]);

    // Tables export as CSV: the raters table, with the project's one rater.
    let csv = out.raters_csv.expect("the raters table was exported");
    assert_eq!(csv.name, "raters.csv");
    assert!(
        csv.text.starts_with("id,name,quota,labels,skips,median_seconds,gold_answered,gold_correct,disabled,expires\n"),
        "{}",
        csv.text
    );
    assert!(csv.text.lines().nth(1).unwrap().contains(",Ada,"), "{}", csv.text);

    // 3. The panel's human win-rate equals the one from the stored labels of the check.
    let check = out.check.expect("the check's part ran");
    let rows = sqlx::query(
        "SELECT l.pair_id, l.choice, l.left_side FROM labels l JOIN pairs p ON p.id = l.pair_id \
         WHERE p.check_id IS NOT NULL AND p.project_id = $1",
    )
    .bind(&p.id)
    .fetch_all(&s.store.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), check_pairs, "one label per check pair");
    let given: HashMap<&str, &str> = check.given.iter().map(|(pair, key)| (pair.as_str(), key.as_str())).collect();
    let mut score = 0.0;
    for r in &rows {
        let (pair, choice, left): (String, Choice, Side) =
            (r.try_get(0).unwrap(), r.try_get(1).unwrap(), r.try_get(2).unwrap());
        assert_eq!(choice, stored(given[pair.as_str()], left), "check pair {pair}");
        score += match choice {
            Choice::A => 1.0, // a is the policy's text
            Choice::B => 0.0,
            _ => 0.5,
        };
    }
    let rate = score / rows.len() as f64;
    let expected = format!("{:.1}%", 100.0 * rate);
    assert!(check.human.starts_with(&expected), "panel shows {:?}, labels give {expected}", check.human);
    assert!(check.human.contains(&format!("(n = {check_pairs})")), "{}", check.human);

    for name in
        ["rate", "rate-keys", "rate-offline", "rate-done", "rate-phone", "projects", "run-progress", "run", "setup"]
            .into_iter()
            .chain(["raters", "quality", "evaluation", "evaluation-check"])
    {
        assert!(shots.join(format!("{name}.png")).exists(), "screenshot {name}.png");
    }
}
