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
