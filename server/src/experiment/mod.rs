//! The experiment runner: every (acquisition function, seed) run of a configuration, one
//! after another, with progress bars, resumable results and the reports at the end.
//!
//! Layout of the output directory:
//!
//! ```text
//! config.json                 the settings (a resumed run must match them, save for
//!                             acquisition functions, seeds and the schedule's length)
//! oracle.json                 the sentiment oracle's held-out accuracy (when it labels or judges)
//! judge.jsonl                 the LLM judge's audit log and cache (when it labels or judges)
//! baseline-seed{S}.json       the starting model's evaluation samples for seed S
//! runs/{acq}-seed{S}/         phase-{P}.json, data.jsonl, policy-phase-{P}.safetensors,
//!                             samples-phase-{P}.json
//! phases.csv summary.csv summary.md winrate.svg
//! ```

pub mod config;
pub mod report;
pub mod run;
pub mod setup;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use apl_shared::Task;
use config::ExperimentConfig;
use run::{PhaseRecord, Run, baseline_seed, eval_samples, write_atomic};
use setup::Setup;

use apl_engine::model::Model;

/// Receives progress: the phase count, each finished phase, and the current stage.
pub trait Observer {
    /// `total` phases in the experiment, `done` of them finished by an earlier invocation.
    fn begin(&self, total: usize, done: usize);
    fn stage(&self, run: &str, stage: &str, done: usize, total: usize);
    fn phase(&self, record: &PhaseRecord);
}

/// Checks that `out` is empty or holds this same experiment, and records the settings.
/// Runs are independent per (acquisition, seed) and phases depend only on the schedule up to
/// them, so a resumed run may name other acquisition functions or seeds, or extend (or cut)
/// the schedule; every other setting must match.
fn claim_output(cfg: &ExperimentConfig, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("config.json");
    let mine = serde_json::to_value(cfg)?;
    if path.exists() {
        let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        // Read as today's settings (older directories are upgraded), with the server-only
        // settings an experiment ignores taken as ours.
        let theirs = match ExperimentConfig::from_json(stored.clone()) {
            Ok(t) => serde_json::to_value(t.with_unused_from(cfg))?,
            Err(_) => stored,
        };
        let mut changed = Vec::new();
        for (k, v) in mine.as_object().into_iter().flatten() {
            match (k.as_str(), v, theirs.get(k)) {
                ("acquisitions" | "seeds", _, _) => {}
                ("schedule", serde_json::Value::Array(a), Some(serde_json::Value::Array(b))) => {
                    if a.iter().zip(b).any(|(x, y)| x != y) {
                        changed.push(k.clone());
                    }
                }
                (_, v, t) => differences(k, v, t, &mut changed),
            }
        }
        let diff = changed.join(", ");
        if !diff.is_empty() {
            bail!(
                "{} holds results of a different experiment (settings differ in: {diff}); choose another --out \
                 or resume with the same settings",
                out.display()
            );
        }
    }
    write_atomic(&path, &serde_json::to_string_pretty(&mine)?)?;
    Ok(())
}

/// The paths (`settings.train.beta`) at which `theirs` differs from `mine`.
fn differences(path: &str, mine: &serde_json::Value, theirs: Option<&serde_json::Value>, out: &mut Vec<String>) {
    match (mine, theirs) {
        (serde_json::Value::Object(m), Some(serde_json::Value::Object(t))) => {
            let keys: std::collections::BTreeSet<&String> = m.keys().chain(t.keys()).collect();
            for k in keys {
                let (a, b) = (m.get(k).unwrap_or(&serde_json::Value::Null), t.get(k));
                differences(&format!("{path}.{k}"), a, b, out);
            }
        }
        (m, t) if t != Some(m) => out.push(path.to_string()),
        _ => {}
    }
}

/// The baseline texts of a seed: the TL;DR references, or the starting model's samples
/// (generated once per seed and kept, so every acquisition function is judged against the same).
fn baseline(cfg: &ExperimentConfig, setup: &Setup, out: &Path, seed: u64, obs: &dyn Observer) -> Result<Vec<String>> {
    if cfg.task.kind == Task::Summarize {
        return setup.eval.iter().map(|e| e.reference.clone().context("TL;DR prompt without reference")).collect();
    }
    let path = out.join(format!("baseline-seed{seed}.json"));
    if path.exists() {
        let v: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        if v.len() == setup.eval.len() {
            return Ok(v);
        }
    }
    let reference = Model::from_checkpoint(&setup.base)?;
    let name = format!("baseline seed {seed}");
    let texts = eval_samples(&reference, setup, cfg, baseline_seed(seed), &|s, d, n| obs.stage(&name, s, d, n))?;
    write_atomic(&path, &serde_json::to_string_pretty(&texts)?)?;
    Ok(texts)
}

/// Runs (or resumes) the whole experiment and writes the reports.
pub fn run_experiment(
    cfg: &ExperimentConfig,
    setup: &Setup,
    out: &Path,
    obs: &dyn Observer,
) -> Result<Vec<PhaseRecord>> {
    cfg.validate()?;
    claim_output(cfg, out)?;
    if let Some(r) = &setup.oracle_report {
        write_atomic(&out.join("oracle.json"), &serde_json::to_string_pretty(r)?)?;
    }
    let per_run = cfg.schedule.len() + usize::from(cfg.settings.eval.initial);
    let total = per_run * cfg.seeds.len() * cfg.acquisitions.len();
    let mut done = 0;
    for &seed in &cfg.seeds {
        for &acq in &cfg.acquisitions {
            let base: [String; 0] = [];
            let run = Run { cfg, setup, acquisition: acq, seed, dir: run_dir(out, acq, seed), baseline: &base };
            done += run.finished()?.len();
        }
    }
    obs.begin(total, done);
    let mut all: Vec<PhaseRecord> = Vec::new();
    for &seed in &cfg.seeds {
        let base = baseline(cfg, setup, out, seed, obs)?;
        for &acq in &cfg.acquisitions {
            let name = format!("{acq} seed {seed}");
            let run = Run { cfg, setup, acquisition: acq, seed, dir: run_dir(out, acq, seed), baseline: &base };
            let recs =
                run.run(&|s, d, n| obs.stage(&name, s, d, n), &|rec| obs.phase(rec)).with_context(|| name.clone())?;
            all.extend(recs);
            write_reports(cfg, &all, out)?;
        }
    }
    Ok(all)
}

pub fn run_dir(out: &Path, acq: apl_shared::Acquisition, seed: u64) -> PathBuf {
    out.join("runs").join(format!("{acq}-seed{seed}"))
}

/// phases.csv, summary.csv, summary.md and winrate.svg from the records so far.
pub fn write_reports(cfg: &ExperimentConfig, records: &[PhaseRecord], out: &Path) -> Result<()> {
    write_atomic(&out.join("phases.csv"), &report::phases_csv(records))?;
    let trained: Vec<PhaseRecord> = records.iter().filter(|r| r.phase > 0).cloned().collect();
    let rows = report::summarize(&trained);
    write_atomic(&out.join("summary.csv"), &report::summary_csv(&rows))?;
    write_atomic(&out.join("summary.md"), &report::summary_markdown(&rows))?;
    let title = format!(
        "{} · win-rate vs {} · {} seed(s)",
        cfg.preset.map_or("experiment", |p| p.name()),
        if cfg.task.kind == Task::Summarize { "reference summaries" } else { "starting model" },
        cfg.seeds.len()
    );
    write_atomic(&out.join("winrate.svg"), &report::winrate_svg(&rows, &title))?;
    Ok(())
}
