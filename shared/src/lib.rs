//! Types that cross the wire between the server and the frontend, the domain's vocabulary
//! (`vocab`), the learning loop's settings (`settings`) and the paired comparison of arms
//! (`paired`), which the experiment reports and the dashboard both compute.
//!
//! Plain serde data and the checks that need no I/O: the engine, the server and the browser all
//! compile this crate, so a field or a name changed here changes everywhere at once. With the
//! `sqlx` feature the types map onto the store's rows (`sql`); with `openapi` they describe
//! themselves for the generated API document.

use serde::{Deserialize, Serialize};

mod checks;
mod cycle;
mod export;
#[cfg(feature = "rusqlite")]
pub mod lite;
pub mod paired;
mod results;
pub mod settings;
#[cfg(feature = "sqlx")]
pub mod sql;
pub mod vocab;
pub use checks::*;
pub use cycle::*;
pub use export::*;
pub use results::*;
pub use vocab::*;

/// Every error the API returns: a message saying what was wrong and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub message: String,
}

/// `GET /api/health`: what the server is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct PairRequest {
    /// The prompt; a random IMDB prompt when absent.
    pub prompt: Option<String>,
    /// Seed for the prompt choice and sampling; random when absent.
    pub seed: Option<u64>,
}

/// Two completions of one prompt, sampled from the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pair {
    pub prompt: String,
    pub completions: [Completion; 2],
    pub seed: u64,
    pub temperature: f64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// With human raters: when a round is labelled, the server itself trains, evaluates and
    /// acquires the next round.
    pub auto_continue: AutoContinue,
}

impl Default for RatingConfig {
    fn default() -> Self {
        Self {
            guidelines: "Pick the completion that better continues the prompt.".into(),
            overlap: 1,
            gold_rate: 0.0,
            lease_seconds: 600,
            auto_continue: AutoContinue::default(),
        }
    }
}

/// When a human-rated round counts as labelled enough to go on (a `continue` job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AutoContinue {
    pub enabled: bool,
    /// Share of the round's pairs with all their votes, 0 (exclusive) to 1.
    pub fraction: f64,
    /// Minutes after the round was acquired when it goes on with whatever pairs are complete
    /// (at least one); none waits for `fraction`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_minutes: Option<u64>,
}

impl AutoContinue {
    /// Complete pairs a round of `pairs` goes on with: `fraction` of them, rounded up (a hair
    /// under the product, so 0.07 of 100 pairs is 7, not 8), at least one.
    pub fn needed(&self, pairs: i64) -> i64 {
        ((self.fraction * pairs as f64 - 1e-9).ceil() as i64).max(1)
    }
}

impl Default for AutoContinue {
    fn default() -> Self {
        Self { enabled: true, fraction: 1.0, deadline_minutes: None }
    }
}

/// A project's whole configuration: what raters see, and the learning loop's settings
/// (acquisition, labeller, training, evaluation). `GET /api/defaults` returns the defaults
/// with every field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    pub rating: RatingConfig,
    pub loop_settings: settings::LoopSettings,
}

impl ProjectConfig {
    /// A new project's configuration for `task`: the defaults, with the raters' guidelines and
    /// the LLM judge's criteria of that task.
    pub fn for_task(task: Task) -> Self {
        let mut c = Self::default();
        c.rating.guidelines = task.guidelines().into();
        c.loop_settings.judge.task = settings::JudgeTask::for_task(task);
        c
    }
}

/// `POST /api/projects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
    #[serde(default = "default_task")]
    pub task: Task,
    #[serde(default)]
    pub config: Option<ProjectConfig>,
}

fn default_task() -> Task {
    Task::Imdb
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Project {
    pub id: String,
    pub name: String,
    pub task: Task,
    pub config: ProjectConfig,
    pub created_at: i64,
}

/// Counts shown on the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectDetail {
    pub project: Project,
    pub stats: ProjectStats,
}

/// `POST /api/projects/{id}/prompts/imdb`: how many prompts of each split to take from the
/// built-in IMDB pool (disjoint splits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ImdbImport {
    pub train: usize,
    pub eval: usize,
}

impl Default for ImdbImport {
    fn default() -> Self {
        Self { train: 2048, eval: 128 }
    }
}

/// The result of an import: a malformed file is refused whole (with the line at fault); of a
/// well-formed one, what was stored, what was already there, and what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ImportReport {
    pub imported: usize,
    /// Records whose text the project (this split) already holds, or that the file repeats:
    /// importing the same file twice changes nothing.
    pub duplicates: usize,
    /// Records left out because they cannot be used (a prompt longer than the model's context).
    pub refused: usize,
    /// Why records were refused (the first few, with their record numbers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `POST /api/projects/{id}/raters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NewRater {
    pub name: String,
    /// Labels this rater is asked for; none = as many as there are.
    pub quota: Option<i64>,
    /// The invite stops working this many hours from now; none = it never expires (revoke it
    /// by removing the rater).
    pub expires_in_hours: Option<f64>,
}

/// The one time a rater's token is shown: in the invite link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaterInvite {
    pub rater: RaterStats,
    pub token: String,
    /// Path of the rater workspace with the token in the fragment (never sent to servers).
    pub invite_path: String,
}

/// A rater as the admin sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// When the invite stops working (ms since the epoch); none = never.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

vocab::vocabulary! {
    "rater choice";
    /// What a rater answers, in screen terms; the server maps sides back to A and B.
    pub enum RaterChoice {
        Left,
        Right,
        Tie,
        BothBad,
        Skip,
    }
}

/// `GET /api/rate/me`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaterHome {
    pub name: String,
    pub project: String,
    pub guidelines: String,
    pub progress: RaterProgress,
    /// The batch being labelled (the newest round with pairs for raters): a target that does
    /// not move while others label. Refreshed whenever the page asks for this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchProgress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaterProgress {
    /// Labels given (skips excluded).
    pub done: i64,
    /// The rater's quota, or done plus the pairs still open to them, counted up to
    /// [`OPEN_AHEAD`].
    pub target: i64,
    /// The open pairs were counted up to [`OPEN_AHEAD`] and there may be more.
    #[serde(default)]
    pub at_least: bool,
}

/// How far ahead the pairs still open to a rater are counted: the count runs on every label,
/// so it stops here however large the pool (a rater needs "100+ more", not the exact number).
pub const OPEN_AHEAD: i64 = 100;

/// A pair as a rater sees it: no model identities, scores, gold answers or A/B sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// Opaque handle of the pair, used to label or undo.
    pub pair: String,
    pub prompt: String,
    pub left: String,
    pub right: String,
    pub lease_expires_at: i64,
    pub progress: RaterProgress,
}

vocab::vocabulary! {
    "next-pair status";
    /// Why `POST /api/rate/next` answered as it did.
    pub enum NextStatus {
        /// `assignment` holds the rater's pair.
        Assigned,
        /// Nothing left for this rater: every pair they could label is labelled (or their quota
        /// is reached).
        Done,
        /// Every remaining pair is leased to other raters right now; ask again after
        /// `retry_after_seconds` (when the first of those leases runs out).
        Wait,
        /// The project has no pairs to rate yet (the first batch is being prepared); ask again
        /// after `retry_after_seconds`.
        NothingYet,
    }
}

/// `POST /api/rate/next`: the rater's current pair, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextPair {
    pub assignment: Option<Assignment>,
    pub status: NextStatus,
    /// With `wait` and `nothing_yet`: when asking again may find a pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// `POST /api/rate/labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub pair: String,
    pub choice: RaterChoice,
    /// Milliseconds the rater spent on the pair.
    #[serde(default)]
    pub time_ms: u64,
    #[serde(default)]
    pub rationale: Option<String>,
    /// Also claim the rater's next pair and answer it in the acknowledgement's `next`: one
    /// round trip per label instead of two. The label is committed first either way.
    #[serde(default)]
    pub next: bool,
}

/// A label as its rater sees it, returned once it is durably committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LabelAck {
    pub pair: String,
    pub choice: RaterChoice,
    pub created_at: i64,
    pub progress: RaterProgress,
    /// The rater's next pair, when the request asked for it (`next: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextPair>,
}

/// A job the model worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Job {
    pub id: String,
    pub project_id: String,
    pub kind: JobKind,
    pub params: JobParams,
    pub state: JobState,
    pub progress: JobProgress,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A job's parameters; every field optional, the project's settings fill the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct JobParams {
    /// generate / round: pairs to acquire (default: the project's `pairs_per_round`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<usize>,
    /// generate / round: acquisition function (default: the project's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquisition: Option<Acquisition>,
    /// evaluate: checkpoint id (default: the newest; none yet means the starting model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// continue: the round whose labels it goes on from (set by auto-continue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_round: Option<i64>,
}

/// What a job produced: one part per stage it ran. Also reads the flat result a single-stage
/// job stored before results were typed (`{"round": 2, "pairs": 64, ...}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredResult")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct JobResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelledBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<Trained>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<Evaluated>,
    /// What the round waits for before it can go on (human raters' labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A job result as stored: today's, or an older single-stage one.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredResult {
    Parts(Box<JobResultParts>),
    Generate(Generated),
    Label(LabelledBy),
    Train(Trained),
    Evaluate(Evaluated),
}

/// [`JobResult`]'s fields, refusing others (so an older flat result falls through to its stage).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct JobResultParts {
    generate: Option<Generated>,
    label: Option<LabelledBy>,
    train: Option<Trained>,
    evaluate: Option<Evaluated>,
    waiting_for: Option<String>,
}

impl From<StoredResult> for JobResult {
    fn from(r: StoredResult) -> Self {
        match r {
            StoredResult::Parts(p) => {
                let p = *p;
                JobResult {
                    generate: p.generate,
                    label: p.label,
                    train: p.train,
                    evaluate: p.evaluate,
                    waiting_for: p.waiting_for,
                }
            }
            StoredResult::Generate(g) => JobResult { generate: Some(g), ..Default::default() },
            StoredResult::Label(l) => JobResult { label: Some(l), ..Default::default() },
            StoredResult::Train(t) => JobResult { train: Some(t), ..Default::default() },
            StoredResult::Evaluate(e) => JobResult { evaluate: Some(e), ..Default::default() },
        }
    }
}

/// A `generate` stage: the round acquired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Generated {
    pub round: i64,
    pub pairs: usize,
    pub acquisition: Acquisition,
    pub prompts_used: usize,
}

/// A `label` stage: labels an automatic labeller gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LabelledBy {
    pub judge: String,
    pub labelled: usize,
    pub undecided: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<JudgeReport>,
}

/// A `train` stage: the checkpoint it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trained {
    pub checkpoint: String,
    pub pairs: usize,
    pub epoch_losses: Vec<f64>,
}

/// An `evaluate` stage: the evaluation it stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Evaluated {
    pub evaluation: String,
    pub checkpoint: Option<String>,
    pub win_rate: f64,
    pub stderr: f64,
    pub n: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_report: Option<JudgeReport>,
}

/// Live progress of a job: the stage and phase it is in, how far along, and one estimate for
/// the whole job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct JobProgress {
    /// What the current stage is doing ("sampling pairs", "training", "judging", ...).
    pub phase: String,
    /// Work done and to do in the phase (pairs sampled, training steps, ...).
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    /// Seconds left for the whole job: the current stage from its own pace (its work counts
    /// and, when it ran before in this project, how long it took then) plus the later stages'
    /// durations the last time they ran here.
    pub eta_seconds: Option<f64>,
    /// Whether `eta_seconds` covers every stage left; false while a later stage has never run
    /// in this project (then it covers the current stage and the stages timed before).
    pub eta_complete: bool,
    /// The job's stages in order (a round: generate, label, train, evaluate).
    pub stages: Vec<JobKind>,
    /// 1-based position of the current stage in `stages` (0 before the first).
    pub stage: u32,
    /// Seconds each finished stage took, in the order of `stages`; none for a stage that did
    /// not do its work (passed over, reused from a run before, or failed and gone past), which
    /// is then not taken as its usual duration.
    pub stage_seconds: Vec<Option<f64>>,
    /// The whole job's fraction done, 0 to 1: elapsed over elapsed plus `eta_seconds` when the
    /// estimate is complete, otherwise stages done plus the phase's fraction, over the stages.
    pub fraction: f64,
    pub message: String,
}

/// `POST /api/projects/{id}/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub kind: JobKind,
    #[serde(default, deserialize_with = "null_as_default")]
    pub params: JobParams,
}

/// `null` reads as the default (clients send `"params": null` for "no parameters").
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A prompt as the admin sees it (`GET /api/projects/{id}/prompts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptInfo {
    pub id: String,
    pub split: Split,
    pub text: String,
    /// The reference text (TL;DR summaries), when the import had one.
    pub reference: Option<String>,
    /// Where it came from: `upload`, `imdb`, `import` (a pair file), `check`.
    pub source: String,
    /// The round that acquired from it (0: it came with an imported pair).
    pub used_round: Option<i64>,
    /// Disabled prompts are never acquired or evaluated again.
    pub disabled: bool,
    /// Pairs made from it.
    pub pairs: i64,
    pub created_at: i64,
}

/// `PATCH /api/projects/{id}/prompts/{prompt}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PromptUpdate {
    pub disabled: bool,
}

/// A pair as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct PairRecord {
    pub id: String,
    pub kind: PairKind,
    pub round: Option<i64>,
    pub acquisition: Option<Acquisition>,
    pub prompt: String,
    pub completion_a: String,
    pub completion_b: String,
    pub r_a: Option<f64>,
    pub r_b: Option<f64>,
    pub margin: Option<f64>,
    pub entropy: Option<f64>,
    pub gold_choice: Option<Choice>,
    pub target_votes: i64,
    pub votes: i64,
    pub created_at: i64,
    /// An imported row's fields besides prompt, chosen and rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub extra: Option<ExtraFields>,
}

/// The fields of an imported TRL row other than `prompt`, `chosen` and `rejected`, kept as they
/// came (a dataset's `score`, `source`, `id`, ...) and written back in the DPO export under
/// `metadata.extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExtraFields(pub serde_json::Map<String, serde_json::Value>);

#[cfg(feature = "sqlx")]
sql::json_column!(
    ProjectConfig,
    JobParams,
    JobProgress,
    JobResult,
    AcquireStats,
    TrainSummary,
    EvaluationDetails,
    ExtraFields,
);
#[cfg(feature = "rusqlite")]
lite::json_column!(ProjectConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_continue_goes_on_at_its_fraction_rounded_up() {
        let at = |fraction| AutoContinue { fraction, ..Default::default() };
        // 0.07 * 100 is 7.000000000000001 in f64: still 7.
        assert_eq!(at(0.07).needed(100), 7);
        assert_eq!(at(1.0).needed(2), 2);
        assert_eq!(at(0.5).needed(3), 2);
        assert_eq!(at(0.01).needed(10), 1, "at least one pair");
    }

    /// Results stored before they were typed: flat for single-stage jobs, nested for rounds.
    #[test]
    fn older_job_results_read() {
        let read = |v: serde_json::Value| serde_json::from_value::<JobResult>(v).unwrap();
        let g = read(serde_json::json!({"round": 2, "pairs": 64, "acquisition": "certainty", "prompts_used": 256}));
        assert_eq!(g.generate.unwrap().pairs, 64);
        let t = read(serde_json::json!({"checkpoint": "c", "pairs": 3, "epoch_losses": [0.6, 0.4]}));
        assert_eq!(t.train.unwrap().epoch_losses, vec![0.6, 0.4]);
        let e = read(serde_json::json!({"evaluation": "e", "checkpoint": null, "win_rate": 0.5, "stderr": 0.1, "n": 4,
                                        "judge_report": null}));
        assert_eq!(e.evaluate.unwrap().n, 4);
        let l = read(serde_json::json!({"judge": "length", "labelled": 4, "undecided": 1, "report": null}));
        assert_eq!(l.label.unwrap().undecided, 1);
        let waiting = read(serde_json::json!({"generate": {"round": 1, "pairs": 4, "acquisition": "random",
                                              "prompts_used": 4}, "waiting_for": "raters"}));
        assert_eq!(waiting.waiting_for.as_deref(), Some("raters"));
        let today = JobResult {
            train: Some(Trained { checkpoint: "c".into(), pairs: 1, epoch_losses: vec![] }),
            ..Default::default()
        };
        assert_eq!(read(serde_json::to_value(&today).unwrap()), today);
        assert_eq!(read(serde_json::json!({})), JobResult::default());
    }
}
