//! The HTTP side of OpenAI-compatible servers (OpenAI, vLLM, llama.cpp's and
//! llama-cpp-python's servers, Ollama), shared by the judge's chat client and the model
//! backend's completions client: one place that decides where a request may go, what is
//! retried and how much of a reply is read.
//!
//! It retries what is worth retrying — 408, 429, 5xx, timeouts, dropped connections, replies
//! that are not the protocol's JSON — with exponential backoff, honouring `Retry-After`
//! (seconds) and `retry-after-ms` when the server sends them; other 4xx answers fail at once.
//! Requests go only where [`Destinations`] allows (checked on the base URL and on every address
//! a name resolves to), never through a proxy, and redirects are not followed. The API key is
//! only ever put in the Authorization header. Errors name the status and what to check, never
//! the upstream body (which may echo the request or the key): a reply that is not what was
//! expected is described by its [`shape`] alone.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use apl_shared::settings::InvalidSetting;

use crate::judge::destination::{CheckedResolver, Destinations, Refused, refusal};

/// Whose server a client talks to: it names the server in messages and the setting in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// An LLM judge (`judge.base_url`).
    Judge,
    /// An inference server sampling and scoring for the loop (`backend.base_url`).
    Model,
}

impl Who {
    /// The setting holding this server's URL.
    pub fn setting(self) -> &'static str {
        match self {
            Who::Judge => "judge.base_url",
            Who::Model => "backend.base_url",
        }
    }

    /// The most of a reply that is read: a chat completion of a few hundred tokens is a few
    /// KiB; a completions reply with per-token log-probs of 32 prompts is a few MiB.
    pub fn max_reply_bytes(self) -> usize {
        match self {
            Who::Judge => 1 << 20,
            Who::Model => 64 << 20,
        }
    }
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Who::Judge => "judge server",
            Who::Model => "model server",
        })
    }
}

/// Why a call failed, after any retries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("the {who} answered {status}{hint}")]
    Status { who: Who, status: u16, hint: &'static str },
    #[error("no answer from the {who} within {after:?}")]
    Timeout { who: Who, after: Duration },
    #[error("could not reach the {who}: {reason}")]
    Connect { who: Who, reason: String },
    /// What the reply was (its shape: JSON type and field names), never its content.
    #[error("the {who}'s reply is not {expected}: {shape}")]
    Malformed { who: Who, expected: &'static str, shape: String },
    #[error("the {who}'s reply is over {limit} bytes; it was not read further")]
    TooLarge { who: Who, limit: usize },
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl CallError {
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            CallError::Timeout { .. } | CallError::Connect { .. } | CallError::Malformed { .. } => true,
            CallError::TooLarge { .. } | CallError::Refused(_) => false,
        }
    }
}

/// How a call went: the reply or the final error, attempts made, time taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    pub result: Result<T, CallError>,
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

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error(transparent)]
    Refused(Refused),
    #[error("building the HTTP client")]
    Http(#[source] reqwest::Error),
}

/// An OpenAI-compatible server at one base URL.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    who: Who,
    /// `base_url` without its trailing slash.
    base: String,
    /// The server's root: `base` without a trailing `/v1` (vLLM's `/tokenize`, llama-cpp-python's
    /// `/extras/tokenize` live there).
    root: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("who", &self.who)
            .field("base", &self.base)
            .field("has_key", &self.cfg.api_key.is_some())
            .finish()
    }
}

impl Client {
    pub fn new(who: Who, cfg: ClientConfig) -> Result<Self, ClientError> {
        crate::judge::install_crypto();
        let base = cfg.base_url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            let problem = format!("{base:?} is not an http:// or https:// address");
            return Err(InvalidSetting::new(who.setting(), problem).into());
        }
        let url = reqwest::Url::parse(&base)
            .map_err(|e| InvalidSetting::new(who.setting(), format!("{base:?} is not a URL: {e}")))?;
        // Address literals never reach the resolver: checked here.
        cfg.destinations.check_url(&url).map_err(|r| {
            tracing::warn!(host = %r.host, address = %r.address, kind = r.kind, %who, "base URL refused");
            ClientError::Refused(r)
        })?;
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(CheckedResolver(cfg.destinations.clone()))
            .build()
            .map_err(ClientError::Http)?;
        let root = base.strip_suffix("/v1").unwrap_or(&base).to_string();
        Ok(Self { http, cfg, who, base, root })
    }

    /// `{base}{path}`: `path` under the API version (`/completions`).
    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `{root}{path}`: `path` beside the API (`/tokenize`).
    pub fn root(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    pub fn who(&self) -> Who {
        self.who
    }

    /// POSTs `body` to `url` and reads the reply with `parse`, retried as the module header says
    /// (`parse` failing is a malformed reply: retried).
    pub async fn post<T>(
        &self,
        url: &str,
        body: &serde_json::Value,
        parse: impl Fn(&[u8]) -> Result<T, CallError>,
    ) -> Outcome<T> {
        self.call(|| self.http.post(url).json(body), parse).await
    }

    /// GETs `url`, as [`Client::post`].
    pub async fn get<T>(&self, url: &str, parse: impl Fn(&[u8]) -> Result<T, CallError>) -> Outcome<T> {
        self.call(|| self.http.get(url), parse).await
    }

    async fn call<T>(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        parse: impl Fn(&[u8]) -> Result<T, CallError>,
    ) -> Outcome<T> {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (result, retry_after) = match self.once(request()).await {
                (Ok(bytes), r) => (parse(&bytes), r),
                (Err(e), r) => (Err(e), r),
            };
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
            if let Err(e) = &result {
                tracing::debug!(attempt = attempts, ?wait, error = %e, who = %self.who, "call retried");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One request: the reply's bytes (a 2xx within the size limit), with the server's
    /// Retry-After when it sent one.
    async fn once(&self, mut r: reqwest::RequestBuilder) -> (Result<Vec<u8>, CallError>, Option<Duration>) {
        let who = self.who;
        if let Some(key) = &self.cfg.api_key {
            r = r.bearer_auth(key);
        }
        let failed = |e: reqwest::Error| match refusal(&e) {
            Some(r) => CallError::Refused(r),
            None if e.is_timeout() => CallError::Timeout { who, after: self.cfg.timeout },
            None => CallError::Connect { who, reason: describe(e) },
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
            return (Err(CallError::Status { who, status, hint }), retry_after);
        }
        let limit = who.max_reply_bytes();
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return (Err(CallError::TooLarge { who, limit }), None);
        }
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if bytes.len() + c.len() > limit => return (Err(CallError::TooLarge { who, limit }), None),
                Ok(Some(c)) => bytes.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => return (Err(failed(e)), None),
            }
        }
        (Ok(bytes), None)
    }
}

/// Runs a client's calls from the loop's threads, which block: on the caller's runtime when
/// there is one (a worker's `spawn_blocking` thread), else on a runtime of its own. Never call
/// it from a runtime's own worker threads (tokio refuses to block them). Calls in flight are
/// dropped once the cancel flag (a job's) is set.
#[derive(Default)]
pub struct Blocking {
    cancel: Option<Arc<AtomicBool>>,
    own_runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Blocking {
    pub fn cancelled_by(flag: Arc<AtomicBool>) -> Self {
        Self { cancel: Some(flag), own_runtime: OnceLock::new() }
    }

    /// `f`'s output, or None when cancelled first (the flag is checked every 50 ms).
    pub fn run<T>(&self, f: impl Future<Output = T>) -> Option<T> {
        let watched = async {
            let Some(flag) = self.cancel.clone() else { return Some(f.await) };
            let watch = async move {
                while !flag.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                r = f => Some(r),
                () = watch => None,
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(watched),
            Err(_) => self
                .own_runtime
                .get_or_init(|| {
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
                })
                .block_on(watched),
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
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

/// What a reply that is not the expected one looks like, without a byte of its content (a
/// reply is the remote server's text, and this goes into the job's error and the log): its JSON
/// type and, for an object, its field names when they are plain identifiers.
pub fn shape(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = |status| CallError::Status { who: Who::Judge, status, hint: "" };
        assert!(s(429).retryable() && s(500).retryable() && s(503).retryable() && s(408).retryable());
        assert!(!s(400).retryable() && !s(401).retryable() && !s(404).retryable());
        assert!(CallError::Timeout { who: Who::Model, after: Duration::from_secs(1) }.retryable());
        let big = CallError::TooLarge { who: Who::Model, limit: 1 };
        assert!(!big.retryable());
        assert_eq!(big.to_string(), "the model server's reply is over 1 bytes; it was not read further");
    }

    #[test]
    fn shapes_name_fields_not_content() {
        assert_eq!(shape(b"<html>busy</html>"), "not JSON (17 bytes)");
        assert_eq!(shape(br#"{"error":"sk-secret","a b":1}"#), "a JSON object with fields [?, error] (29 bytes)");
        assert_eq!(shape(b"[1,2]"), "a JSON array of 2 items");
    }

    #[test]
    fn root_is_the_base_without_its_version() {
        let cfg = |base: &str| ClientConfig {
            base_url: base.into(),
            api_key: None,
            timeout: Duration::from_secs(1),
            retries: 0,
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            destinations: Arc::new(Destinations::any()),
        };
        let c = Client::new(Who::Model, cfg("http://127.0.0.1:8000/v1/")).unwrap();
        assert_eq!(
            (c.api("/completions"), c.root("/tokenize")),
            ("http://127.0.0.1:8000/v1/completions".to_string(), "http://127.0.0.1:8000/tokenize".to_string())
        );
        let e = Client::new(Who::Model, cfg("ftp://x")).unwrap_err();
        assert_eq!(e.to_string(), "backend.base_url: \"ftp://x\" is not an http:// or https:// address");
    }
}
