//! The experiment runner: every (acquisition function, seed) run of a configuration, one
//! after another, with progress bars, resumable results and the reports at the end.
//!
//! Layout of the output directory:
//!
//! ```text
//! config.json                 the settings (a resumed run must match them, save for
//!                             acquisition functions, seeds and the schedule's length)
//! oracle.json                 the sentiment oracle's held-out accuracy (when it labels or judges)
//! held-out-judge.json         the second classifier's (with `held_out_judge`)
//! judge.jsonl                 the LLM judge's audit log and cache (when it labels or judges)
//! baseline-seed{S}.json       the starting model's evaluation samples for seed S
//! runs/{acq}-seed{S}/         phase-{P}.json, data.jsonl, policy-phase-{P}.safetensors,
//!                             samples-phase-{P}.json
//! phases.csv summary.csv summary.md summary.json winrate.svg
//!                             (summary.*: win-rates, every arm against random paired per
//!                             prompt, labels to reach random's final win-rate)
//! ```

pub mod config;
pub mod report;
pub mod run;
pub mod setup;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use apl_shared::Task;
use config::ExperimentConfig;
use run::{PhaseRecord, Run, baseline_seed, eval_length_seed, eval_samples, write_atomic};
use setup::Setup;

use apl_engine::backend::{Local, Role};
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
    let length_seed = eval_length_seed(seed);
    // Kept with the seed of its lengths, which every policy's samples share: a file from before
    // (a bare list, lengths of its own) is made again.
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(b) = serde_json::from_str::<BaselineFile>(&text)
        && b.length_seed == length_seed
        && b.texts.len() == setup.eval.len()
    {
        return Ok(b.texts);
    }
    let name = format!("baseline seed {seed}");
    let progress = |s: &str, d, n| obs.stage(&name, s, d, n);
    let (seed_b, role) = (baseline_seed(seed), Role::Reference);
    let texts = match &setup.remote {
        Some(r) => eval_samples(&r.serving(None), role, setup, cfg, seed_b, length_seed, &progress)?,
        None => {
            let reference = Model::from_checkpoint(&setup.base)?;
            let backend = Local::model(&reference, setup.tokenizer.eos_ids());
            eval_samples(&backend, role, setup, cfg, seed_b, length_seed, &progress)?
        }
    };
    write_atomic(&path, &serde_json::to_string_pretty(&BaselineFile { length_seed, texts: texts.clone() })?)?;
    Ok(texts)
}

/// `baseline-seed{S}.json`: the starting model's evaluation samples of one seed.
#[derive(serde::Serialize, serde::Deserialize)]
struct BaselineFile {
    /// Draws the completion lengths (shared with every policy's samples of this seed).
    length_seed: u64,
    texts: Vec<String>,
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
    if let Some(r) = &setup.held_out_report {
        write_atomic(&out.join("held-out-judge.json"), &serde_json::to_string_pretty(r)?)?;
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

/// The finished phases of `cfg`'s arms and seeds in `out`, as their records say.
pub fn finished(cfg: &ExperimentConfig, out: &Path) -> Result<Vec<PhaseRecord>> {
    let mut all = Vec::new();
    for &seed in &cfg.seeds {
        for &acq in &cfg.acquisitions {
            let dir = run_dir(out, acq, seed);
            for phase in 0..=cfg.schedule.len() {
                let p = dir.join(format!("phase-{phase}.json"));
                if let Ok(text) = std::fs::read_to_string(&p) {
                    all.push(serde_json::from_str(&text).with_context(|| format!("{} is corrupt", p.display()))?);
                }
            }
        }
    }
    Ok(all)
}

pub fn run_dir(out: &Path, acq: apl_shared::Acquisition, seed: u64) -> PathBuf {
    out.join("runs").join(format!("{acq}-seed{seed}"))
}

/// phases.csv, summary.csv, summary.md, summary.json and winrate.svg from the records so far
/// (and the per-prompt outcomes their runs saved).
pub fn write_reports(cfg: &ExperimentConfig, records: &[PhaseRecord], out: &Path) -> Result<()> {
    write_atomic(&out.join("phases.csv"), &report::phases_csv(records))?;
    let trained: Vec<PhaseRecord> = records.iter().filter(|r| r.phase > 0).cloned().collect();
    let rows = report::summarize(&trained);
    let cmp = report::compare(&outcomes(out, &trained)?);
    let head = cfg.preset.map(|p| format!("Preset `{}`: {}.", p.name(), p.fidelity()));
    write_atomic(&out.join("summary.csv"), &report::summary_csv(&rows, &cmp))?;
    write_atomic(&out.join("summary.md"), &report::summary_markdown(&rows, &cmp, head.as_deref()))?;
    let json = serde_json::json!({
        "preset": cfg.preset,
        "fidelity": cfg.preset.map(|p| p.fidelity()),
        "rows": rows,
        "paired": cmp.paired,
        "efficiency": cmp.efficiency,
    });
    write_atomic(&out.join("summary.json"), &serde_json::to_string_pretty(&json)?)?;
    let title = format!(
        "{} · win-rate vs {} · {} seed(s)",
        cfg.preset.map_or("experiment", |p| p.name()),
        if cfg.task.kind == Task::Summarize { "reference summaries" } else { "starting model" },
        cfg.seeds.len()
    );
    write_atomic(&out.join("winrate.svg"), &report::winrate_svg(&rows, &title))?;
    Ok(())
}

/// The per-prompt outcomes of the phases in `records`, from their runs' samples files (phases
/// run before those files kept outcomes are left out).
pub fn outcomes(out: &Path, records: &[PhaseRecord]) -> Result<report::Outcomes> {
    let mut o = report::Outcomes::default();
    for r in records {
        let path = run_dir(out, r.acquisition, r.seed).join(format!("samples-phase-{}.json", r.phase));
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let rows: Vec<run::SampleRow> =
            serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
        // FNV-1a over the baseline texts: equal for phases judged against one baseline.
        let baseline = rows
            .iter()
            .flat_map(|s| s.sample.baseline.bytes().chain([0xff]))
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        let scores: Option<Vec<f64>> = rows.iter().map(|s| s.sample.outcome.map(|x| x.score())).collect();
        if let Some(v) = scores {
            o.0.insert((report::Judge::Oracle, r.acquisition, r.m, r.seed), (baseline, v));
        }
        let held: Option<Vec<f64>> = rows.iter().map(|s| s.held_out_outcome.map(|x| x.score())).collect();
        if let Some(v) = held {
            o.0.insert((report::Judge::HeldOut, r.acquisition, r.m, r.seed), (baseline, v));
        }
    }
    Ok(o)
}
