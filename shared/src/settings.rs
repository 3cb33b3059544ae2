//! The learning loop's settings as plain data: one type, [`LoopSettings`], serves both drivers
//! of a round — a project's settings on the server and an experiment's on the command line —
//! with the presets as its named values ([`LoopSettings::preset`]). The engine reads the parts
//! it needs (`TrainConfig`, `AcquireConfig`, `Trainable`); the browser edits the whole.
//!
//! Unknown fields are refused by serde, naming the field; [`LoopSettings::validate`] refuses
//! values that cannot run, naming the field too.

use serde::{Deserialize, Serialize};

use crate::vocab::{Acquisition, LabelSource, Labeller, Mode, Preset, Task, UnknownName, Vocabulary, vocabulary};

/// A setting that cannot run: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidSetting {
    /// The field's path, e.g. `train.beta`.
    pub field: String,
    pub problem: String,
}

impl InvalidSetting {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }

    /// The same problem one level down, under `parent` (`loop_settings`).
    pub fn within(self, parent: &str) -> Self {
        Self { field: format!("{parent}.{}", self.field), problem: self.problem }
    }
}

fn check(ok: bool, field: &str, problem: &str) -> Result<(), InvalidSetting> {
    if ok { Ok(()) } else { Err(InvalidSetting::new(field, problem)) }
}

/// Adam (AdamW with `weight_decay`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 = plain Adam.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The preference loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Loss {
    /// -log sigmoid(h), h = beta * ((pc - rc) - (pr - rr)).
    #[default]
    Dpo,
    /// Conservative DPO: labels flipped with probability `label_smoothing`:
    /// -(1 - e) log sigmoid(h) - e log sigmoid(-h).
    Cdpo { label_smoothing: f64 },
    /// IPO: ((pc - rc) - (pr - rr) - 1 / (2 beta))^2.
    Ipo,
}

vocabulary! {
    "loss";
    /// The preference losses, by name (`Loss` with its parameters).
    pub enum LossKind {
        Dpo,
        Cdpo,
        Ipo,
    }
}

impl Loss {
    pub fn kind(self) -> LossKind {
        match self {
            Self::Dpo => LossKind::Dpo,
            Self::Cdpo { .. } => LossKind::Cdpo,
            Self::Ipo => LossKind::Ipo,
        }
    }
}

/// A loss malformed on the command line: `dpo`, `ipo` or `cdpo:EPSILON`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadLoss {
    #[error(transparent)]
    Name(#[from] UnknownName),
    #[error("loss {0:?}: cdpo takes its label smoothing as cdpo:EPSILON, e.g. cdpo:0.1")]
    Smoothing(String),
    #[error("loss {0:?}: only cdpo takes a parameter")]
    Parameter(String),
}

impl std::str::FromStr for Loss {
    type Err = BadLoss;

    /// `dpo`, `ipo`, or `cdpo:EPSILON` (the label smoothing).
    fn from_str(s: &str) -> Result<Self, BadLoss> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        Ok(match (LossKind::parse(name)?, arg) {
            (LossKind::Dpo, None) => Loss::Dpo,
            (LossKind::Ipo, None) => Loss::Ipo,
            (LossKind::Cdpo, Some(e)) => {
                Loss::Cdpo { label_smoothing: e.trim().parse().map_err(|_| BadLoss::Smoothing(s.to_string()))? }
            }
            (LossKind::Cdpo, None) => return Err(BadLoss::Smoothing(s.to_string())),
            (_, Some(_)) => return Err(BadLoss::Parameter(s.to_string())),
        })
    }
}

/// Which parameters train.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trainable {
    /// Every parameter.
    #[default]
    All,
    /// The top `k` transformer layers (all their weights); embeddings, head, final norm and
    /// the layers below stay frozen.
    TopLayers { k: usize },
    /// LoRA adapters (rank, alpha) on the projections whose last name component is listed
    /// (`q_proj`, `v_proj`, `c_attn`, `query_key_value`, ...); every base weight frozen.
    Lora { rank: usize, alpha: f64, targets: Vec<String> },
}

/// DPO training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub loss: Loss,
    /// DPO's beta (the paper: 0.2).
    pub beta: f64,
    pub adam: AdamConfig,
    /// Pairs per optimiser step.
    pub pairs_per_step: usize,
    /// Pairs per forward/backward pass; gradients of a step's micro-batches accumulate.
    pub micro_batch: usize,
    pub epochs: usize,
    /// Shuffles the pairs each epoch.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: Loss::Dpo,
            beta: 0.2,
            adam: AdamConfig::default(),
            pairs_per_step: 64,
            micro_batch: 16,
            epochs: 50,
            seed: 0,
        }
    }
}

/// Acquisition factors and temperatures; defaults are the paper's IMDB settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AcquireConfig {
    /// Temperature of the pairs sent for labelling.
    pub pair_temperature: f64,
    /// Certainty / uncertainty: candidate pairs per kept pair (IMDB 32, TL;DR 16). Hybrid:
    /// prompts entropy keeps per final pair.
    pub over_generate: usize,
    /// Entropy: candidate prompts per kept prompt (IMDB 8, TL;DR 4).
    pub entropy_over_sample: usize,
    /// Monte Carlo samples per prompt for the entropy estimate.
    pub entropy_samples: usize,
    pub entropy_temperature: f64,
    /// Reproduce the reference code's sliding-window entropy estimate instead of the
    /// per-prompt mean (to compare with the paper's numbers: its entropy and hybrid columns
    /// used that estimate, which selects close to randomly).
    pub windowed_entropy_reference: bool,
    /// The lengths of a pair's two completions: drawn for each completion (the reference's
    /// way), or one length for both.
    pub pair_lengths: PairLengths,
    /// Rows per sampling or scoring pass.
    pub batch_size: usize,
}

impl Default for AcquireConfig {
    fn default() -> Self {
        Self {
            pair_temperature: 0.7,
            over_generate: 32,
            entropy_over_sample: 8,
            entropy_samples: 8,
            entropy_temperature: 1.0,
            windowed_entropy_reference: false,
            pair_lengths: PairLengths::Independent,
            batch_size: 32,
        }
    }
}

vocabulary! {
    "pair lengths";
    /// How the completion lengths of a pair are drawn.
    #[derive(Default)]
    pub enum PairLengths {
        /// Each completion draws its own length from `completion_tokens` (arXiv 2402.08114's
        /// reference code). Length is then part of the reward gap certainty ranks by.
        #[default]
        Independent,
        /// Both completions of a pair share one drawn length (a length-controlled comparison).
        Matched,
    }
}

impl PairLengths {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Independent => "each completion its own length (the paper)",
            Self::Matched => "one length per pair (length-controlled)",
        }
    }
}

/// Evaluation: the policy's samples on held-out prompts judged against a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Held-out prompts per evaluation (the paper: 1024).
    pub prompts: usize,
    pub temperature: f64,
    /// Rows per sampling pass.
    pub batch_size: usize,
    /// Who judges policy against baseline: an automatic labeller.
    pub judge: Labeller,
    /// Experiments: also evaluate the untrained policy (phase 0).
    pub initial: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { prompts: 1024, temperature: 0.25, batch_size: 32, judge: Labeller::Sentiment, initial: false }
    }
}

vocabulary! {
    "judge task";
    /// Which criteria an LLM judge applies.
    #[derive(Default)]
    pub enum JudgeTask {
        /// IMDB continuations: more positive sentiment, while fluent.
        #[default]
        Imdb,
        /// TL;DR summaries: the important points without irrelevant detail.
        Summarize,
        /// Generic assistant responses: which is more helpful.
        Helpful,
        /// The settings' own `template`.
        Custom,
    }
}

impl JudgeTask {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Imdb => "IMDB: more positive",
            Self::Summarize => "summary",
            Self::Helpful => "helpfulness",
            Self::Custom => "custom",
        }
    }

    /// The criteria that fit a project's task (a new project's default).
    pub fn for_task(task: Task) -> Self {
        match task {
            Task::Imdb => Self::Imdb,
            Task::Summarize => Self::Summarize,
            Task::Generic => Self::Helpful,
        }
    }
}

/// A user-supplied judge template: `{prompt}`, `{a}` and `{b}` are replaced, each must appear
/// in `user`, and no other `{name}` may.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CustomTemplate {
    pub system: String,
    pub user: String,
}

impl CustomTemplate {
    /// The three placeholders present in `user`, no others anywhere.
    pub fn check(&self) -> Result<(), InvalidSetting> {
        for name in ["prompt", "a", "b"] {
            if !self.user.contains(&format!("{{{name}}}")) {
                return Err(InvalidSetting::new(
                    "judge.template.user",
                    format!("the placeholder {{{name}}} is missing"),
                ));
            }
        }
        for (field, text) in [("system", &self.system), ("user", &self.user)] {
            let mut rest = text.as_str();
            while let Some(i) = rest.find('{') {
                let tail = &rest[i + 1..];
                if let Some(j) = tail.find('}') {
                    let name = &tail[..j];
                    let ident = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if ident && (field == "system" || !["prompt", "a", "b"].contains(&name)) {
                        return Err(InvalidSetting::new(
                            format!("judge.template.{field}"),
                            format!("unknown placeholder {{{name}}} (only {{prompt}}, {{a}} and {{b}}, in user)"),
                        ));
                    }
                }
                rest = tail;
            }
        }
        Ok(())
    }
}

vocabulary! {
    "answer mode";
    /// How an LLM judge answers.
    #[derive(Default)]
    pub enum AnswerMode {
        /// A one-sentence comparison, then the letter on its own line (the paper's format).
        #[default]
        Text,
        /// Only the letter, as one token; the verdict is whichever of "A" and "B" has the higher
        /// log-probability among the first token's most likely alternatives (a forced choice,
        /// for servers that return `logprobs`; small models that never write the letter still
        /// answer).
        Logprobs,
    }
}

vocabulary! {
    "judge order";
    /// How the two texts are ordered for the judge.
    #[derive(Default)]
    pub enum JudgeOrder {
        /// One call per pair, A/B order drawn per pair (from the seed and the texts, so a rerun
        /// asks the same question and hits the cache), un-swapped after.
        #[default]
        Random,
        /// Two calls per pair, one in each order; disagreement is recorded (position bias).
        Both,
    }
}

impl JudgeOrder {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Random => "random order per pair",
            Self::Both => "both orders (position-bias control)",
        }
    }
}

vocabulary! {
    "disagreement rule";
    /// What a pair gets when the two orders disagree.
    #[derive(Default)]
    pub enum Disagreement {
        #[default]
        Tie,
        NoDecision,
    }
}

/// An LLM judge over an OpenAI-compatible API. Names the API key's environment variable, never
/// the key: the server looks it up in its environment, then in its secrets file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSettings {
    /// Up to and including the API version: `https://api.openai.com/v1`, `http://127.0.0.1:8081/v1`.
    /// Empty by default: there is no judge to assume (the server's own address is not one), so a
    /// project that uses the API judge must name it.
    pub base_url: String,
    pub model: String,
    /// The environment variable (or secrets-file entry) holding the API key; must end in
    /// `API_KEY`. Unset or absent: no Authorization header (local servers).
    pub api_key_env: Option<String>,
    pub task: JudgeTask,
    /// For `task: custom`.
    pub template: Option<CustomTemplate>,
    /// `text` (comparison, then the letter) or `logprobs` (only the letter, read off the first
    /// token's log-probabilities; needs a server that returns them).
    pub answer: AnswerMode,
    /// The paper: 0.05.
    pub temperature: f64,
    pub max_tokens: u32,
    /// Calls in flight at once.
    pub concurrency: usize,
    pub timeout_seconds: f64,
    /// Attempts after the first, for 408/429/5xx, timeouts and dropped connections.
    pub retries: u32,
    /// First backoff; doubles per attempt up to 60 s, unless the server says Retry-After.
    pub backoff_seconds: f64,
    pub order: JudgeOrder,
    pub on_disagreement: Disagreement,
    /// US dollars per million prompt and completion tokens, for cost accounting.
    pub price_prompt_per_million: f64,
    pub price_completion_per_million: f64,
    /// Draws the A/B order.
    pub seed: u64,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: "gpt-4".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            task: JudgeTask::Imdb,
            template: None,
            answer: AnswerMode::Text,
            temperature: 0.05,
            max_tokens: 128,
            concurrency: 4,
            timeout_seconds: 60.0,
            retries: 5,
            backoff_seconds: 1.0,
            order: JudgeOrder::Random,
            on_disagreement: Disagreement::Tie,
            price_prompt_per_million: 0.0,
            price_completion_per_million: 0.0,
            seed: 0,
        }
    }
}

impl JudgeSettings {
    /// Refuses settings that cannot run an API judge, naming the field (`judge.…`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_base_url(
            "judge.base_url",
            &self.base_url,
            "set the judge's URL: its OpenAI-compatible API up to the version, e.g. https://api.openai.com/v1",
        )?;
        check(!self.model.trim().is_empty(), "judge.model", "must not be empty")?;
        check_key_name("judge.api_key_env", self.api_key_env.as_ref())?;
        self.validate_criteria()
    }

    /// The settings the local judge reads too (what it asks, in which order): no address,
    /// model or key, since it is the server's own model.
    pub fn validate_criteria(&self) -> Result<(), InvalidSetting> {
        check((0.0..=2.0).contains(&self.temperature), "judge.temperature", "must be between 0 and 2")?;
        check((1..=4096).contains(&self.max_tokens), "judge.max_tokens", "must be 1 to 4096")?;
        check((1..=64).contains(&self.concurrency), "judge.concurrency", "must be 1 to 64 calls at once")?;
        check((0..=10).contains(&self.retries), "judge.retries", "must be 0 to 10 attempts after the first")?;
        let timeout_ok = self.timeout_seconds > 0.0 && self.timeout_seconds <= 3600.0;
        check(
            timeout_ok && !self.backoff_seconds.is_nan() && self.backoff_seconds >= 0.0,
            "judge",
            "timeout_seconds must be in (0, 3600] and backoff_seconds at least 0",
        )?;
        let prices = [self.price_prompt_per_million, self.price_completion_per_million];
        check(prices.iter().all(|p| !p.is_nan() && *p >= 0.0), "judge", "prices must be at least 0")?;
        if self.task == JudgeTask::Custom {
            self.template
                .as_ref()
                .ok_or_else(|| {
                    InvalidSetting::new("judge.template", "judge.task is custom but the template is missing")
                })?
                .check()?;
        }
        Ok(())
    }
}

/// A simulated noisy rater over a scoring oracle (sentiment, length): Bradley-Terry choice
/// P(A) = sigmoid((s_a - s_b) / temperature) from the oracle's scores (temperature 0: the
/// oracle's own choice), then flipped with probability `flip`; seeded per item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RaterNoise {
    /// In the oracle's score units (sentiment: log-odds; length: characters).
    pub temperature: f64,
    /// Probability of answering the other side, in [0, 0.5].
    pub flip: f64,
    pub seed: u64,
}

impl Default for RaterNoise {
    fn default() -> Self {
        Self { temperature: 1.0, flip: 0.0, seed: 0 }
    }
}

impl RaterNoise {
    /// Refuses a noise that cannot be drawn, naming the field under `field`.
    pub fn validate(&self, field: &str) -> Result<(), InvalidSetting> {
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            &format!("{field}.temperature"),
            "must be at least 0",
        )?;
        check((0.0..=0.5).contains(&self.flip), &format!("{field}.flip"), "must be in [0, 0.5]")
    }
}

vocabulary! {
    "product precision";
    /// The precision of the engine's matrix products on the CPU (`cpu::amx` in the engine).
    #[derive(Default)]
    pub enum Products {
        /// f32 operands and sums.
        #[default]
        F32,
        /// Operands rounded to bf16, sums in f32, on Intel AMX where the CPU has it (f32
        /// elsewhere): several times faster, log-probs within a few hundredths of a nat.
        Bf16,
    }
}

vocabulary! {
    "model server";
    /// Which OpenAI-compatible server a remote backend talks to: they differ in what the
    /// completions API takes and returns (token-id prompts, `n`, prompt log-probs, token ids).
    #[derive(Default)]
    pub enum ServerKind {
        /// vLLM: token-id prompts, `n` samples a prompt, `prompt_logprobs`, `/tokenize`, LoRA
        /// adapters loaded by name.
        #[default]
        Vllm,
        /// llama-cpp-python's server (`--logits_all true`): text prompts, one completion a
        /// request, scoring by `echo`, `/extras/tokenize`.
        LlamaCppPython,
    }
}

/// Where the loop samples and scores: in this process, or on an inference server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Backend {
    /// This program's engine.
    #[default]
    Local,
    /// An OpenAI-compatible completions server (`remote`'s module header in the server crate).
    Remote(RemoteBackend),
}

/// An inference server for the loop's sampling and scoring. Like the judge, it names the API
/// key's environment variable, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RemoteBackend {
    /// Up to and including the API version: `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The served base model's name: the reference, and the policy until it is trained.
    pub model: String,
    /// As the judge's: must end in `API_KEY`; unset: no Authorization header.
    pub api_key_env: Option<String>,
    pub server: ServerKind,
    /// A second server for sampling the reference (the starting model: evaluations' baseline
    /// samples), e.g. one that cannot load adapters; unset: `base_url`. Scoring stays on
    /// `base_url`, the server that passed the prompt log-probs probe.
    pub reference_base_url: Option<String>,
    /// What `reference_base_url` runs; unset: `server`.
    pub reference_server: Option<ServerKind>,
    /// `LOCAL=REMOTE`: the model server runs on another machine and sees apl's directory
    /// `LOCAL` (where the policy adapters are written) as `REMOTE` (a shared mount); unset: it
    /// reads them at the paths apl wrote them.
    pub adapter_path_map: Option<String>,
    /// Prompts (or scored rows) per request, where the server takes several.
    pub rows_per_request: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout_seconds: f64,
    /// Attempts after the first, for 408/429/5xx, timeouts and dropped connections (seeded
    /// requests are idempotent).
    pub retries: u32,
    pub backoff_seconds: f64,
}

impl Default for RemoteBackend {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            server: ServerKind::Vllm,
            reference_base_url: None,
            reference_server: None,
            adapter_path_map: None,
            rows_per_request: 32,
            concurrency: 8,
            timeout_seconds: 300.0,
            retries: 3,
            backoff_seconds: 1.0,
        }
    }
}

/// Who trains a round's policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trainer {
    /// This program's DPO.
    #[default]
    Apl,
    /// A command the server's operator defined under this name (`apl serve
    /// --trainer-commands`), e.g. TRL's DPO on a cluster: it gets the round's pairs as TRL
    /// JSONL and writes a LoRA adapter, which becomes the round's checkpoint.
    Command { name: String },
}

/// An http(s) base URL, or the reason it is not one.
fn check_base_url(field: &str, base: &str, empty: &str) -> Result<(), InvalidSetting> {
    let base = base.trim();
    check(!base.is_empty(), field, empty)?;
    check(
        base.starts_with("http://") || base.starts_with("https://"),
        field,
        &format!("{base:?} is not an http:// or https:// address"),
    )
}

/// An API key's variable name: upper case, ending in `API_KEY` (so no setting can name
/// `DATABASE_URL` and have its value sent to a server).
fn check_key_name(field: &str, name: Option<&String>) -> Result<(), InvalidSetting> {
    if let Some(name) = name {
        let ok =
            name.ends_with("API_KEY") && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        check(ok, field, &format!("{name:?} must be an upper-case variable name ending in API_KEY"))?;
    }
    Ok(())
}

impl RemoteBackend {
    /// Refuses settings that cannot reach a server, naming the field (`backend.…`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_base_url(
            "backend.base_url",
            &self.base_url,
            "set the model server's URL: its OpenAI-compatible API up to the version, e.g. http://127.0.0.1:8000/v1",
        )?;
        if let Some(r) = &self.reference_base_url {
            check_base_url("backend.reference_base_url", r, "empty: leave it out to use base_url")?;
        }
        check(!self.model.trim().is_empty(), "backend.model", "name the served base model")?;
        check_key_name("backend.api_key_env", self.api_key_env.as_ref())?;
        check(self.rows_per_request >= 1, "backend.rows_per_request", "must be at least 1")?;
        check((1..=256).contains(&self.concurrency), "backend.concurrency", "must be 1 to 256")?;
        check(self.retries <= 10, "backend.retries", "must be 0 to 10")?;
        check(
            self.timeout_seconds > 0.0 && self.timeout_seconds <= 3600.0,
            "backend.timeout_seconds",
            "must be above 0 and at most 3600",
        )?;
        check((0.0..=60.0).contains(&self.backoff_seconds), "backend.backoff_seconds", "must be 0 to 60")?;
        if let Some(map) = &self.adapter_path_map {
            let ok = map.split_once('=').is_some_and(|(a, b)| a.starts_with('/') && b.starts_with('/'));
            check(ok, "backend.adapter_path_map", &format!("{map:?} is not LOCAL=REMOTE with two absolute paths"))?;
        }
        Ok(())
    }
}

/// Everything a round needs: how to acquire, who labels, how to train and how to evaluate.
/// A server project stores one (its `loop_settings`); an experiment runs one per arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct LoopSettings {
    /// The acquisition function of a server round (an experiment's arms are its own list).
    pub acquisition: Acquisition,
    /// Pairs acquired per server round (m); an experiment follows its schedule instead.
    pub pairs_per_round: usize,
    pub acquire: AcquireConfig,
    /// Completion length range in tokens, one length drawn per completion (each entropy sample,
    /// each member of a pair unless `acquire.pair_lengths` is `matched`; an evaluation prompt's
    /// policy and baseline completions share theirs).
    pub completion_tokens: (usize, usize),
    /// Suppress end-of-sequence tokens so completions have exactly the drawn length.
    pub exact_length: bool,
    /// Who labels the acquired pairs.
    pub labeller: Labeller,
    /// Which labels a server round trains on: human, judge or human_then_judge.
    pub train_on: LabelSource,
    /// What happens to the policy between rounds (the paper: reset).
    pub mode: Mode,
    pub trainable: Trainable,
    pub train: TrainConfig,
    pub eval: EvalSettings,
    /// The LLM judge, used where `labeller` or `eval.judge` says `judge` (and, for
    /// `local_judge`, its task, template and order settings).
    pub judge: JudgeSettings,
    /// Where sampling and scoring run: this program's engine, or an inference server (the
    /// policy then trains as LoRA adapters the server loads by name).
    pub backend: Backend,
    /// Who trains: this program, or an operator's trainer command.
    pub trainer: Trainer,
    /// Seeds acquisition, training and evaluation of a server project.
    pub seed: u64,
}

impl Default for LoopSettings {
    /// A new project's settings: the CPU preset, labelled by human raters.
    fn default() -> Self {
        Self { labeller: Labeller::Raters, ..Self::preset(Preset::ImdbCpu) }
    }
}

impl LoopSettings {
    /// The named settings.
    pub fn preset(preset: Preset) -> Self {
        let paper = Self {
            acquisition: Acquisition::Certainty,
            pairs_per_round: 128,
            acquire: AcquireConfig::default(),
            completion_tokens: (16, 24),
            exact_length: true,
            labeller: Labeller::Sentiment,
            train_on: LabelSource::HumanThenJudge,
            mode: Mode::Reset,
            trainable: Trainable::All,
            train: TrainConfig {
                loss: Loss::Dpo,
                beta: 0.2,
                adam: AdamConfig { lr: 1e-6, ..Default::default() },
                pairs_per_step: 64,
                micro_batch: 16,
                epochs: 50,
                seed: 0,
            },
            eval: EvalSettings::default(),
            judge: JudgeSettings::default(),
            backend: Backend::Local,
            trainer: Trainer::Apl,
            seed: 0,
        };
        match preset {
            Preset::ImdbPaper => paper,
            // The protocol the PyTorch reference timed on this CPU (../shared/peers/apl_reference).
            Preset::ImdbProtocol => Self {
                pairs_per_round: 64,
                completion_tokens: (16, 16),
                trainable: Trainable::TopLayers { k: 2 },
                train: TrainConfig {
                    adam: AdamConfig { lr: 1e-5, ..Default::default() },
                    pairs_per_step: 16,
                    micro_batch: 16,
                    epochs: 4,
                    ..paper.train.clone()
                },
                // 64 sequences per sampling pass: the most rows the few-row kernels take
                // (`model::cpu::skinny::MAX_ROWS`), 5% faster over the run than 32 here.
                acquire: AcquireConfig { over_generate: 4, batch_size: 64, ..AcquireConfig::default() },
                eval: EvalSettings { prompts: 128, batch_size: 64, ..EvalSettings::default() },
                ..paper
            },
            // Scaled so the four-way comparison fits in an hour on 2 CPU cores: short completions,
            // the top 2 layers trained (frozen layers cached), a stronger learning rate for a
            // visible effect, 512 evaluation prompts, smaller acquisition factors.
            Preset::ImdbCpu => Self {
                pairs_per_round: 64,
                completion_tokens: (16, 16),
                trainable: Trainable::TopLayers { k: 2 },
                train: TrainConfig {
                    adam: AdamConfig { lr: 5e-5, ..Default::default() },
                    pairs_per_step: 16,
                    micro_batch: 16,
                    epochs: 6,
                    ..paper.train.clone()
                },
                // Hybrid samples m * over_generate * entropy_over_sample * entropy_samples
                // completions per phase: these factors keep it near 1000 at m = 64.
                acquire: AcquireConfig {
                    over_generate: 4,
                    entropy_over_sample: 2,
                    entropy_samples: 2,
                    batch_size: 64,
                    ..AcquireConfig::default()
                },
                eval: EvalSettings { prompts: 512, batch_size: 64, ..EvalSettings::default() },
                ..paper
            },
        }
    }

    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let (lo, hi) = self.completion_tokens;
        check(
            lo >= 1 && hi >= lo && hi <= 512,
            "completion_tokens",
            &format!("need 1 <= min <= max <= 512, got ({lo}, {hi})"),
        )?;
        check((1..=100_000).contains(&self.pairs_per_round), "pairs_per_round", "must be 1 to 100000")?;
        let t = &self.train;
        check(
            t.epochs > 0 && t.pairs_per_step > 0 && t.micro_batch > 0,
            "train",
            "epochs, pairs_per_step and micro_batch must be at least 1",
        )?;
        check(!t.beta.is_nan() && t.beta > 0.0, "train.beta", "must be above 0")?;
        check(!t.adam.lr.is_nan() && t.adam.lr > 0.0, "train.adam.lr", "must be above 0")?;
        if let Loss::Cdpo { label_smoothing } = t.loss {
            check((0.0..0.5).contains(&label_smoothing), "train.loss.label_smoothing", "must be in [0, 0.5)")?;
        }
        match &self.trainable {
            Trainable::TopLayers { k } => check(*k > 0, "trainable.k", "train at least one layer")?,
            Trainable::Lora { rank, targets, .. } => {
                check(*rank > 0, "trainable.rank", "must be at least 1")?;
                check(!targets.is_empty(), "trainable.targets", "name at least one projection (q_proj, ...)")?;
            }
            Trainable::All => {}
        }
        check(
            self.acquire.batch_size > 0 && self.eval.batch_size > 0,
            "batch_size",
            "batch sizes (acquire, eval) must be at least 1",
        )?;
        check(self.eval.prompts > 0, "eval.prompts", "must be at least 1")?;
        check(
            self.eval.judge.is_automatic(),
            "eval.judge",
            "an automatic judge is needed (sentiment, length, judge or local_judge)",
        )?;
        if self.uses(Labeller::Judge) {
            self.judge.validate()?;
        } else if self.uses(Labeller::LocalJudge) {
            self.judge.validate_criteria()?;
        }
        if let Trainer::Command { name } = &self.trainer {
            check(!name.trim().is_empty(), "trainer.name", "name one of the server's trainer commands")?;
            check(
                matches!(self.trainable, Trainable::Lora { .. }),
                "trainable",
                "a trainer command writes a LoRA adapter: set trainable.kind to lora",
            )?;
            check(
                self.mode == Mode::Reset,
                "mode",
                "a trainer command trains from the starting model: set mode to reset",
            )?;
        }
        if let Backend::Remote(r) = &self.backend {
            r.validate()?;
            check(
                matches!(self.trainable, Trainable::Lora { .. }),
                "trainable",
                "a remote backend serves the trained policy as a LoRA adapter: set trainable.kind to lora",
            )?;
        }
        Ok(())
    }

    /// Whether `labeller` labels the pairs or judges the evaluations.
    pub fn uses(&self, labeller: Labeller) -> bool {
        self.labeller == labeller || self.eval.judge == labeller
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Vocabulary;

    #[test]
    fn presets_validate_and_round_trip() {
        for &p in Preset::ALL {
            let s = LoopSettings::preset(p);
            s.validate().unwrap();
            let back: LoopSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
        // The paper's numbers (arXiv 2402.08114, IMDB).
        let paper = LoopSettings::preset(Preset::ImdbPaper);
        assert_eq!((paper.train.beta, paper.train.adam.lr, paper.train.pairs_per_step), (0.2, 1e-6, 64));
        assert_eq!((paper.train.epochs, paper.eval.prompts, paper.eval.temperature), (50, 1024, 0.25));
        assert_eq!(
            (paper.acquire.over_generate, paper.acquire.entropy_over_sample, paper.acquire.entropy_samples),
            (32, 8, 8)
        );
        assert_eq!((paper.acquire.pair_temperature, paper.completion_tokens, paper.mode), (0.7, (16, 24), Mode::Reset));
        // A new project is the CPU preset, labelled by people.
        let d = LoopSettings::default();
        assert_eq!(LoopSettings { labeller: Labeller::Sentiment, ..d.clone() }, LoopSettings::preset(Preset::ImdbCpu));
        assert_eq!(d.labeller, Labeller::Raters);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = |f: fn(&mut LoopSettings)| {
            let mut s = LoopSettings::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(bad(|s| s.completion_tokens = (5, 3)).field, "completion_tokens");
        assert_eq!(bad(|s| s.train.beta = 0.0).field, "train.beta");
        assert_eq!(bad(|s| s.eval.judge = Labeller::Raters).field, "eval.judge");
        let e = bad(|s| {
            s.labeller = Labeller::Judge;
            s.judge.base_url = "ftp://x".into();
        });
        assert_eq!(e.to_string(), "judge.base_url: \"ftp://x\" is not an http:// or https:// address");
        assert_eq!(e.within("loop_settings").field, "loop_settings.judge.base_url");
        let unknown = serde_json::from_value::<LoopSettings>(serde_json::json!({"pairs_per_rounds": 3}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `pairs_per_rounds`"));
        let wrong = serde_json::from_value::<LoopSettings>(serde_json::json!({"labeller": "robot"}));
        let msg = wrong.unwrap_err().to_string();
        assert!(msg.contains("unknown variant `robot`") && msg.contains("local_judge"), "{msg}");
    }

    #[test]
    fn judge_settings_checked_with_the_field_named() {
        let named = || JudgeSettings { base_url: "https://api.openai.com/v1".into(), ..Default::default() };
        assert!(named().validate().is_ok());
        let bad = |f: fn(&mut JudgeSettings)| {
            let mut s = named();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(|s| s.base_url = "ftp://x".into()).starts_with("judge.base_url"));
        assert!(bad(|s| s.api_key_env = Some("DATABASE_URL".into())).starts_with("judge.api_key_env"));
        assert!(bad(|s| s.temperature = 3.0).starts_with("judge.temperature"));
        assert!(bad(|s| s.retries = 1_000_000).starts_with("judge.retries"));
        assert!(bad(|s| s.concurrency = 10_000).starts_with("judge.concurrency"));
        assert!(bad(|s| s.max_tokens = 0).starts_with("judge.max_tokens"));
        assert!(bad(|s| s.task = JudgeTask::Custom).contains("template is missing"));
        // No address is assumed: a judge must be named, in plain words.
        let e = JudgeSettings::default().validate().unwrap_err();
        assert_eq!(e.field, "judge.base_url");
        assert!(e.problem.starts_with("set the judge's URL"), "{e}");
        // The local judge is the server's own model: it needs no address.
        let mut s = LoopSettings { labeller: Labeller::LocalJudge, ..Default::default() };
        assert!(!s.uses(Labeller::Judge) && s.uses(Labeller::LocalJudge));
        s.validate().unwrap();
        s.judge.temperature = 5.0;
        assert_eq!(s.validate().unwrap_err().field, "judge.temperature");
        s.labeller = Labeller::Raters;
        s.eval.judge = Labeller::Judge;
        assert_eq!(s.validate().unwrap_err().field, "judge.base_url", "the API judge of evaluations needs one");
        // Stored projects keep the address they hold.
        let old: JudgeSettings =
            serde_json::from_value(serde_json::json!({"base_url": "http://127.0.0.1:8080/v1"})).unwrap();
        assert_eq!(old.base_url, "http://127.0.0.1:8080/v1");
        let unknown = serde_json::from_value::<JudgeSettings>(serde_json::json!({"api_key": "sk-..."}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `api_key`"));
    }

    #[test]
    fn losses_parse_from_their_names() {
        assert_eq!("dpo".parse::<Loss>().unwrap(), Loss::Dpo);
        assert_eq!("IPO".parse::<Loss>().unwrap(), Loss::Ipo);
        assert_eq!("cdpo:0.1".parse::<Loss>().unwrap(), Loss::Cdpo { label_smoothing: 0.1 });
        assert!(matches!("cdpo".parse::<Loss>(), Err(BadLoss::Smoothing(_))));
        assert!(matches!("dpo:2".parse::<Loss>(), Err(BadLoss::Parameter(_))));
        let e = "kto".parse::<Loss>().unwrap_err().to_string();
        assert_eq!(e, "loss: \"kto\" is not one of dpo, cdpo, ipo");
        for l in [Loss::Dpo, Loss::Ipo, Loss::Cdpo { label_smoothing: 0.2 }] {
            assert_eq!(serde_json::to_value(l).unwrap()["kind"], l.kind().name(), "one spelling");
        }
    }

    #[test]
    fn templates_need_their_placeholders_and_no_others() {
        let t = |user: &str| CustomTemplate { system: "s".into(), user: user.into() }.check();
        assert!(t("{prompt} {a} {b}").is_ok());
        assert!(t("{prompt} {a}").unwrap_err().to_string().contains("{b} is missing"));
        assert!(t("{prompt} {a} {b} {c}").unwrap_err().to_string().contains("unknown placeholder {c}"));
        // Braces that are not placeholders (JSON in the template) are fine.
        assert!(t("{prompt} {a} {b} {\"x\": 1}").is_ok());
    }

    #[test]
    fn remote_backends_and_trainer_commands_need_lora_and_bounds() {
        let remote = RemoteBackend {
            base_url: "http://10.0.0.5:8000/v1".into(),
            model: "gpt2-large".into(),
            ..Default::default()
        };
        let lora = Trainable::Lora { rank: 8, alpha: 16.0, targets: vec!["c_attn".into()] };
        let with = |b: RemoteBackend, t: Trainable| LoopSettings {
            backend: Backend::Remote(b),
            trainable: t,
            ..Default::default()
        };
        assert!(with(remote.clone(), lora.clone()).validate().is_ok());
        assert_eq!(with(remote.clone(), Trainable::All).validate().unwrap_err().field, "trainable");
        let field = |b: RemoteBackend| with(b, lora.clone()).validate().unwrap_err().field;
        assert_eq!(field(RemoteBackend { base_url: "file:///etc".into(), ..remote.clone() }), "backend.base_url");
        assert_eq!(field(RemoteBackend { model: " ".into(), ..remote.clone() }), "backend.model");
        assert_eq!(field(RemoteBackend { timeout_seconds: 1e300, ..remote.clone() }), "backend.timeout_seconds");
        assert_eq!(field(RemoteBackend { retries: 1000, ..remote.clone() }), "backend.retries");
        assert_eq!(
            field(RemoteBackend { api_key_env: Some("DATABASE_URL".into()), ..remote.clone() }),
            "backend.api_key_env"
        );
        assert_eq!(
            field(RemoteBackend { adapter_path_map: Some("runs=/mnt".into()), ..remote.clone() }),
            "backend.adapter_path_map"
        );
        // An old project's settings (no backend, no trainer) read as this engine's.
        let old: LoopSettings = serde_json::from_value(serde_json::json!({"seed": 3})).unwrap();
        assert_eq!((old.backend, old.trainer), (Backend::Local, Trainer::Apl));
        let trained = |mode| LoopSettings {
            trainer: Trainer::Command { name: "trl".into() },
            trainable: lora.clone(),
            mode,
            ..Default::default()
        };
        assert!(trained(Mode::Reset).validate().is_ok());
        assert_eq!(trained(Mode::Online).validate().unwrap_err().field, "mode");
    }
}
