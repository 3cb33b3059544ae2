//! What the learning loop produced, as the dashboard receives it: rounds, checkpoints,
//! evaluations, jobs' results, and the label-quality and evaluation report
//! (`GET /api/projects/{id}/analytics`). The server computes these (store rows, `analytics::*`)
//! and serialises them as they are; the experiment runner writes the same types to its files.

use serde::{Deserialize, Serialize};

use crate::vocab::{Acquisition, Choice, LabelSource, Outcome};

/// What an acquisition cost and saw: a round's statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct AcquireStats {
    pub prompts_drawn: usize,
    /// Prompts passed over because with the longest completion they exceed the model's
    /// positions (marked used, so no later round draws them again).
    pub prompts_skipped: usize,
    pub sequences_sampled: usize,
    pub sequences_scored: usize,
    pub sampling_seconds: f64,
    pub scoring_seconds: f64,
    /// r_a - r_b of every scored candidate (the scores certainty ranks; for histograms).
    pub candidate_margins: Vec<f32>,
    /// Entropy estimate of every candidate prompt (the scores entropy ranks).
    pub candidate_entropies: Vec<f32>,
}

/// A stored round of acquired pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct RoundRow {
    pub number: i64,
    pub acquisition: Acquisition,
    /// The checkpoint whose policy acquired it (none: the starting model).
    pub policy_checkpoint: Option<String>,
    pub pairs: i64,
    pub stats: AcquireStats,
    pub created_at: i64,
}

/// What a training run did: its loss, reward accuracy and margin step by step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct TrainSummary {
    /// Which labels it trained on (server checkpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<LabelSource>,
    pub steps: usize,
    pub epoch_losses: Vec<f64>,
    pub loss_curve: Vec<f64>,
    pub margin_curve: Vec<f64>,
    pub accuracy_curve: Vec<f64>,
    pub seconds: f64,
}

/// A trained policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct CheckpointRow {
    pub id: String,
    pub round: i64,
    /// Where the weights are on the server; never sent to clients.
    #[serde(skip_serializing, default)]
    pub path: String,
    /// Labelled pairs it was trained on.
    pub pairs: i64,
    pub report: TrainSummary,
    pub created_at: i64,
}

/// One evaluation prompt: the policy's and the baseline's texts and how the policy fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvalSample {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    pub prompt: String,
    pub policy: String,
    /// The starting model's sample, or the reference text (TL;DR).
    #[serde(alias = "reference")]
    pub baseline: String,
    /// Absent where the experiment runner records samples before judging them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// An evaluation's win-rate and its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationDetails {
    pub win_rate: WinRate,
    pub samples: Vec<EvalSample>,
}

/// A win-rate of a checkpoint (none: the starting model) against a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct EvaluationRow {
    pub id: String,
    pub checkpoint_id: Option<String>,
    pub judge: String,
    pub baseline: String,
    pub win_rate: f64,
    pub stderr: f64,
    pub n: i64,
    pub details: EvaluationDetails,
    pub created_at: i64,
}

/// Running totals of an LLM judge's calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct JudgeTotals {
    pub calls: u64,
    pub cached: u64,
    pub failed: u64,
    /// Attempts beyond the first, over all calls.
    pub retries: u64,
    /// Answers with no A or B.
    pub no_decision: u64,
    /// Answered calls, and those that chose the text shown first.
    pub decided: u64,
    pub first_position: u64,
    /// Pairs asked in both orders with both answered, and those whose answers disagreed.
    pub both_orders: u64,
    pub disagreements: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

impl JudgeTotals {
    /// Share of decided calls that chose the text shown first (0.5 = no position bias).
    pub fn first_position_rate(&self) -> Option<f64> {
        (self.decided > 0).then(|| self.first_position as f64 / self.decided as f64)
    }

    /// Share of both-order pairs whose two answers disagreed.
    pub fn position_bias_rate(&self) -> Option<f64> {
        (self.both_orders > 0).then(|| self.disagreements as f64 / self.both_orders as f64)
    }
}

/// What an LLM judge reports after a job: its totals and position-bias rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JudgeReport {
    #[serde(flatten)]
    pub totals: JudgeTotals,
    pub first_position_rate: Option<f64>,
    pub position_bias_rate: Option<f64>,
    /// Answered calls in the judge's audit log (its cache).
    pub audit_log_calls: usize,
}

/// A win-rate over evaluation prompts: ties and undecided judgements count half.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WinRate {
    pub win_rate: f64,
    /// Standard error of the mean over prompts: sample std (ddof 1) / sqrt(n).
    pub stderr: f64,
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// An estimate with its percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
}

/// A Bradley-Terry rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LengthControlled {
    pub n: usize,
    pub raw: f64,
    pub controlled: f64,
    /// Change in log-odds of winning per standard deviation of length difference.
    pub slope: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaterPair {
    pub rater_a: String,
    pub rater_b: String,
    pub common_pairs: usize,
    pub kappa: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationSummary {
    pub id: String,
    pub checkpoint: Option<String>,
    pub judge: String,
    pub win_rate: Option<Interval>,
    pub length_controlled: Option<LengthControlled>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderboardEntry {
    /// The checkpoint (none: the starting model).
    pub checkpoint: Option<String>,
    #[serde(flatten)]
    pub rating: Rated,
}

/// Usage summed over an LLM judge's audit log: what a project's judge calls cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectAnalytics {
    /// The nominal categories agreement is computed over: a, b, tie, both_bad.
    pub categories: Vec<Choice>,
    pub humans: HumanAgreement,
    pub rater_pairs: Vec<RaterPair>,
    pub judges: Vec<JudgeAgreement>,
    pub evaluations: Vec<EvaluationSummary>,
    pub leaderboard: Vec<LeaderboardEntry>,
    /// The LLM judge's usage from its audit log, when the project has one.
    #[serde(default)]
    pub judge_usage: Option<LedgerSummary>,
}
