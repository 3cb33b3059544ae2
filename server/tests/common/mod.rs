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
