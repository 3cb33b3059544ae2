//! The judge's ledger: every request and response as one JSON line (the audit log), which is also
//! the cache. A call is keyed by (judge model, rendered messages — hence prompt, pair and order —
//! temperature, max tokens, repeat number), so running a job again asks the server only what it
//! never answered. Keys and authorisation headers never reach it: requests are logged as the
//! `ChatRequest` the client was given, which has no key.
//!
//! A line cut short by a crash is skipped when the file is read back; entries are appended and
//! synced at the end of every batch.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::JudgeError;
use super::client::{ChatReply, ChatRequest};
use super::template::Shown;
use apl_shared::Side;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: i64,
    /// The cache key (hex SHA-256).
    pub key: String,
    /// Where it was sent, without credentials.
    pub base_url: String,
    /// Identifies the pair (hex SHA-256 of prompt and both texts), whatever the order shown.
    pub pair: String,
    /// Which of the pair's texts was shown first, as "A".
    pub first_shown: Side,
    /// 0 for labelling; 1.. for self-consistency re-asks.
    pub repeat: u32,
    pub request: ChatRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ChatReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The letter read off the reply (as shown: `A` = first), none when undecided or failed.
    #[serde(default)]
    pub verdict: Option<Shown>,
    pub attempts: u32,
    pub latency_ms: u64,
    /// Served from the ledger: no request was sent, nothing was spent.
    pub cached: bool,
    pub cost_usd: f64,
}

#[derive(Debug)]
pub struct Ledger {
    path: Option<PathBuf>,
    file: Mutex<Option<std::fs::File>>,
    cache: Mutex<HashMap<String, ChatReply>>,
}

impl Ledger {
    /// A ledger that keeps nothing across runs (tests, one-off checks).
    pub fn in_memory() -> Self {
        Self { path: None, file: Mutex::new(None), cache: Mutex::new(HashMap::new()) }
    }

    /// Opens (creating) the JSONL file and loads the answered calls in it as the cache.
    pub fn open(path: &Path) -> Result<Self, JudgeError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(JudgeError::file("creating", dir))?;
        }
        let mut cache = HashMap::new();
        if path.exists() {
            let f = std::fs::File::open(path).map_err(JudgeError::file("reading", path))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(JudgeError::file("reading", path))?;
                match serde_json::from_str::<AuditEntry>(&line) {
                    Ok(e) if !e.cached => {
                        if let Some(r) = e.reply {
                            cache.insert(e.key, r);
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!("{}:{}: skipping a damaged judge log line: {err}", path.display(), i + 1)
                    }
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(JudgeError::file("opening", path))?;
        Ok(Self { path: Some(path.to_path_buf()), file: Mutex::new(Some(file)), cache: Mutex::new(cache) })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn cached(&self, key: &str) -> Option<ChatReply> {
        self.cache.lock().unwrap().get(key).cloned()
    }

    pub fn cached_calls(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    pub fn record(&self, entry: &AuditEntry) -> Result<(), JudgeError> {
        if !entry.cached
            && let Some(r) = &entry.reply
        {
            self.cache.lock().unwrap().insert(entry.key.clone(), r.clone());
        }
        let mut file = self.file.lock().unwrap();
        if let Some(f) = file.as_mut() {
            let mut line = serde_json::to_string(entry)?;
            line.push('\n');
            f.write_all(line.as_bytes()).map_err(JudgeError::Log)?;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<(), JudgeError> {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            f.sync_data().map_err(JudgeError::Log)?;
        }
        Ok(())
    }
}

pub use apl_shared::LedgerSummary;

pub fn summarize(path: &Path) -> Result<LedgerSummary, JudgeError> {
    let f = std::fs::File::open(path).map_err(JudgeError::file("reading", path))?;
    let mut s = LedgerSummary::default();
    // (pair, order) -> repeat -> verdict, from calls actually made.
    let mut asked: HashMap<(String, Side), HashMap<u32, Option<Shown>>> = HashMap::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(JudgeError::file("reading", path))?;
        let Ok(e) = serde_json::from_str::<AuditEntry>(&line) else { continue };
        if !e.cached && e.error.is_none() {
            asked.entry((e.pair.clone(), e.first_shown)).or_default().insert(e.repeat, e.verdict);
        }
        s.calls += 1;
        s.cached += e.cached as u64;
        s.attempts += e.attempts as u64;
        s.cost_usd += e.cost_usd;
        if !e.cached
            && let Some(r) = &e.reply
        {
            s.prompt_tokens += r.usage.prompt_tokens;
            s.completion_tokens += r.usage.completion_tokens;
        }
        match (&e.error, e.verdict) {
            (Some(_), _) => s.failed += 1,
            (None, Some(v)) => {
                s.decided += 1;
                s.first_position += (v == Shown::First) as u64;
            }
            (None, None) => s.no_decision += 1,
        }
    }
    let groups: Vec<Vec<Option<Shown>>> =
        asked.into_values().filter(|g| g.len() >= 2).map(|g| g.into_values().collect()).collect();
    s.repeated_questions = groups.len();
    if !groups.is_empty() {
        let total: f64 = groups.iter().map(|g| super::llm::pairwise_agreement(g)).sum();
        s.self_consistency = Some(total / groups.len() as f64);
    }
    Ok(s)
}

pub fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of a call.
pub fn call_key(req: &ChatRequest, repeat: u32) -> String {
    let messages = serde_json::to_string(&req.messages).unwrap_or_default();
    sha256_hex(&[
        &req.model,
        &messages,
        &format!("{}", req.temperature),
        &req.max_tokens.to_string(),
        &repeat.to_string(),
    ])
}

/// `https://user:pass@host/v1` → `https://host/v1`.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(host_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::client::{Message, Usage};

    fn entry(key: &str, reply: Option<&str>, cached: bool) -> AuditEntry {
        AuditEntry {
            time_ms: 0,
            key: key.into(),
            base_url: "http://x/v1".into(),
            pair: "p".into(),
            first_shown: Side::A,
            repeat: 0,
            request: ChatRequest {
                model: "m".into(),
                messages: vec![Message::user("u")],
                temperature: 0.05,
                max_tokens: 8,
                top_logprobs: None,
            },
            reply: reply.map(|c| ChatReply {
                content: c.into(),
                finish_reason: None,
                usage: Usage::default(),
                top_logprobs: None,
            }),
            error: reply.is_none().then(|| "boom".into()),
            verdict: None,
            attempts: 1,
            latency_ms: 1,
            cached,
            cost_usd: 0.0,
        }
    }

    #[test]
    fn answered_calls_come_back_as_cache_and_damaged_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("judge/audit.jsonl");
        {
            let l = Ledger::open(&path).unwrap();
            l.record(&entry("k1", Some("A"), false)).unwrap();
            l.record(&entry("k2", None, false)).unwrap();
            l.record(&entry("k1", Some("A"), true)).unwrap();
            l.sync().unwrap();
        }
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"time_ms\": 1, \"ke").unwrap();
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.cached("k1").unwrap().content, "A");
        assert!(l.cached("k2").is_none(), "failed calls are not cached");
        assert_eq!(l.cached_calls(), 1);
    }

    #[test]
    fn summary_sums_usage_and_measures_self_consistency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let l = Ledger::open(&path).unwrap();
        // Pair p asked three times: A, A, B (1 of 3 answer pairs agree); pair q once; one cache hit.
        for (pair, repeat, verdict, cached) in [
            ("p", 0, Some(Shown::First), false),
            ("p", 1, Some(Shown::First), false),
            ("p", 2, Some(Shown::Second), false),
            ("q", 0, None, false),
            ("p", 0, Some(Shown::First), true),
        ] {
            let mut e = entry(&format!("{pair}{repeat}"), Some("x"), cached);
            e.pair = pair.into();
            e.repeat = repeat;
            e.verdict = verdict;
            e.cost_usd = if cached { 0.0 } else { 0.5 };
            l.record(&e).unwrap();
        }
        l.sync().unwrap();
        let s = summarize(&path).unwrap();
        assert_eq!((s.calls, s.cached, s.decided, s.no_decision, s.first_position), (5, 1, 4, 1, 3));
        assert_eq!(s.cost_usd, 2.0);
        assert_eq!(s.repeated_questions, 1);
        assert!((s.self_consistency.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn entries_keep_their_written_form() {
        // Logs written before the vocabulary was typed read the same: side `a`, letter `A`.
        let mut e = entry("k", Some("A"), false);
        e.verdict = Some(Shown::First);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!((v["first_shown"].as_str(), v["verdict"].as_str()), (Some("a"), Some("A")));
        assert_eq!(serde_json::from_value::<AuditEntry>(v).unwrap(), e);
    }

    #[test]
    fn keys_depend_on_messages_and_repeat_and_urls_lose_credentials() {
        let r = entry("", None, false).request;
        assert_ne!(call_key(&r, 0), call_key(&r, 1));
        let mut r2 = r.clone();
        r2.messages[0].content.push('!');
        assert_ne!(call_key(&r, 0), call_key(&r2, 0));
        assert_eq!(redact_url("https://u:secret@api.example.com/v1"), "https://api.example.com/v1");
        assert_eq!(redact_url("http://127.0.0.1:8080/v1"), "http://127.0.0.1:8080/v1");
    }
}
