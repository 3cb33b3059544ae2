//! What the learning loop produced, as the dashboard receives it: rounds, checkpoints,
//! evaluations, and the label-quality and evaluation report (`GET /api/projects/{id}/analytics`).
//! The server computes these (store rows, `analytics::*`) and serialises them as they are.

use serde::{Deserialize, Serialize};

/// A stored round of acquired pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRow {
    pub number: i64,
    pub acquisition: String,
    /// The checkpoint whose policy acquired it (none: the starting model).
    pub policy_checkpoint: Option<String>,
    pub pairs: i64,
    /// Acquisition statistics: prompts drawn, sequences sampled and scored, timings, and the
    /// candidates' `candidate_margins` (the scores the acquisition function ranked).
    pub stats: serde_json::Value,
    pub created_at: i64,
}

/// A trained policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub id: String,
    pub round: i64,
    /// Where the weights are on the server; never sent to clients.
    #[serde(skip_serializing, default)]
    pub path: String,
    /// Labelled pairs it was trained on.
    pub pairs: i64,
    /// Training report: epoch losses, reward accuracies and margins, timings.
    pub report: serde_json::Value,
    pub created_at: i64,
}

/// A win-rate of a checkpoint (none: the starting model) against a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRow {
    pub id: String,
    pub checkpoint_id: Option<String>,
    pub judge: String,
    pub baseline: String,
    pub win_rate: f64,
    pub stderr: f64,
    pub n: i64,
    /// `samples`: [{prompt, prompt_id, policy, reference, outcome: win | loss | tie}] and the win-rate.
    pub details: serde_json::Value,
    pub created_at: i64,
}

/// An estimate with its percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
}

/// A Bradley-Terry rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rated {
    pub index: usize,
    /// Centred log-strength with its bootstrap interval.
    pub strength: f64,
    pub lo: f64,
    pub hi: f64,
    /// 1000 + 400 log10(p_i): differences read as Elo points.
    pub elo: f64,
    pub games: usize,
}

/// Raw and length-controlled win-rate (AlpacaEval 2 style).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthControlled {
    pub n: usize,
    pub raw: f64,
    pub controlled: f64,
    /// Change in log-odds of winning per standard deviation of length difference.
    pub slope: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanAgreement {
    /// Votes other than skips.
    pub votes: usize,
    /// Pairs with at least two such votes.
    pub overlapping_pairs: usize,
    pub krippendorff_alpha: Option<Interval>,
    /// Over the pairs with the most common number of votes (Fleiss needs equal counts).
    pub fleiss_kappa: Option<f64>,
    pub fleiss_pairs: usize,
    /// Share of A-or-B votes that chose the text shown on the left (0.5: no position bias).
    pub left_preference: Option<Interval>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaterPair {
    pub rater_a: String,
    pub rater_b: String,
    pub common_pairs: usize,
    pub kappa: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeAgreement {
    pub judge: String,
    pub labels: usize,
    pub no_decision: usize,
    /// Pairs with both a judge answer and a plurality human label.
    pub compared_pairs: usize,
    /// Raw agreement and Cohen's kappa between the judge and the humans' plurality.
    pub agreement: Option<f64>,
    pub kappa: Option<Interval>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSummary {
    pub id: String,
    pub checkpoint: Option<String>,
    pub judge: String,
    pub win_rate: Option<Interval>,
    pub length_controlled: Option<LengthControlled>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardEntry {
    /// A checkpoint id, or "starting model".
    pub name: String,
    #[serde(flatten)]
    pub rating: Rated,
}

/// Usage summed over an LLM judge's audit log: what a project's judge calls cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerSummary {
    pub calls: u64,
    pub cached: u64,
    pub failed: u64,
    pub no_decision: u64,
    pub decided: u64,
    pub first_position: u64,
    pub attempts: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Over questions asked more than once (self-consistency re-asks): the mean share of
    /// agreeing answer pairs, and how many questions that covers.
    pub self_consistency: Option<f64>,
    pub repeated_questions: usize,
}

/// `GET /api/projects/{id}/analytics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectAnalytics {
    /// The nominal categories agreement is computed over: a, b, tie, both_bad.
    pub categories: Vec<String>,
    pub humans: HumanAgreement,
    pub rater_pairs: Vec<RaterPair>,
    pub judges: Vec<JudgeAgreement>,
    pub evaluations: Vec<EvaluationSummary>,
    pub leaderboard: Vec<LeaderboardEntry>,
    /// The LLM judge's usage from its audit log, when the project has one.
    #[serde(default)]
    pub judge_usage: Option<LedgerSummary>,
}
