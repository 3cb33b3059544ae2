//! Pieces the pages share: charts, CSV export, a job's live progress.

pub mod chart;
pub mod export;
pub mod job;
