//! The model engine and the learning algorithms: checkpoints in, a differentiable causal LM
//! out (`model`), DPO training (`train`), acquisition (`acquire`), oracles (`oracle`),
//! evaluation sampling and win-rates (`eval`), the data readers they are fed by (`data`), and
//! the one learning round that strings them together (`round`), which both the experiment
//! runner and the server's jobs drive.
//!
//! It knows nothing of HTTP or SQL: the server and the command line drive it. Every unsafe
//! block of the project lives here (CPU kernels, the run-time BLAS, the allocator tuning of
//! `device`), each with a SAFETY note.

pub mod acquire;
pub mod backend;
pub mod data;
pub mod device;
pub mod eval;
pub mod model;
pub mod oracle;
pub mod round;
pub mod train;
