//! A project's learning-loop settings as plain data with defaults: what the model worker needs
//! to acquire a round, label it with an oracle, train and evaluate. They travel as JSON in
//! `ProjectConfig::loop_settings`; unknown fields are refused, naming the field.
//!
//! Defaults are sized for this CPU (the imdb-cpu experiment preset): the paper's settings are
//! one `PUT /api/projects/{id}/config` away.

use serde::{Deserialize, Serialize};

use crate::judge::JudgeSettings;
use apl_engine::acquire::{AcquireConfig, Acquisition};
use apl_engine::train::optim::AdamConfig;
use apl_engine::train::policy::Trainable;
use apl_engine::train::trainer::TrainConfig;

/// Who labels a round's pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labeller {
    /// Human raters through the rater workspace.
    Raters,
    /// The naive-Bayes IMDB sentiment oracle.
    Sentiment,
    /// Prefers the longer completion (tests and smoke runs).
    Length,
    /// The project's LLM judge (`loop_settings.judge`) over an OpenAI-compatible API.
    Judge,
    /// The starting model itself, comparing its log-probabilities of answering A or B with the
    /// judge prompt of `loop_settings.judge.task`.
    LocalJudge,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Held-out prompts per evaluation (the project's `eval` split, oldest first).
    pub prompts: usize,
    pub temperature: f64,
    pub batch_size: usize,
    /// Who judges policy against reference: an automatic oracle or judge.
    pub judge: Labeller,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { prompts: 128, temperature: 0.25, batch_size: 32, judge: Labeller::Sentiment }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopSettings {
    pub acquisition: Acquisition,
    /// Pairs acquired per round (m).
    pub pairs_per_round: usize,
    pub acquire: AcquireConfig,
    /// Completion length range, one length drawn per prompt.
    pub completion_tokens: (usize, usize),
    /// Suppress end-of-sequence so completions have exactly the drawn length.
    pub exact_length: bool,
    pub labeller: Labeller,
    /// Labels trained on: human, judge or human_then_judge.
    pub train_on: String,
    pub trainable: Trainable,
    pub train: TrainConfig,
    pub eval: EvalSettings,
    /// The LLM judge, used where `labeller` or `eval.judge` says `judge` (or `local_judge`: its
    /// task, template and order settings).
    pub judge: JudgeSettings,
    pub seed: u64,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            acquisition: Acquisition::Certainty,
            pairs_per_round: 64,
            acquire: AcquireConfig {
                over_generate: 4,
                entropy_over_sample: 2,
                entropy_samples: 2,
                ..AcquireConfig::default()
            },
            completion_tokens: (16, 24),
            exact_length: true,
            labeller: Labeller::Raters,
            train_on: "human_then_judge".into(),
            trainable: Trainable::TopLayers { k: 2 },
            train: TrainConfig {
                adam: AdamConfig { lr: 5e-5, ..Default::default() },
                pairs_per_step: 16,
                micro_batch: 16,
                epochs: 6,
                ..TrainConfig::default()
            },
            eval: EvalSettings::default(),
            judge: JudgeSettings::default(),
            seed: 0,
        }
    }
}

impl LoopSettings {
    /// Parses and checks settings (null or missing means the defaults).
    pub fn from_value(v: &serde_json::Value) -> Result<Self, String> {
        let s: Self = if v.is_null() {
            Self::default()
        } else {
            serde_json::from_value(v.clone()).map_err(|e| format!("loop_settings: {e}"))?
        };
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.completion_tokens;
        if lo == 0 || hi < lo || hi > 512 {
            return Err(format!("loop_settings.completion_tokens: need 1 <= min <= max <= 512, got ({lo}, {hi})"));
        }
        if self.pairs_per_round == 0 || self.pairs_per_round > 100_000 {
            return Err("loop_settings.pairs_per_round: must be 1 to 100000".into());
        }
        if self.train.epochs == 0 || self.train.pairs_per_step == 0 || self.train.micro_batch == 0 {
            return Err("loop_settings.train: epochs, pairs_per_step and micro_batch must be at least 1".into());
        }
        if self.train.beta.is_nan() || self.train.beta <= 0.0 {
            return Err("loop_settings.train.beta: must be above 0".into());
        }
        if self.acquire.batch_size == 0 || self.eval.batch_size == 0 {
            return Err("loop_settings: batch sizes must be at least 1".into());
        }
        if self.eval.judge == Labeller::Raters {
            return Err(
                "loop_settings.eval.judge: an automatic judge is needed (sentiment, length, judge or local_judge)"
                    .into(),
            );
        }
        if [self.labeller, self.eval.judge].iter().any(|l| matches!(l, Labeller::Judge | Labeller::LocalJudge)) {
            self.judge.validate().map_err(|e| format!("loop_settings.{e}"))?;
        }
        if !["human", "judge", "human_then_judge"].contains(&self.train_on.as_str()) {
            return Err(format!("loop_settings.train_on: {:?} is not human, judge or human_then_judge", self.train_on));
        }
        Ok(())
    }
}
