//! Oracles: whatever labels a pair. Given a prompt and two completions, an oracle prefers A,
//! prefers B, or makes no decision, with a rationale when it has one. The learning loop, the
//! win-rate evaluation, the LLM judge (`crate::judge`) and human raters all meet at this trait.

pub mod length;
pub mod sentiment;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    A,
    B,
    /// Judged equal (a judge asked in both orders that disagreed with itself, when configured so):
    /// dropped from training, half a win in win-rates.
    Tie,
    /// No usable answer: the pair is dropped from training and counts as a tie in win-rates.
    NoDecision,
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

    fn judge(&self, item: &Comparison) -> anyhow::Result<Judgement>;

    /// What the oracle has to report after judging (an LLM judge: calls, tokens, cost, position
    /// bias), for job results.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }

    /// Judges many items; oracles that batch or call out concurrently override this.
    fn judge_all(&self, items: &[Comparison]) -> anyhow::Result<Vec<Judgement>> {
        items.iter().map(|c| self.judge(c)).collect()
    }
}
