//! Human win-rate checks: an admin sends an evaluation's samples (a checkpoint's completions
//! against the reference) to a chosen group of raters, blind and with randomised sides, through
//! the ordinary rater workspace; the evaluation panel sets the human win-rate beside the
//! judge's on the same pairs.

use serde::{Deserialize, Serialize};

use crate::vocab::Outcome;

/// `POST /api/projects/{id}/checks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewHumanCheck {
    /// The evaluation whose samples are checked.
    pub evaluation: String,
    /// Raters (ids) who receive the check's pairs; at least one, each an enabled rater of this
    /// project, none twice.
    pub raters: Vec<String>,
    /// Distinct raters per pair (at most the number of raters); default 1.
    #[serde(default)]
    pub overlap: Option<u32>,
    /// How many of the evaluation's samples to send (the first n); default all.
    #[serde(default)]
    pub pairs: Option<usize>,
}

/// A win-rate with its 95% interval (percentile bootstrap over pairs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateInterval {
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    /// Pairs it is computed over.
    pub n: usize,
}

/// A check as the panel sees it, with its figures so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HumanCheck {
    pub id: String,
    pub evaluation: String,
    /// The checkpoint evaluated (none: the starting model).
    pub checkpoint: Option<String>,
    /// The judge of the evaluation (its figure is over the same pairs).
    pub judge: String,
    /// Ids of the raters it was sent to, in the order they joined the project.
    pub raters: Vec<String>,
    pub overlap: u32,
    pub pairs: i64,
    /// Human votes given so far (skips excluded) and votes asked for (pairs x overlap).
    pub votes: i64,
    pub target_votes: i64,
    /// Policy win-rate by the raters: each pair scores its raters' mean (win 1, tie or both
    /// bad 1/2, loss 0); none until a pair has a vote.
    pub human: Option<RateInterval>,
    /// The judge's win-rate on the same pairs (those with a human vote).
    pub judge_rate: Option<RateInterval>,
    /// Share of those pairs where the raters' majority outcome equals the judge's.
    pub agreement: Option<f64>,
    /// Cohen's kappa between the raters' majority and the judge over win / tie / loss.
    pub kappa: Option<f64>,
    pub created_at: i64,
}

/// One pair of a check, for the side-by-side view (`GET /api/checks/{id}/pairs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct CheckPair {
    pub pair: String,
    pub prompt: String,
    pub policy: String,
    /// The baseline's text (the starting model's sample, or the reference).
    #[serde(alias = "reference")]
    pub baseline: String,
    /// The judge's outcome for the policy.
    pub judge: Outcome,
    /// Human votes as outcomes for the policy (both_bad counts as a tie), in the order given;
    /// skips are left out.
    #[cfg_attr(feature = "sqlx", sqlx(skip))]
    pub human: Vec<Outcome>,
}
