//! LLM judges: an OpenAI-compatible chat client (`client`), the paper's judge prompts and a strict
//! answer parser (`template`), the audit log that doubles as a cache (`ledger`), and the judge
//! itself with position-bias controls and self-consistency checks (`llm`), and a judge with no
//! API that reads a loaded model's log-probabilities of answering A or B (`local`).
//!
//! Settings are plain data a project stores (`apl_shared::settings::JudgeSettings`); they name the
//! API key's environment variable, never the key. The key is looked up in the server's
//! environment, then in its secrets file ([`api_key`]).

pub mod client;
pub mod destination;
pub mod ledger;
pub mod llm;
pub mod local;
pub mod template;

use std::path::{Path, PathBuf};

use apl_shared::settings::InvalidSetting;
pub use apl_shared::settings::{AnswerMode, CustomTemplate, Disagreement, JudgeOrder, JudgeSettings, JudgeTask};
pub use llm::LlmJudge;

/// What goes wrong around a judge: its settings, its files, its HTTP client, its calls.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error("{what} {}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the judge log")]
    Log(#[source] std::io::Error),
    #[error("writing the judge log")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Client(#[from] crate::openai::ClientError),
    #[error("cancelled: the judge's calls in flight were dropped")]
    Cancelled,
    #[error("{failed} of {total} judge calls failed after retries; first: {first}")]
    CallsFailed { failed: usize, total: usize, first: String },
}

impl JudgeError {
    pub(crate) fn file(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::File { what, path, source }
    }
}

/// The API key in the variable `name` (a judge's or a model server's `api_key_env`): from the
/// environment, else from `secrets` (lines of `NAME=value`, `#` comments). None when no
/// variable is named or it is found nowhere.
pub fn api_key(name: Option<&String>, secrets: Option<&Path>) -> Result<Option<String>, JudgeError> {
    let Some(name) = name else { return Ok(None) };
    if let Ok(v) = std::env::var(name)
        && !v.trim().is_empty()
    {
        return Ok(Some(v.trim().to_string()));
    }
    let Some(path) = secrets else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(JudgeError::file("reading the secrets file", path))?;
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
    fn key_from_environment_then_secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.env");
        std::fs::write(&secrets, "# keys\nOTHER_API_KEY=x\nexport APL_TEST_JUDGE_API_KEY=\"sk-file\"\n").unwrap();
        let s = JudgeSettings { api_key_env: Some("APL_TEST_JUDGE_API_KEY".into()), ..Default::default() };
        assert_eq!(api_key(s.api_key_env.as_ref(), Some(&secrets)).unwrap().as_deref(), Some("sk-file"));
        assert_eq!(api_key(s.api_key_env.as_ref(), None).unwrap(), None);
        let none = JudgeSettings { api_key_env: None, ..Default::default() };
        assert_eq!(api_key(none.api_key_env.as_ref(), Some(&secrets)).unwrap(), None);
        assert!(
            api_key(s.api_key_env.as_ref(), Some(&dir.path().join("missing")))
                .unwrap_err()
                .to_string()
                .contains("secrets file")
        );
    }
}
