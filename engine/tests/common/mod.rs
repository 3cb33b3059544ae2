//! Helpers shared by the engine tests: the committed fixtures and their expected values.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use apl_engine::model::{Batch, Checkpoint, Model};
use candle_core::{DType, Device, Tensor};

/// Every HF fixture directory written by `tests/fixtures/make_fixtures.py`.
pub const FIXTURES: &[&str] = &["llama", "llama3", "qwen2", "gpt2", "gpt_neox", "gpt_neox_seq"];

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn load(name: &str, dtype: DType) -> Checkpoint {
    let p = fixture(name);
    let p = if p.join("model.gguf").exists() { p.join("model.gguf") } else { p };
    Checkpoint::load(&p, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn model(name: &str) -> Model {
    Model::from_checkpoint(&load(name, DType::F32)).unwrap()
}

pub fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu).unwrap()
}

pub fn rows_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap()
}

/// The padded parity batch exactly as HF saw it.
pub fn parity_batch(exp: &HashMap<String, Tensor>, prefix: &str) -> (Batch, Vec<Vec<bool>>) {
    let ids = rows_u32(&exp[&format!("{prefix}input_ids")]);
    let valid: Vec<Vec<bool>> = rows_u32(&exp[&format!("{prefix}attention_mask")])
        .into_iter()
        .map(|r| r.into_iter().map(|m| m == 1).collect())
        .collect();
    (Batch::from_rows(ids, valid.clone(), DType::F32, &Device::Cpu).unwrap(), valid)
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A deterministic token sequence in 3..vocab.
pub fn tokens(n: usize, seed: u64, vocab: u32) -> Vec<u32> {
    let mut x = seed.wrapping_add(0x9E3779B97F4A7C15);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        })
        .collect()
}
