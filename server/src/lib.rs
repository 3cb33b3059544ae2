//! Active preference learning workbench: the model engine, and (growing) the learning loop
//! and the annotation server built on it. `main.rs` only parses the command line.

pub mod acquire;
pub mod analytics;
pub mod api;
pub mod assets;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod experiment;
pub mod judge;
pub mod model;
pub mod oracle;
pub mod store;
pub mod train;
pub mod worker;
