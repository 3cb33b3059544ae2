//! Types that cross the wire between the server and the frontend.
//!
//! Plain serde data, no behaviour: both sides compile this crate, so a field renamed here is
//! renamed everywhere at once.

use serde::{Deserialize, Serialize};

mod checks;
mod results;
pub use checks::*;
pub use results::*;

/// Every error the API returns: a message saying what was wrong and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}

/// `GET /api/health`: what the server is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Model source (file or directory name, no full path).
    pub model: String,
    pub architecture: String,
    pub parameters: u64,
    pub device: String,
    pub prompts: usize,
}

/// `POST /api/pair`: sample two completions for one prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PairRequest {
    /// The prompt; a random IMDB prompt when absent.
    pub prompt: Option<String>,
    /// Seed for the prompt choice and sampling; random when absent.
    pub seed: Option<u64>,
}

/// Two completions of one prompt, sampled from the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub completions: [Completion; 2],
    pub seed: u64,
    pub temperature: f64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub tokens: usize,
    /// Sum of log pi(y_t | x, y_<t) over the completion under the policy.
    pub logprob: f32,
}

// ---------------------------------------------------------------------------------------------
// The annotation server. Ids are opaque strings (UUIDv7); times are Unix milliseconds.
// ---------------------------------------------------------------------------------------------

/// What raters see and how pairs reach them. Plain data with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatingConfig {
    /// Guidelines shown to raters (plain text).
    pub guidelines: String,
    /// Distinct raters per pair (k).
    pub overlap: u32,
    /// Share of a rater's pairs drawn from the gold pairs, 0 to 1.
    pub gold_rate: f64,
    /// Seconds a rater holds a pair before it goes back to the pool.
    pub lease_seconds: u64,
}

impl Default for RatingConfig {
    fn default() -> Self {
        Self {
            guidelines: "Pick the completion that better continues the prompt.".into(),
            overlap: 1,
            gold_rate: 0.0,
            lease_seconds: 600,
        }
    }
}

/// A project's whole configuration. `loop_settings` (generation, acquisition, training,
/// evaluation, labeller) is checked by the server against its own types; `GET
/// /api/defaults` returns the defaults with every field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    pub rating: RatingConfig,
    pub loop_settings: serde_json::Value,
}

/// `POST /api/projects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
    /// `imdb` (sentiment continuation), `summarize` (TL;DR) or `generic`.
    #[serde(default = "default_task")]
    pub task: String,
    #[serde(default)]
    pub config: Option<ProjectConfig>,
}

fn default_task() -> String {
    "imdb".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub task: String,
    pub config: ProjectConfig,
    pub created_at: i64,
}

/// Counts shown on the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectStats {
    pub prompts_train: i64,
    pub prompts_eval: i64,
    pub prompts_unused: i64,
    pub pairs: i64,
    pub gold_pairs: i64,
    /// Pairs with all the votes they need.
    pub pairs_complete: i64,
    pub labels: i64,
    pub judge_labels: i64,
    pub raters: i64,
    pub rounds: i64,
    pub checkpoints: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectDetail {
    pub project: Project,
    pub stats: ProjectStats,
}

/// The result of an all-or-nothing import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub imported: usize,
}

/// `POST /api/projects/{id}/raters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewRater {
    pub name: String,
    /// Labels this rater is asked for; none = as many as there are.
    pub quota: Option<i64>,
}

/// The one time a rater's token is shown: in the invite link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaterInvite {
    pub rater: RaterStats,
    pub token: String,
    /// Path of the rater workspace with the token in the fragment (never sent to servers).
    pub invite_path: String,
}

/// A rater as the admin sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaterStats {
    pub id: String,
    pub name: String,
    pub quota: Option<i64>,
    pub disabled: bool,
    pub labels: i64,
    pub skips: i64,
    pub gold_answered: i64,
    pub gold_correct: i64,
    /// Median seconds per label.
    pub median_seconds: Option<f64>,
    pub created_at: i64,
}

/// What a rater answers, in screen terms; the server maps sides back to A and B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaterChoice {
    Left,
    Right,
    Tie,
    BothBad,
    Skip,
}

/// `GET /api/rate/me`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaterHome {
    pub name: String,
    pub project: String,
    pub guidelines: String,
    pub progress: RaterProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RaterProgress {
    /// Labels given (skips excluded).
    pub done: i64,
    /// The rater's quota, or done plus the pairs still open to them (counted up to 500 ahead).
    pub target: i64,
}

/// A pair as a rater sees it: no model identities, scores, gold answers or A/B sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Opaque handle of the pair, used to label or undo.
    pub pair: String,
    pub prompt: String,
    pub left: String,
    pub right: String,
    pub lease_expires_at: i64,
    pub progress: RaterProgress,
}

/// `POST /api/rate/next`: the rater's current pair, or none left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextPair {
    pub assignment: Option<Assignment>,
}

/// `POST /api/rate/labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub pair: String,
    pub choice: RaterChoice,
    /// Milliseconds the rater spent on the pair.
    #[serde(default)]
    pub time_ms: u64,
    #[serde(default)]
    pub rationale: Option<String>,
}

/// A label as its rater sees it, returned once it is durably committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelAck {
    pub pair: String,
    pub choice: RaterChoice,
    pub created_at: i64,
    pub progress: RaterProgress,
}

/// A job the model worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub project_id: String,
    pub kind: String,
    pub params: serde_json::Value,
    /// queued, running, done, failed or cancelled.
    pub state: String,
    pub progress: JobProgress,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// Live progress of a job: the phase it is in and how far along.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobProgress {
    pub phase: String,
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub message: String,
}

/// `POST /api/projects/{id}/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// generate (acquire a round of pairs), label (oracle labels), train, evaluate, round.
    pub kind: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

/// A pair as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub id: String,
    pub kind: String,
    pub round: Option<i64>,
    pub acquisition: Option<String>,
    pub prompt: String,
    pub completion_a: String,
    pub completion_b: String,
    pub r_a: Option<f64>,
    pub r_b: Option<f64>,
    pub margin: Option<f64>,
    pub entropy: Option<f64>,
    pub gold_choice: Option<String>,
    pub target_votes: i64,
    pub votes: i64,
    pub created_at: i64,
}
