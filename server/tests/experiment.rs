//! The whole loop on a tiny random model with the length oracle: training must raise the
//! win-rate above one half by learning (the oracle's preference is for characters, which the
//! model can only get by preferring tokens that carry more of them), results must be resumable,
//! and every acquisition function must run.

mod common;

use common::Quiet;

use std::io::Write;

use apl::analytics::paired::{SeedScores, paired_difference, resamples};
use apl::experiment::config::ExperimentConfig;
use apl::experiment::run::PhaseRecord;
use apl::experiment::run_experiment;
use apl::experiment::setup::{JudgeEnv, Setup};
use apl_shared::settings::{AdamConfig, Trainable};
use apl_shared::{Acquisition, Labeller, Mode, Preset, Task, Vocabulary};
use candle_core::DType;

fn tiny(dir: &std::path::Path) -> ExperimentConfig {
    let mut c = ExperimentConfig::preset(Preset::ImdbCpu);
    c.preset = None;
    c.task.kind = Task::Generic;
    c.task.path = Some(common::prompts_file(dir, 1200));
    c.acquisitions = vec![Acquisition::Random, Acquisition::Certainty];
    c.schedule = vec![96, 256];
    c.seeds = vec![0];
    let s = &mut c.settings;
    s.completion_tokens = (8, 8);
    s.labeller = Labeller::Length;
    s.eval.judge = Labeller::Length;
    s.mode = Mode::Reset;
    s.trainable = Trainable::All;
    s.train.adam = AdamConfig { lr: 3e-3, ..Default::default() };
    s.train.epochs = 3;
    s.train.pairs_per_step = 16;
    s.train.micro_batch = 16;
    s.acquire.over_generate = 2;
    s.eval.prompts = 200;
    s.eval.initial = true;
    c
}

#[test]
fn training_raises_the_length_win_rate_and_runs_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(dir.path());
    let setup = Setup::build(&cfg, common::load("llama", DType::F32), None, &JudgeEnv::default()).unwrap();
    let out = dir.path().join("out");
    let records = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
    assert_eq!(records.len(), 2 * 3, "2 acquisitions x (phase 0 + 2 phases)");
    for r in &records {
        eprintln!(
            "{} phase {}: {:.3} ± {:.3} (loss {:?})",
            r.acquisition, r.phase, r.win_rate.win_rate, r.win_rate.stderr, r.train.epoch_losses
        );
    }
    for acq in [Acquisition::Random, Acquisition::Certainty] {
        let run: Vec<&PhaseRecord> = records.iter().filter(|r| r.acquisition == acq).collect();
        let (start, end) = (run[0], run[2]);
        // The untrained policy is the baseline's own distribution: about one half.
        assert!(
            (start.win_rate.win_rate - 0.5).abs() < 3.0 * start.win_rate.stderr + 0.05,
            "{acq}: {:?}",
            start.win_rate
        );
        assert!(end.win_rate.win_rate > 0.5 + 2.0 * end.win_rate.stderr, "{acq}: {:?}", end.win_rate);
        assert_eq!(end.labels, 256);
        let losses = &end.train.epoch_losses;
        assert!(losses.last().unwrap() < &losses[0]);
    }
    // Certainty phase 1: the policy is the reference, so nothing is over-generated or scored
    // (every margin would be 0); phase 2 scores 4 candidates per pair and finds margins.
    let cert: Vec<&PhaseRecord> =
        records.iter().filter(|r| r.acquisition == Acquisition::Certainty && r.phase > 0).collect();
    assert_eq!(cert[0].acquisition_stats.sequences_scored, 0);
    assert!(cert[1].acquisition_stats.candidate_margins.len() >= 2 * (256 - 96));
    assert!(cert[1].acquisition_stats.candidate_margins.iter().any(|m| *m != 0.0));
    for f in ["phases.csv", "summary.csv", "summary.md", "summary.json", "winrate.svg", "config.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // The baseline's samples were drawn with the lengths every policy's samples of the seed use.
    let baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("baseline-seed0.json")).unwrap()).unwrap();
    assert_eq!(baseline["length_seed"], apl::experiment::run::eval_length_seed(0));
    // Paired on the same prompts and baseline samples, the trained policy beats the untrained
    // one by more than 2 standard errors (per-prompt outcomes from the samples files).
    let scores = |acq: Acquisition, phase: usize| -> Vec<f64> {
        let path = apl::experiment::run_dir(&out, acq, 0).join(format!("samples-phase-{phase}.json"));
        let rows: Vec<apl::experiment::run::SampleRow> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        rows.iter().map(|r| r.sample.outcome.unwrap().score()).collect()
    };
    for acq in [Acquisition::Random, Acquisition::Certainty] {
        let seeds = [SeedScores { arm: scores(acq, 2), reference: scores(acq, 0) }];
        let d = paired_difference(&seeds, &resamples(&[200], 1000, 0)).unwrap();
        eprintln!("{acq}: trained - untrained {} ± {:.3}", d.show(), d.stderr);
        assert!(d.estimate > 2.0 * d.stderr && d.lo > 0.0, "{acq}: {d:?}");
    }
    // The report compares certainty with random, paired, at every m.
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| certainty − random |") && md.contains("Labels to reach random's final win-rate"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["paired"].as_array().unwrap().len(), 2, "certainty at m = 96 and 256");
    assert_eq!(json["efficiency"][0]["acquisition"], "certainty");

    // A second invocation finds every phase done and recomputes nothing.
    let t = std::time::Instant::now();
    let again = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
    assert!(t.elapsed().as_secs_f64() < 2.0);
    let key = |rs: &[PhaseRecord]| -> Vec<(Acquisition, usize, f64, usize)> {
        rs.iter().map(|r| (r.acquisition, r.phase, r.win_rate.win_rate, r.prompts_consumed)).collect()
    };
    assert_eq!(key(&again), key(&records));
    assert!(again == records, "records read back differ from those written");

    // Phase 2 undone (its record deleted, as an interruption before the record would leave it):
    // resuming redoes it from phase 1's weights and labels and gets the same result.
    let run_dir = apl::experiment::run_dir(&out, Acquisition::Certainty, 0);
    std::fs::remove_file(run_dir.join("phase-2.json")).unwrap();
    let resumed = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
    assert_eq!(key(&resumed), key(&records), "resuming from phase 1 reproduces phase 2");
    // Without phase 1's weights there is nothing to resume from: an error, not a silent restart.
    std::fs::remove_file(run_dir.join("phase-2.json")).unwrap();
    std::fs::remove_file(run_dir.join("policy-phase-1.safetensors")).unwrap();
    let err = run_experiment(&cfg, &setup, &out, &Quiet).unwrap_err();
    assert!(format!("{err:#}").contains("resuming the policy"), "{err:#}");

    // Different settings in the same directory are refused.
    let mut other = cfg.clone();
    other.settings.train.epochs = 7;
    let err = run_experiment(&other, &setup, &out, &Quiet).unwrap_err().to_string();
    assert!(err.contains("different experiment") && err.contains("settings.train.epochs"), "{err}");
    let mut other = cfg.clone();
    other.schedule[0] += 1;
    let err = run_experiment(&other, &setup, &out, &Quiet).unwrap_err().to_string();
    assert!(err.contains("different experiment") && err.contains("schedule"), "{err}");
    // Fewer acquisition functions and a shorter schedule: the finished phases are reused as they are.
    let mut fewer = cfg.clone();
    fewer.acquisitions.truncate(1);
    fewer.schedule.truncate(1);
    let t = std::time::Instant::now();
    let part = run_experiment(&fewer, &setup, &out, &Quiet).unwrap();
    assert!(t.elapsed().as_secs_f64() < 2.0);
    let want: Vec<_> = key(&records).into_iter().filter(|k| k.0 == fewer.acquisitions[0] && k.1 <= 1).collect();
    assert_eq!(key(&part), want);
}

#[test]
fn every_acquisition_function_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path());
    cfg.acquisitions = Acquisition::ALL.to_vec();
    cfg.schedule = vec![4, 8];
    cfg.settings.eval.prompts = 16;
    cfg.settings.eval.initial = false;
    cfg.settings.train.epochs = 1;
    cfg.settings.acquire.entropy_over_sample = 2;
    cfg.settings.acquire.entropy_samples = 3;
    for windowed in [false, true] {
        cfg.settings.acquire.windowed_entropy_reference = windowed;
        let setup = Setup::build(&cfg, common::load("gpt2", DType::F32), None, &JudgeEnv::default()).unwrap();
        let out = dir.path().join(format!("all-{windowed}"));
        let records = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
        assert_eq!(records.len(), 10);
        for r in &records {
            assert_eq!(r.labels, 4 * r.phase, "{}", r.acquisition);
            let s = &r.acquisition_stats;
            // Phase 1: the policy is the reference, nothing is scored.
            let want_margins = if r.phase == 1 { 0 } else { 8 };
            // Undecided labels (equal lengths) send the loop back for more, so "at least".
            match r.acquisition {
                Acquisition::Random => assert!(s.prompts_drawn >= 4 && s.sequences_sampled == 2 * s.prompts_drawn),
                Acquisition::Certainty | Acquisition::Uncertainty => {
                    assert!(s.candidate_margins.len() >= want_margins);
                    assert_eq!(s.sequences_scored, 2 * s.candidate_margins.len());
                }
                Acquisition::Entropy => assert!(s.candidate_entropies.len() >= 8),
                Acquisition::Hybrid => {
                    assert!(s.candidate_entropies.len() >= 16);
                    assert!(s.candidate_margins.len() >= want_margins);
                }
            }
        }
    }
}

/// A chat-completions server that answers like the length oracle: the letter of the longer
/// text, read off the custom template `{prompt}|{a}|{b}`. Runs on its own thread.
fn length_judge_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let user = body["messages"][1]["content"].as_str().unwrap_or_default().to_string();
                        let parts: Vec<&str> = user.split("|||").collect();
                        let (a, b) = (parts[1].chars().count(), parts[2].chars().count());
                        let letter = if a > b {
                            "A"
                        } else if b > a {
                            "B"
                        } else {
                            "tie"
                        };
                        axum::Json(serde_json::json!({
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": letter}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 1}
                        }))
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{}/v1", rx.recv().unwrap()), calls)
}

/// `--oracle judge` in an experiment: the LLM judge labels the acquired pairs over the API,
/// its audit log lands in the results directory, and a rerun asks nothing again. The same
/// for a TL;DR task (posts with reference summaries), where the judge may label too.
#[test]
fn an_llm_judge_labels_experiments_on_any_task() {
    use apl_shared::settings::{CustomTemplate, JudgeTask};
    let (url, calls) = length_judge_server();
    let dir = tempfile::tempdir().unwrap();
    for task in [Task::Generic, Task::Summarize] {
        let mut cfg = tiny(dir.path());
        if task == Task::Summarize {
            let path = dir.path().join("posts.jsonl");
            let mut f = std::fs::File::create(&path).unwrap();
            for i in 0..60 {
                let post = format!("the film was great {i} TL;DR:");
                writeln!(f, "{}", serde_json::json!({"prompt": post, "summary": " it was great"})).unwrap();
            }
            cfg.task.kind = Task::Summarize;
            cfg.task.path = Some(path);
        }
        cfg.schedule = vec![4, 8];
        cfg.settings.eval.prompts = 16;
        cfg.settings.eval.initial = false;
        cfg.settings.train.epochs = 1;
        cfg.settings.labeller = Labeller::Judge;
        cfg.settings.judge.base_url = url.clone();
        cfg.settings.judge.api_key_env = None;
        cfg.settings.judge.task = JudgeTask::Custom;
        cfg.settings.judge.template =
            Some(CustomTemplate { system: "Judge.".into(), user: "{prompt}|||{a}|||{b}".into() });
        cfg.validate().unwrap();
        let out = dir.path().join(format!("judge-{task}"));
        let env = JudgeEnv { log: Some(out.join("judge.jsonl")), secrets_file: None };
        std::fs::create_dir_all(&out).unwrap();
        let setup = Setup::build(&cfg, common::load("llama", DType::F32), None, &env).unwrap();
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        let records = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
        assert_eq!(records.len(), 4, "{task}");
        assert!(records.iter().all(|r| r.labels == 4 * r.phase));
        let asked = calls.load(std::sync::atomic::Ordering::SeqCst) - before;
        let oracle_calls: usize = records.iter().filter(|r| r.phase == 2).map(|r| r.oracle_calls).sum();
        // Certainty's first phase asks what random's did (the policy is the reference, one seed):
        // those come from the cache.
        assert!(asked >= 8 && asked < oracle_calls, "{task}: {asked} calls, {oracle_calls} labels asked");
        let audit: Vec<apl::judge::ledger::AuditEntry> = std::fs::read_to_string(out.join("judge.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(audit.len(), oracle_calls, "{task}: every label audited");
        assert_eq!(audit.iter().filter(|e| !e.cached).count(), asked, "{task}: and every call");
        // A fresh run in another directory with the same audit log is served from it.
        let again = dir.path().join(format!("judge-{task}-again"));
        std::fs::create_dir_all(&again).unwrap();
        std::fs::copy(out.join("judge.jsonl"), again.join("judge.jsonl")).unwrap();
        let env = JudgeEnv { log: Some(again.join("judge.jsonl")), secrets_file: None };
        let setup = Setup::build(&cfg, common::load("llama", DType::F32), None, &env).unwrap();
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        let rerun = run_experiment(&cfg, &setup, &again, &Quiet).unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before, "{task}: answered from the cache");
        let key = |rs: &[PhaseRecord]| -> Vec<(Acquisition, usize, f64)> {
            rs.iter().map(|r| (r.acquisition, r.phase, r.win_rate.win_rate)).collect()
        };
        assert_eq!(key(&rerun), key(&records), "{task}");
    }
}

/// IMDB-shaped reviews from a few words: positive ones praise, negative ones complain.
fn reviews_csv(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let good = ["great", "wonderful", "loved", "moving", "superb", "charming"];
    let bad = ["boring", "awful", "hated", "tedious", "dull", "clumsy"];
    let path = dir.join("reviews.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["text", "label", "source"]).unwrap();
    for i in 0..n {
        let (words, label) = if i % 2 == 0 { (&good, "1") } else { (&bad, "0") };
        let text: Vec<String> = (0..40).map(|k| format!("{} film {}", words[(i + k) % 6], (i * 31 + k) % 97)).collect();
        w.write_record([text.join(" ").as_str(), label, "imdb"]).unwrap();
    }
    w.flush().unwrap();
    path
}

/// A simulated noisy rater labels, the held-out classifier judges beside the oracle, and the
/// report carries both judges' paired comparisons.
#[test]
fn noisy_raters_and_the_held_out_judge_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path());
    cfg.task.kind = Task::Imdb;
    cfg.task.path = Some(reviews_csv(dir.path(), 400));
    cfg.oracle_test_reviews = 40;
    cfg.schedule = vec![4, 8];
    cfg.settings.eval.prompts = 16;
    cfg.settings.eval.initial = false;
    cfg.settings.train.epochs = 1;
    cfg.settings.labeller = Labeller::Sentiment;
    cfg.settings.eval.judge = Labeller::Sentiment;
    cfg.rater_noise = Some(apl_shared::settings::RaterNoise { temperature: 2.0, flip: 0.1, seed: 3 });
    cfg.held_out_judge = true;
    cfg.validate().unwrap();
    let setup = Setup::build(&cfg, common::load("llama", DType::F32), None, &JudgeEnv::default()).unwrap();
    assert!(setup.labeller.name().contains("noisy"), "{}", setup.labeller.name());
    assert!(!setup.judge.name().contains("noisy"), "evaluations are judged by the oracle itself");
    let (main, held) = (setup.oracle_report.clone().unwrap(), setup.held_out_report.clone().unwrap());
    // The two classifiers split the oracle's training reviews between them.
    assert_eq!(main.train_reviews + held.train_reviews, 400 - 40 - 16);
    let out = dir.path().join("out");
    let records = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
    assert!(records.iter().all(|r| r.held_out_win_rate.is_some()));
    assert!(out.join("held-out-judge.json").exists());
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("judged by the held-out classifier") && md.contains("judged by the experiment's judge"),
        "{md}"
    );
}
