//! LLM judges: an OpenAI-compatible chat client (`client`), the paper's judge prompts and a strict
//! answer parser (`template`), the audit log that doubles as a cache (`ledger`), and the judge
//! itself with position-bias controls and self-consistency checks (`llm`), and a judge with no
//! API that reads a loaded model's log-probabilities of answering A or B (`local`).
//!
//! Settings are plain data a project stores; they name the API key's environment variable, never
//! the key. The key is looked up in the server's environment, then in its secrets file.

pub mod client;
pub mod ledger;
pub mod llm;
pub mod local;
pub mod template;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use llm::LlmJudge;
pub use template::{AnswerMode, CustomTemplate, JudgeTask};

/// How the two texts are ordered for the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeOrder {
    /// One call per pair, A/B order drawn per pair (from the seed and the texts, so a rerun asks
    /// the same question and hits the cache), un-swapped after.
    #[default]
    Random,
    /// Two calls per pair, one in each order; disagreement is recorded (position bias).
    Both,
}

/// What a pair gets when the two orders disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disagreement {
    #[default]
    Tie,
    NoDecision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSettings {
    /// Up to and including the API version: `https://api.openai.com/v1`, `http://127.0.0.1:8080/v1`.
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
            base_url: "http://127.0.0.1:8080/v1".into(),
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
    pub fn validate(&self) -> Result<(), String> {
        let base = self.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("judge.base_url: {base:?} is not an http:// or https:// address"));
        }
        if self.model.trim().is_empty() {
            return Err("judge.model: must not be empty".into());
        }
        if let Some(name) = &self.api_key_env
            && !(name.ends_with("API_KEY")
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        {
            return Err(format!("judge.api_key_env: {name:?} must be an upper-case variable name ending in API_KEY"));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("judge.temperature: must be between 0 and 2".into());
        }
        if self.max_tokens == 0 || self.concurrency == 0 || self.concurrency > 256 {
            return Err("judge: max_tokens must be at least 1 and concurrency 1 to 256".into());
        }
        let timeout_ok = self.timeout_seconds > 0.0 && self.timeout_seconds <= 3600.0;
        if !timeout_ok || self.backoff_seconds.is_nan() || self.backoff_seconds < 0.0 {
            return Err("judge: timeout_seconds must be in (0, 3600] and backoff_seconds at least 0".into());
        }
        if [self.price_prompt_per_million, self.price_completion_per_million].iter().any(|p| p.is_nan() || *p < 0.0) {
            return Err("judge: prices must be at least 0".into());
        }
        if self.task == JudgeTask::Custom {
            template::check_template(
                self.template.as_ref().ok_or("judge.task is custom but judge.template is missing")?,
            )?;
        }
        Ok(())
    }

    /// The API key: the named variable from the environment, else from `secrets` (lines of
    /// `NAME=value`, `#` comments). None when no variable is named or it is found nowhere.
    pub fn api_key(&self, secrets: Option<&Path>) -> Result<Option<String>, String> {
        let Some(name) = &self.api_key_env else { return Ok(None) };
        if let Ok(v) = std::env::var(name)
            && !v.trim().is_empty()
        {
            return Ok(Some(v.trim().to_string()));
        }
        let Some(path) = secrets else { return Ok(None) };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("reading the secrets file {}: {e}", path.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=')
                && k.trim().trim_start_matches("export ").trim() == name
            {
                let v = v.trim().trim_matches('"').trim_matches('\'');
                return Ok((!v.is_empty()).then(|| v.to_string()));
            }
        }
        Ok(None)
    }
}

/// rustls needs one process-wide crypto provider; ring builds with a C compiler alone. Anything
/// in this process that builds a reqwest client calls this first (tests included).
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_checked_with_the_field_named() {
        assert!(JudgeSettings::default().validate().is_ok());
        let bad = |f: fn(&mut JudgeSettings)| {
            let mut s = JudgeSettings::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(bad(|s| s.base_url = "ftp://x".into()).starts_with("judge.base_url"));
        assert!(bad(|s| s.api_key_env = Some("DATABASE_URL".into())).starts_with("judge.api_key_env"));
        assert!(bad(|s| s.temperature = 3.0).starts_with("judge.temperature"));
        assert!(bad(|s| s.task = JudgeTask::Custom).contains("template is missing"));
        let unknown = serde_json::from_value::<JudgeSettings>(serde_json::json!({"api_key": "sk-..."}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `api_key`"));
    }

    #[test]
    fn key_from_environment_then_secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.env");
        std::fs::write(&secrets, "# keys\nOTHER_API_KEY=x\nexport APL_TEST_JUDGE_API_KEY=\"sk-file\"\n").unwrap();
        let s = JudgeSettings { api_key_env: Some("APL_TEST_JUDGE_API_KEY".into()), ..Default::default() };
        assert_eq!(s.api_key(Some(&secrets)).unwrap().as_deref(), Some("sk-file"));
        assert_eq!(s.api_key(None).unwrap(), None);
        let none = JudgeSettings { api_key_env: None, ..Default::default() };
        assert_eq!(none.api_key(Some(&secrets)).unwrap(), None);
        assert!(s.api_key(Some(&dir.path().join("missing"))).unwrap_err().contains("secrets file"));
    }
}
