//! A client for the OpenAI-compatible chat completions protocol (`POST {base}/chat/completions`),
//! spoken by OpenAI, vLLM, llama.cpp's server and Ollama. It retries what is worth retrying —
//! 408, 429, 5xx, timeouts, dropped connections, replies that are not the protocol's JSON — with
//! exponential backoff, honouring `Retry-After` (seconds) and `retry-after-ms` when the server
//! sends them; other 4xx answers fail at once.
//!
//! The API key is only ever put in the Authorization header. Errors name the status and what to
//! check, never the upstream body (which may echo the request or the key).

use apl_shared::settings::InvalidSetting;

use super::JudgeError;
use super::destination::{CheckedResolver, Destinations, Refused, refusal};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: &str) -> Self {
        Self { role: "system".into(), content: content.into() }
    }

    pub fn user(content: &str) -> Self {
        Self { role: "user".into(), content: content.into() }
    }
}

/// What the audit log keeps of a request: everything but the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Ask for this many most likely first tokens with their log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// The first answer token's most likely alternatives, when asked for: (token, log-prob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<(String, f64)>>,
}

/// Why a call failed, after any retries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("the judge server answered {status}{hint}")]
    Status { status: u16, hint: &'static str },
    #[error("no answer from the judge server within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the judge server: {0}")]
    Connect(String),
    /// What the reply was (its shape: JSON type and field names), never its content.
    #[error("the judge server's reply is not a chat completion: {0}")]
    Malformed(String),
    #[error("the judge server's reply is over {0} bytes; it was not read further")]
    TooLarge(usize),
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl ChatError {
    fn retryable(&self) -> bool {
        match self {
            ChatError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            ChatError::Timeout(_) | ChatError::Connect(_) | ChatError::Malformed(_) => true,
            ChatError::TooLarge(_) | ChatError::Refused(_) => false,
        }
    }
}

/// A failed call with how many attempts it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: ChatError,
    pub attempts: u32,
}

/// How a call went: the reply or the final error, attempts made, time taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub result: Result<ChatReply, ChatError>,
    pub attempts: u32,
    pub latency_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Up to and including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Where the client may connect (`destination`).
    pub destinations: Arc<Destinations>,
}

/// The most of a reply that is read: a chat completion of a few hundred tokens is a few KiB.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    cfg: ClientConfig,
    url: String,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient").field("url", &self.url).field("has_key", &self.cfg.api_key.is_some()).finish()
    }
}

impl ChatClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, JudgeError> {
        crate::judge::install_crypto();
        let base = cfg.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            let problem = format!("{base:?} is not an http:// or https:// address");
            return Err(InvalidSetting::new("judge.base_url", problem).into());
        }
        let url = reqwest::Url::parse(base)
            .map_err(|e| InvalidSetting::new("judge.base_url", format!("{base:?} is not a URL: {e}")))?;
        // Address literals never reach the resolver: checked here.
        cfg.destinations.check_url(&url).map_err(|r| {
            tracing::warn!(host = %r.host, address = %r.address, kind = r.kind, "judge base URL refused");
            JudgeError::Refused(r)
        })?;
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(CheckedResolver(cfg.destinations.clone()))
            .build()
            .map_err(JudgeError::Http)?;
        Ok(Self { http, url: format!("{base}/chat/completions"), cfg })
    }

    /// One chat completion, retried as the module header says.
    pub async fn chat(&self, req: &ChatRequest) -> Outcome {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (result, retry_after) = self.once(req).await;
            let done = match &result {
                Ok(_) => true,
                Err(e) => !e.retryable() || attempts > self.cfg.retries,
            };
            if done {
                return Outcome { result, attempts, latency_ms: start.elapsed().as_millis() as u64 };
            }
            let backoff =
                self.cfg.backoff_initial.saturating_mul(1 << (attempts - 1).min(16)).min(self.cfg.backoff_max);
            // A server's own Retry-After wins, within reason.
            let wait = retry_after.map(|r| r.min(Duration::from_secs(300))).unwrap_or(backoff);
            tracing::debug!(attempt = attempts, ?wait, error = %result.as_ref().unwrap_err(), "judge call retried");
            tokio::time::sleep(wait).await;
        }
    }

    async fn once(&self, req: &ChatRequest) -> (Result<ChatReply, ChatError>, Option<Duration>) {
        let mut body = json!({
            "model": req.model,
            "messages": req.messages,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
        });
        if let Some(k) = req.top_logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(k);
        }
        let mut r = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.cfg.api_key {
            r = r.bearer_auth(key);
        }
        let failed = |e: reqwest::Error| match refusal(&e) {
            Some(r) => ChatError::Refused(r),
            None if e.is_timeout() => ChatError::Timeout(self.cfg.timeout),
            None => ChatError::Connect(describe(e)),
        };
        let mut resp = match r.send().await {
            Ok(resp) => resp,
            Err(e) => return (Err(failed(e)), None),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        if !(200..300).contains(&status) {
            let hint = match status {
                300..=399 => " (a redirect: not followed; give the final address as the base URL)",
                401 | 403 => " (check the API key)",
                404 => " (check the base URL and the model name)",
                429 => " (rate limited)",
                _ => "",
            };
            return (Err(ChatError::Status { status, hint }), retry_after);
        }
        if resp.content_length().is_some_and(|n| n > MAX_REPLY_BYTES as u64) {
            return (Err(ChatError::TooLarge(MAX_REPLY_BYTES)), None);
        }
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if bytes.len() + c.len() > MAX_REPLY_BYTES => {
                    return (Err(ChatError::TooLarge(MAX_REPLY_BYTES)), None);
                }
                Ok(Some(c)) => bytes.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => return (Err(failed(e)), None),
            }
        }
        (parse_reply(&bytes), None)
    }
}

/// The error chain without URLs (they are ours, but keep the messages short).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    let d = get("retry-after-ms").map(|ms| ms / 1000.0).or_else(|| get("retry-after"))?;
    (d.is_finite() && d >= 0.0).then(|| Duration::from_secs_f64(d))
}

#[derive(Deserialize)]
struct Wire {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireTokenLogprob>>,
}

#[derive(Deserialize)]
struct WireTokenLogprob {
    #[serde(default)]
    top_logprobs: Vec<WireTop>,
}

#[derive(Deserialize)]
struct WireTop {
    token: String,
    logprob: f64,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// What a reply that is not a chat completion looks like, without a byte of its content (a
/// reply is the remote server's text, and this goes into the job's error and the log): its JSON
/// type and, for an object, its field names when they are plain identifiers.
fn shape(bytes: &[u8]) -> String {
    let name = |k: &str| {
        if !k.is_empty() && k.len() <= 32 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            k.to_string()
        } else {
            "?".to_string()
        }
    };
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Err(_) => format!("not JSON ({} bytes)", bytes.len()),
        Ok(serde_json::Value::Object(m)) => {
            let mut keys: Vec<String> = m.keys().take(12).map(|k| name(k)).collect();
            if m.len() > 12 {
                keys.push("…".into());
            }
            format!("a JSON object with fields [{}] ({} bytes)", keys.join(", "), bytes.len())
        }
        Ok(serde_json::Value::Array(a)) => format!("a JSON array of {} items", a.len()),
        Ok(serde_json::Value::String(_)) => format!("a JSON string ({} bytes)", bytes.len()),
        Ok(other) => format!("a JSON {}", if other.is_number() { "number" } else { "literal" }),
    }
}

fn parse_reply(bytes: &[u8]) -> Result<ChatReply, ChatError> {
    let w: Wire = serde_json::from_slice(bytes).map_err(|_| ChatError::Malformed(shape(bytes)))?;
    let c =
        w.choices.into_iter().next().ok_or_else(|| ChatError::Malformed(format!("no choices in {}", shape(bytes))))?;
    let usage = w.usage.map(|u| Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens });
    let top_logprobs = c
        .logprobs
        .and_then(|l| l.content)
        .and_then(|tokens| tokens.into_iter().next())
        .map(|t| t.top_logprobs.into_iter().map(|x| (x.token, x.logprob)).collect());
    Ok(ChatReply {
        content: c.message.content.unwrap_or_default(),
        finish_reason: c.finish_reason,
        usage: usage.unwrap_or_default(),
        top_logprobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parsed_and_malformed_ones_named() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"Preferred: A"},"finish_reason":"stop"}],
                     "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let r = parse_reply(ok).unwrap();
        assert_eq!(r.content, "Preferred: A");
        assert_eq!(r.usage, Usage { prompt_tokens: 12, completion_tokens: 3 });
        assert!(matches!(parse_reply(b"<html>busy</html>"), Err(ChatError::Malformed(_))));
        assert!(
            matches!(parse_reply(br#"{"choices":[]}"#), Err(ChatError::Malformed(m)) if m.starts_with("no choices in a JSON object with fields [choices]"))
        );
        // A null content (refusals, tool calls) is an empty answer, not a protocol error.
        let null = br#"{"choices":[{"message":{"content":null}}]}"#;
        assert_eq!(parse_reply(null).unwrap().content, "");
        let lp = br#"{"choices":[{"message":{"content":"A"},"logprobs":{"content":[{"token":"A","logprob":-0.4,
                     "top_logprobs":[{"token":"A","logprob":-0.4},{"token":" B","logprob":-3.1}]}]}}]}"#;
        assert_eq!(parse_reply(lp).unwrap().top_logprobs, Some(vec![("A".into(), -0.4), (" B".into(), -3.1)]));
    }

    #[test]
    fn retry_after_in_seconds_or_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut date = reqwest::header::HeaderMap::new();
        date.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&date), None, "dates fall back to our own backoff");
    }

    #[test]
    fn only_transient_errors_retried() {
        let s = |status| ChatError::Status { status, hint: "" };
        assert!(s(429).retryable() && s(500).retryable() && s(503).retryable() && s(408).retryable());
        assert!(!s(400).retryable() && !s(401).retryable() && !s(404).retryable());
        assert!(ChatError::Timeout(Duration::from_secs(1)).retryable());
    }
}
