//! Helpers shared by the server's tests: the engine's committed tiny fixtures.
#![allow(dead_code)]

pub mod model_server;
pub mod process;

use std::path::PathBuf;

use apl_engine::model::Checkpoint;
use candle_core::{DType, Device};

/// A fixture directory of the engine's (`engine/tests/fixtures`, written by `make_fixtures.py`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures").join(name)
}

pub fn load(name: &str, dtype: DType) -> Checkpoint {
    Checkpoint::load(&fixture(name), dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A prompt file of `n` distinct short phrases the tiny tokenizer can encode (four words, `i`
/// written in base 12).
pub fn prompts_file(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let words = ["the", "film", "was", "great", "boring", "acting", "story", "and", "I", "loved", "it", "plot"];
    assert!(n <= 12usize.pow(4));
    let path = dir.join("prompts.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let p: Vec<&str> = (0..4).map(|k| words[(i / 12usize.pow(k)) % words.len()]).collect();
            serde_json::json!({"prompt": p.join(" ")}).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// An experiment observer that shows nothing.
pub struct Quiet;
impl apl::experiment::Observer for Quiet {
    fn begin(&self, _: usize, _: usize) {}
    fn stage(&self, _: &str, _: &str, _: usize, _: usize) {}
    fn phase(&self, _: &apl::experiment::run::PhaseRecord) {}
}

/// A small generic experiment on the tiny fixtures: 300 prompts in `dir`, the length oracle as
/// labeller and judge, 4-token completions, reset each phase, one seed, LoRA over `targets`
/// (rank 4, alpha 8).
pub fn generic_lora_experiment(
    dir: &std::path::Path,
    acquisition: apl_shared::Acquisition,
    schedule: Vec<usize>,
    eval_prompts: usize,
    targets: &[&str],
) -> apl::experiment::config::ExperimentConfig {
    use apl_shared::settings::Trainable;
    use apl_shared::{Labeller, Mode, Preset, Task};
    let mut c = apl::experiment::config::ExperimentConfig::preset(Preset::ImdbCpu);
    c.preset = None;
    c.task.kind = Task::Generic;
    c.task.path = Some(prompts_file(dir, 300));
    c.acquisitions = vec![acquisition];
    c.schedule = schedule;
    c.seeds = vec![0];
    let s = &mut c.settings;
    s.completion_tokens = (4, 4);
    s.labeller = Labeller::Length;
    s.eval.judge = Labeller::Length;
    s.eval.prompts = eval_prompts;
    s.mode = Mode::Reset;
    s.trainable = Trainable::Lora { rank: 4, alpha: 8.0, targets: targets.iter().map(|t| t.to_string()).collect() };
    c
}
