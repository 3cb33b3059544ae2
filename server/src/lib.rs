//! Active preference learning workbench: the model engine, and (growing) the learning loop
//! and the annotation server built on it. `main.rs` only parses the command line.

pub mod model;
