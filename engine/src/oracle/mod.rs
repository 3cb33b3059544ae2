//! Oracles: whatever labels a pair. Given a prompt and two completions, an oracle prefers A,
//! prefers B, or makes no decision, with a rationale when it has one. The learning loop, the
//! win-rate evaluation and the server's LLM judges all meet at this trait.

pub mod length;
pub mod noisy;
pub mod sentiment;

use serde::{Deserialize, Serialize};

pub use apl_shared::Preference;

/// Any error type an oracle's work can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An oracle could not judge (an LLM judge's API failing, a model error): which oracle, and
/// why, as the cause.
#[derive(Debug, thiserror::Error)]
#[error("the {oracle} labeller failed")]
pub struct OracleError {
    pub oracle: String,
    #[source]
    pub source: BoxError,
}

impl OracleError {
    pub fn new(oracle: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self { oracle: oracle.into(), source: source.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub preference: Preference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

impl Judgement {
    pub fn new(preference: Preference) -> Self {
        Self { preference, rationale: None }
    }
}

/// One item to judge: the prompt and the two completions (completion text only).
#[derive(Debug, Clone, Copy)]
pub struct Comparison<'a> {
    pub prompt: &'a str,
    pub a: &'a str,
    pub b: &'a str,
}

pub trait Oracle: Send + Sync {
    /// A short name for logs and result files.
    fn name(&self) -> String;

    fn judge(&self, item: &Comparison) -> Result<Judgement, OracleError>;

    /// The oracle's score of one completion, where it prefers by comparing scores (sentiment:
    /// the log-odds of positive; length: characters): what a simulated noisy rater draws its
    /// Bradley-Terry choice from. None for oracles that only compare (LLM judges).
    fn score(&self, _prompt: &str, _completion: &str) -> Option<f64> {
        None
    }

    /// What the oracle has to report after judging (an LLM judge: calls, tokens, cost, position
    /// bias), for job results.
    fn report(&self) -> Option<apl_shared::JudgeReport> {
        None
    }

    /// Judges many items; oracles that batch or call out concurrently override this.
    fn judge_all(&self, items: &[Comparison]) -> Result<Vec<Judgement>, OracleError> {
        items.iter().map(|c| self.judge(c)).collect()
    }
}
