//! Active preference learning workbench: the annotation server (API, store, worker), LLM
//! judges, analytics, the experiment runner and the command line, over the model engine of
//! `apl-engine`. `main.rs` only parses the command line.
//!
//! No unsafe code here: every unsafe block lives in the engine.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod api;
pub mod assets;
pub mod cli;
pub mod error;
pub mod experiment;
pub mod judge;
pub mod openai;
pub mod remote;
pub mod store;
pub mod trl;
pub mod worker;
