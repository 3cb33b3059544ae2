//! The web frontend in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/run.mjs`) against the real server on the tiny model. This side starts and
//! fills the server, runs the script, and checks what it reports against the database:
//!
//! - a rater labels with the keyboard only, undoes one answer, and loses the connection once:
//!   the database holds exactly the labels given, each once;
//! - an admin starts a round from the dashboard and sees its live progress reach "done";
//! - the evaluation panel fetches the evaluations once per view, starts the curve at the
//!   starting model (marked as not measured where no evaluation measured it), and pages and
//!   filters the samples of the evaluation stored;
//! - an admin page opened without the token shows one sign-in form, says a wrong token is
//!   wrong, and loads once the right one is pasted; an invite link is copied with its button
//!   (and works); on a 390 px phone no admin page scrolls sideways and the tabs stay on one line;
//!   a new IMDB project asks raters about sentiment, shows the judge's section only for a judge,
//!   names a wrong value at its field, and asks before unsaved set-up edits are left;
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
use apl_shared::{
    Acquisition, Choice, EvaluationRow, JobState, Labeller, Outcome, ProjectConfig, RoundRow, Side, Split,
};
use common::{Backend, Options};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The project the script creates from the start page, with the task IMDB.
const IMDB_PROJECT: &str = "imdb-from-the-browser";

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
            // Enough epochs that the round outlasts the page's first looks at it, stage by
            // stage (with 2, a fast machine finished it in 0.1 s, before the live progress was
            // ever drawn; with 12, in 0.2 s; 300 take a few seconds).
            train: TrainConfig {
                epochs: 300,
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
    /// The name the script gives the IMDB project it creates from the start page.
    imdb_project: &'a str,
    human: HumanConfig<'a>,
}

/// The project labelled by people with auto-continue (`tests/browser/human_loop.mjs`).
#[derive(Serialize)]
struct HumanConfig<'a> {
    project: &'a str,
    raters: [String; 2],
    phone_token: String,
}

/// What `human_loop.mjs` saw.
#[derive(Debug, Deserialize)]
struct HumanSeen {
    /// The stepper's `data-step` values, in the order seen.
    steps: Vec<String>,
    /// Each rater page's empty states (`data-status`), in the order seen.
    empty: [Vec<String>; 2],
    /// The pairs each rater answered (all "1": left, or top).
    pairs: [Vec<String>; 2],
    /// The pair round 2 brought to the first rater's open page.
    round2_pair: String,
    stalled: StalledSeen,
}

#[derive(Debug, Deserialize)]
struct StalledSeen {
    /// Which side names the phone showed (`top`: "Top", `left`: "Left"), and whether it showed
    /// key hints (`key_hints`).
    labels: HashMap<String, bool>,
    banner: String,
    pair: String,
    /// Label requests the test passed to the server and left unanswered (the page timed out
    /// and sent them again).
    held: usize,
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
    evaluation: Option<EvaluationSeen>,
    signin: Option<serde_json::Value>,
    invite: Option<InviteSeen>,
    /// `document.documentElement.scrollWidth` per admin page on a 390 px phone, and more.
    phone: Option<serde_json::Value>,
    setup: Option<serde_json::Value>,
    human: Option<HumanSeen>,
}

#[derive(Debug, Deserialize)]
struct InviteSeen {
    /// The link the page showed, and what its Copy button put on the clipboard.
    link: String,
    clipboard: String,
    /// (rater, invite state) as the raters table lists them.
    states: Vec<(String, Option<String>)>,
}

/// The evaluation tab as the script saw it on one view.
#[derive(Debug, Deserialize)]
struct EvaluationSeen {
    /// `GET .../evaluations` requests the view made.
    fetches: usize,
    /// The curve's point at 0 labels (`data-mark`: measured or assumed) and its tooltip.
    start: Option<StartSeen>,
    /// The legend's notes on unmeasured points.
    legend: Vec<String>,
    samples: SamplesSeen,
}

#[derive(Debug, Deserialize)]
struct StartSeen {
    count: usize,
    mark: String,
    title: String,
}

#[derive(Debug, Deserialize)]
struct SamplesSeen {
    /// The evaluation whose samples are shown.
    evaluation: String,
    /// The pager's status on each page, paging forward from the first, and the samples shown.
    pages: Vec<String>,
    shown: Vec<usize>,
    first_prev_disabled: bool,
    last_next_disabled: bool,
    wins: WinsSeen,
}

#[derive(Debug, Deserialize)]
struct WinsSeen {
    /// The filter button ("Wins (3)").
    label: String,
    status: String,
    /// The classes of the samples shown under "Wins".
    classes: Vec<String>,
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
    /// "stage i/n · kind" as the job card showed them.
    #[serde(default)]
    stages: Vec<String>,
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
    // A project labelled by people, auto-continue on (the default), one vote a pair, rounds of
    // two pairs; evaluated by the length oracle, so each continue adds a win-rate point.
    let mut human_cfg = tiny_round_config();
    human_cfg.loop_settings.labeller = Labeller::Raters;
    human_cfg.loop_settings.pairs_per_round = 2;
    human_cfg.rating.overlap = 1;
    let hp = s.project("people", human_cfg).await;
    assert!(hp.config.rating.auto_continue.enabled);
    prompts(&s, &hp.id, Split::Train, 24).await;
    prompts(&s, &hp.id, Split::Eval, 12).await;
    let human_raters = [s.rater(&hp.id, "Lea").await, s.rater(&hp.id, "Max").await];
    let human_phone = s.rater(&hp.id, "Noa").await;

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
        imdb_project: IMDB_PROJECT,
        human: HumanConfig { project: &hp.id, raters: human_raters, phone_token: human_phone },
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
    assert_eq!(seen.progress, "You: 5 labelled", "skips do not count as labels");

    // 2. The rounds ran to the end, and the page showed them live.
    let round = out.round.expect("the round's part ran");
    assert_eq!(round.state, JobState::Done, "{round:?}");
    assert_eq!(round.second, Some(JobState::Done), "{round:?}");
    assert!(round.seen.iter().any(|x| x == "progress bar"), "a live progress bar was shown: {:?}", round.seen);
    assert!(round.seen.len() >= 3, "several phases were shown live: {:?}", round.seen);
    assert!(round.seen.iter().any(|x| x == "time left"), "one time left for the job: {:?}", round.seen);
    assert!(
        round.stages.iter().any(|x| x == "stage 3/4 · train")
            && round.stages.iter().all(|x| x.starts_with("stage ") && x.contains("/4 · ")),
        "the round's stages, numbered of 4: {:?}",
        round.stages
    );
    let stats = s.stats(&p.id).await;
    assert_eq!((stats.checkpoints, stats.rounds), (2, 2));
    let rounds: Vec<RoundRow> = s.get(&format!("/api/projects/{}/rounds", p.id)).await;
    let second = rounds.iter().find(|r| r.number == 2).expect("round 2 is stored");
    assert_eq!(second.acquisition, Acquisition::Certainty, "the form's choice reached the job: {second:?}");
    assert!(!second.stats.candidate_margins.is_empty(), "the trained policy scored its candidates: {second:?}");
    assert!(round.histogram, "round 2's acquisition scores were drawn");
    assert!(round.curve_points >= 2, "{round:?}");

    // The evaluation tab: one fetch of the evaluations per view, the curve from 0 labels, and
    // the samples of a stored evaluation paged by 10 and filtered to its wins.
    let seen = out.evaluation.expect("the evaluation tab's part ran");
    assert_eq!(seen.fetches, 1, "the evaluations are fetched once per view: {seen:?}");
    let evals: Vec<EvaluationRow> = s.get(&format!("/api/projects/{}/evaluations", p.id)).await;
    let start = seen.start.as_ref().expect("a point at 0 labels");
    assert_eq!(start.count, 1, "{seen:?}");
    if evals.iter().any(|e| e.checkpoint_id.is_none()) {
        assert_eq!(start.mark, "measured", "{seen:?}");
    } else {
        assert_eq!(start.mark, "assumed", "no evaluation of the starting model, so its point is not data: {seen:?}");
        assert!(start.title.contains("not measured") && start.title.contains("50 %"), "{seen:?}");
        assert_eq!(seen.legend.len(), 1, "the legend says what the hollow point is: {seen:?}");
    }
    let shown = evals.iter().find(|e| e.id == seen.samples.evaluation).expect("the samples' evaluation is stored");
    let n = shown.details.samples.len();
    let pages = n.div_ceil(10);
    assert_eq!(seen.samples.pages.len(), pages, "{seen:?}");
    for (i, status) in seen.samples.pages.iter().enumerate() {
        assert_eq!(status, &format!("{}–{} of {n} samples", i * 10 + 1, (i * 10 + 10).min(n)), "{seen:?}");
    }
    assert_eq!(seen.samples.shown.iter().sum::<usize>(), n, "every sample on exactly one page: {seen:?}");
    assert!(seen.samples.shown.iter().all(|&k| k <= 10), "{seen:?}");
    assert!(seen.samples.first_prev_disabled && seen.samples.last_next_disabled, "{seen:?}");
    let wins = shown.details.samples.iter().filter(|x| x.outcome == Some(Outcome::Win)).count();
    assert_eq!(seen.samples.wins.label, format!("Wins ({wins})"), "{seen:?}");
    assert_eq!(seen.samples.wins.classes.len(), wins.min(10), "{seen:?}");
    assert!(seen.samples.wins.classes.iter().all(|c| c.split(' ').any(|c| c == "outcome-win")), "{seen:?}");
    let status = if wins == 0 { "no wins".to_string() } else { format!("1–{} of {wins} wins", wins.min(10)) };
    assert_eq!(seen.samples.wins.status, status, "{seen:?}");

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

    // 4. Admin pages. Without the token: one sign-in form and no raw errors; a wrong token is
    // said to be wrong; the right one is kept and loads the page.
    let signin = out.signin.expect("the sign-in part ran");
    assert_eq!(signin["forms"], 1, "{signin}");
    assert_eq!(signin["errors"], serde_json::json!([]), "no error before a token is tried: {signin}");
    assert_eq!(signin["tabs_hidden"], true, "{signin}");
    let wrong = signin["wrong"].as_str().unwrap_or_default();
    assert!(wrong.contains("did not accept that admin token"), "{signin}");
    assert!(!wrong.contains("Bearer"), "plain words: {signin}");
    assert_eq!(signin["after"], serde_json::json!({"forms": 0, "stored": true}), "{signin}");
    // The invite link copied is the one shown, and it works.
    let invite = out.invite.expect("the invite part ran");
    assert_eq!(invite.clipboard, invite.link, "the Copy button copies the link");
    let token = invite.link.split_once("/rate#token=").map(|(_, t)| t).expect("a rater link");
    let me: apl_shared::RaterHome = s.with_token(token).get("/api/rate/me").await;
    assert_eq!(me.name, "Bo");
    assert!(invite.states.contains(&("Bo".into(), Some("works".into()))), "{:?}", invite.states);
    // A phone: no admin page wider than the screen, tabs on one line, the raters table
    // scrolling in its own box.
    let phone = out.phone.expect("the phone part ran");
    for page in ["raters", "setup", "quality", "run", "evaluation", "projects"] {
        let w = phone[page].as_u64().unwrap_or(u64::MAX);
        assert!(w <= 390, "{page} is {w} px wide on a 390 px screen: {phone}");
    }
    assert_eq!(phone["tab_rows"], 1, "{phone}");
    assert_eq!(phone["table_scrolls"], true, "{phone}");
    // A new IMDB project from the start page: sentiment guidelines, stored; no judge assumed.
    let setup = out.setup.expect("the set-up part ran");
    let projects = s.store.projects().await.unwrap();
    let imdb = projects.iter().find(|p| p.name == IMDB_PROJECT).expect("the IMDB project was created");
    assert_eq!(imdb.task, apl_shared::Task::Imdb);
    assert!(imdb.config.rating.guidelines.contains("sentiment"), "{}", imdb.config.rating.guidelines);
    assert_eq!(setup["guidelines"], imdb.config.rating.guidelines.as_str(), "the form shows the stored guidelines");
    assert_eq!(setup["judge_hidden"], true, "human raters need no judge: {setup}");
    assert_eq!(setup["judge_url"]["value"], "", "no judge address is assumed: {setup}");
    assert_eq!(setup["judge_url"]["invalid"], "true", "{setup}");
    assert!(setup["judge_url"]["message"].as_str().unwrap_or_default().starts_with("Set the judge's URL"), "{setup}");
    assert_eq!(setup["inline"]["message"], "Enter a whole number from 1 to 100000.", "{setup}");
    assert!(
        setup["inline"]["described"].as_str().unwrap_or_default().contains("loop_settings-pairs_per_round-error"),
        "{setup}"
    );
    assert_eq!(setup["inline"]["focused"], "loop_settings.pairs_per_round", "saving moves to the field: {setup}");
    assert!(setup["unsaved"]["tab"].as_str().unwrap_or_default().contains("changes not saved"), "{setup}");
    assert_eq!(setup["unsaved"]["beforeunload"], true, "leaving the page asks: {setup}");
    assert_eq!(setup["unsaved"]["stayed"], true, "declining keeps the edits: {setup}");
    assert_eq!(setup["saved"], serde_json::json!({"marks": 0, "beforeunload": false}), "{setup}");
    let dialogs = setup["dialogs"].as_array().cloned().unwrap_or_default();
    assert_eq!(dialogs.len(), 1, "one question, before the save: {setup}");
    assert_eq!(dialogs[0]["type"], "confirm", "{setup}");
    let saved = s.store.project(&imdb.id).await.unwrap().config;
    assert_eq!(saved.loop_settings.pairs_per_round, 32, "the corrected value was saved");
    assert_eq!(saved.loop_settings.labeller, Labeller::Raters);

    for name in
        ["rate", "rate-keys", "rate-offline", "rate-done", "rate-phone", "projects", "run-progress", "run", "setup"]
            .into_iter()
            .chain(["raters", "quality", "evaluation", "evaluation-wins", "evaluation-check"])
            .chain(["signin", "signin-wrong", "raters-invite", "raters-phone", "evaluation-phone", "setup-judge"])
            .chain(["setup-errors", "setup-unsaved"])
            .chain(["rate-nothing-yet", "run-stepper-start", "run-stepper-raters", "rate-next-batch-coming"])
            .chain(["run-stepper-round-2", "rate-phone-saving", "rate-phone-stalled"])
    {
        assert!(shots.join(format!("{name}.png")).exists(), "screenshot {name}.png");
    }

    // 5. The human-in-the-loop cycle: after the admin's one click, the raters labelled round 1
    // and round 2 reached them with nobody clicking: its continue job trained, evaluated and
    // acquired.
    let human = out.human.expect("the human loop's part ran");
    human_loop_happened(&s, &hp.id, &human).await;
}

/// What `human_loop.mjs` did, checked against the database.
async fn human_loop_happened(s: &common::Server, project: &str, seen: &HumanSeen) {
    use apl_shared::{CheckpointRow, Job, JobKind};
    // Before any round both pages said "nothing yet"; after their last answer each waited
    // (for the other rater, or for the next batch), not "done".
    for (i, empty) in seen.empty.iter().enumerate() {
        assert_eq!(empty.first().map(String::as_str), Some("nothing_yet"), "rater {i}: {seen:?}");
        let after = empty.iter().skip_while(|e| *e != "pair").skip(1).collect::<Vec<_>>();
        assert!(after.iter().any(|e| *e == "wait" || *e == "nothing_yet"), "rater {i} waited: {seen:?}");
        assert!(!empty.iter().any(|e| e == "done"), "rater {i} was never told they are done: {seen:?}");
    }
    assert_eq!(seen.steps.first().map(String::as_str), Some("none"), "{seen:?}");
    assert!(seen.steps.iter().any(|x| x == "labelling"), "{seen:?}");
    let jobs: Vec<Job> = s.get(&format!("/api/projects/{project}/jobs")).await;
    let kinds: Vec<JobKind> = jobs.iter().rev().map(|j| j.kind).collect();
    assert_eq!(kinds.first(), Some(&JobKind::Round), "the admin started round 1: {kinds:?}");
    assert!(
        kinds[1..].iter().all(|k| *k == JobKind::Continue) && kinds.len() >= 2,
        "then only auto-continue: {kinds:?}"
    );
    let continued =
        jobs.iter().find(|j| j.kind == JobKind::Continue && j.params.after_round == Some(1)).expect("round 1 went on");
    assert_eq!(continued.state, JobState::Done, "{continued:?}");
    let checkpoints: Vec<CheckpointRow> = s.get(&format!("/api/projects/{project}/checkpoints")).await;
    assert!(checkpoints.iter().any(|c| c.round == 1), "round 1's checkpoint: {checkpoints:?}");
    let evals: Vec<EvaluationRow> = s.get(&format!("/api/projects/{project}/evaluations")).await;
    let round1 = checkpoints.iter().find(|c| c.round == 1).unwrap();
    assert!(
        evals.iter().any(|e| e.checkpoint_id.as_deref() == Some(round1.id.as_str())),
        "a win-rate point for round 1"
    );
    // Every pair of round 1 has its vote, each answered once; round 2's pair is another.
    let votes = s.store.votes(project).await.unwrap();
    let answered: Vec<&String> = seen.pairs.iter().flatten().collect();
    assert_eq!(answered.len(), 2, "two pairs, one vote each: {seen:?}");
    for pair in &answered {
        assert_eq!(votes.iter().filter(|v| &&v.pair_id == pair).count(), 1, "pair {pair}");
    }
    let pairs: Vec<apl_shared::PairRecord> = s.get(&format!("/api/projects/{project}/pairs")).await;
    let round_of = |id: &str| pairs.iter().find(|p| p.id == id).and_then(|p| p.round);
    assert!(answered.iter().all(|p| round_of(p) == Some(1)), "{seen:?}");
    assert_eq!(round_of(&seen.round2_pair), Some(2), "the next batch reached the open page");
    // The stalled save: the phone said "Top", the banner said why, and the label went in once.
    assert_eq!(seen.stalled.labels.get("top"), Some(&true), "stacked cards are top and bottom: {seen:?}");
    assert_eq!(seen.stalled.labels.get("left"), Some(&false), "{seen:?}");
    assert_eq!(seen.stalled.labels.get("key_hints"), Some(&false), "no key hints on a touch screen: {seen:?}");
    assert!(seen.stalled.held >= 2, "the first request and a retry reached the server: {seen:?}");
    assert!(seen.stalled.banner.contains("did not answer"), "{seen:?}");
    let stalled: Vec<_> = votes.iter().filter(|v| v.pair_id == seen.stalled.pair).collect();
    assert_eq!(stalled.len(), 1, "the stalled answer is stored once: {stalled:?}");
    assert_eq!(stalled[0].rater, "Noa");
}
