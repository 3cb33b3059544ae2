//! What is checked before a model server is trusted, because a wrong server gives wrong numbers
//! silently: margins, entropies and DPO's reference terms all come from its log-probs.
//!
//! - **Tokenisation**: a few probe texts (HTML breaks, runs of spaces, accents, CJK, an emoji,
//!   digits) through the local tokenizer and the server's (`/tokenize` on vLLM,
//!   `/extras/tokenize` on llama-cpp-python). Token ids go to and come back from the server, so
//!   they must mean the same; the first difference is named.
//! - **Prompt log-probs**: a server's log-prob for prompt token j must come from the
//!   distribution after tokens 0..j, which its next-token answer for that prefix also shows.
//!   llama-cpp-python's echo reads each one from the distribution after token j instead (its
//!   issue #1983), so the probe compares, at three positions, the top-20 alternatives the
//!   scoring path reports with the top-20 of a one-token request on the prefix before token j
//!   (`d_same`) and on the prefix through it (`d_next`), and accepts only a server whose
//!   `d_same` is small. It measures instead of trusting a server's name: with a BOS token the
//!   same llama-cpp-python code happens to be right.

use std::collections::HashMap;

use apl_shared::settings::ServerKind;
use serde::Deserialize;
use serde_json::json;

use super::wire::{self, Completion};
use super::{Remote, RemoteError, Server, reply};
use crate::openai::{CallError, Who, shape};

/// The texts both tokenizers must cut alike.
pub const PROBES: &[&str] = &[
    "This movie was great, I loved",
    "I watched it twice.<br /><br />The ending, though...",
    "  two spaces,\n\nthen newlines\tand a tab  ",
    "naïve café — 東京 😀!",
    "In 1987, 42 of 1000 (4.2%) said 3.14159.",
];

/// The prompt log-probs probe's text (`PROBES[0]`).
const ECHO_PROBE: &str = "This movie was great, I loved";

/// Mean |Δ log p| (nats) over shared top-20 alternatives under which prompt log-probs are the
/// model's. The same server computes both sides, so a right one differs by its kernels' noise
/// only (HF transformers f32: 1e-6 to 2e-2 on the tiny random fixtures, whose top-20 are nearly
/// flat; up to 0.25 passes when the next position is five times further off).
pub const TOLERANCE: f64 = 0.05;

/// What the checks found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Probe texts compared, per server checked.
    pub probes: usize,
    /// Mean |Δ log p| of the scoring path's top-20 against the next-token answer before the
    /// token, and after it.
    pub d_same: f64,
    pub d_next: f64,
}

#[derive(Deserialize)]
struct Tokens {
    tokens: Vec<u32>,
}

fn parse_tokens(bytes: &[u8]) -> Result<Tokens, CallError> {
    serde_json::from_slice(bytes).map_err(|_| CallError::Malformed {
        who: Who::Model,
        expected: "a tokenisation",
        shape: shape(bytes),
    })
}

/// Top alternatives at one position: key (token id, or text on text servers) → log-prob.
type Top = HashMap<String, f64>;

/// A server's top alternatives under comparable keys. Text keys that do not name one token
/// (empty, or with U+FFFD: pieces of a character, which text servers key alike) are left out.
fn top_of(m: &HashMap<String, f64>) -> Top {
    m.iter().filter(|(k, _)| !k.is_empty() && !k.contains('\u{FFFD}')).map(|(k, v)| (wire::top_key(k), *v)).collect()
}

/// Mean |a - b| over the keys both have; infinite when none.
fn distance(a: &Top, b: &Top) -> f64 {
    let d: Vec<f64> = a.iter().filter_map(|(k, x)| b.get(k).map(|y| (x - y).abs())).collect();
    if d.is_empty() { f64::INFINITY } else { d.iter().sum::<f64>() / d.len() as f64 }
}

/// The scoring path's view of the probe: per server position, the token's key, its reported
/// log-prob and the top alternatives; and each position's prefix as a prompt.
struct Echo {
    keys: Vec<String>,
    values: Vec<Option<f64>>,
    tops: Vec<Option<Top>>,
    prefixes: Vec<serde_json::Value>,
    pieces: Vec<String>,
}

impl Remote {
    /// Runs the checks of the module header on every server this backend uses; a server that
    /// fails is refused, naming the problem.
    pub fn check(&self) -> Result<Checked, RemoteError> {
        self.check_tokenisation()?;
        self.check_prompt_logprobs()
    }

    /// The tokenisation check on every server (the probe texts compared).
    pub fn check_tokenisation(&self) -> Result<usize, RemoteError> {
        self.tokenisation_of(&self.main)?;
        if let Some(r) = &self.reference {
            self.tokenisation_of(r)?;
        }
        Ok(PROBES.len())
    }

    fn tokenisation_of(&self, server: &Server) -> Result<(), RemoteError> {
        let calls: Vec<_> = PROBES
            .iter()
            .map(|text| async move {
                let (url, body) = match server.kind {
                    ServerKind::Vllm => (
                        server.client.root("/tokenize"),
                        json!({"model": self.settings.model, "prompt": text, "add_special_tokens": true}),
                    ),
                    ServerKind::LlamaCppPython => (server.client.root("/extras/tokenize"), json!({"input": text})),
                };
                Ok(server.client.post(&url, &body, parse_tokens).await.result?.tokens)
            })
            .collect();
        let theirs = self.run(calls)?;
        for (i, (text, theirs)) in PROBES.iter().zip(theirs).enumerate() {
            let ours = self.tokenizer.encode(text, true)?;
            if ours == theirs {
                continue;
            }
            let k = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
            let name = |ids: &[u32]| match ids.get(k) {
                Some(&id) => format!("{id} {:?}", self.tokenizer.id_to_token(id).unwrap_or_default()),
                None => "(end)".to_string(),
            };
            return Err(RemoteError::Refused(format!(
                "the model server tokenises differently from the local tokenizer (is it serving {:?} with the same \
                 tokenizer.json?): probe {} {text:?}, token {k}: local {} vs server {} (names from the local vocabulary; \
                 {} local tokens, {} server tokens)",
                self.settings.model,
                i + 1,
                name(&ours),
                name(&theirs),
                ours.len(),
                theirs.len()
            )));
        }
        Ok(())
    }

    /// The scoring path on the probe text, on the main server.
    fn echo(&self, ids: &[u32]) -> Result<Echo, RemoteError> {
        let server = &self.main;
        let url = server.client.api("/completions");
        let model = &self.settings.model;
        let c: Completion = match server.kind {
            ServerKind::Vllm => {
                let body = wire::vllm_score(model, &[ids.to_vec()], 20);
                self.one(server.client.post(&url, &body, wire::parse))?
            }
            ServerKind::LlamaCppPython => {
                let body = wire::text_echo(model, ECHO_PROBE, 20);
                self.one(server.client.post(&url, &body, wire::parse))?
            }
        };
        let choice = &c.choices[0];
        if let Some(pl) = &choice.prompt_logprobs {
            let keys: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
            let at = |j: usize| pl.get(j).and_then(|m| m.as_ref());
            return Ok(Echo {
                values: (0..ids.len()).map(|j| at(j).and_then(|m| m.get(&keys[j])).map(|l| l.logprob)).collect(),
                tops: (0..ids.len())
                    .map(|j| at(j).map(|m| m.iter().map(|(k, l)| (k.clone(), l.logprob)).collect()))
                    .collect(),
                prefixes: (0..ids.len()).map(|j| json!(ids[..j])).collect(),
                pieces: ids.iter().map(|&t| self.tokenizer.id_to_token(t).unwrap_or_default()).collect(),
                keys,
            });
        }
        let lp = choice.logprobs.as_ref().ok_or_else(|| {
            RemoteError::Refused(
                "the model server returns no prompt log-probs (neither `prompt_logprobs` nor `echo` with `logprobs`), \
                 so it cannot score completions"
                    .into(),
            )
        })?;
        let n = lp.tokens.len().min(lp.text_offset.len()).min(lp.token_logprobs.len());
        let chars: Vec<char> = ECHO_PROBE.chars().collect();
        let tops = lp.top_logprobs.clone().unwrap_or_default();
        Ok(Echo {
            keys: lp.tokens[..n].to_vec(),
            values: lp.token_logprobs[..n].to_vec(),
            tops: (0..n).map(|j| tops.get(j).cloned().flatten().map(|m| top_of(&m))).collect(),
            prefixes: lp.text_offset[..n]
                .iter()
                .map(|&o| json!(chars[..o.min(chars.len())].iter().collect::<String>()))
                .collect(),
            pieces: lp.tokens[..n].to_vec(),
        })
    }

    /// The next-token top-20 after `prefix` (token ids on vLLM, text elsewhere).
    fn next_top(&self, prefix: &serde_json::Value) -> Result<Top, RemoteError> {
        let server = &self.main;
        let url = server.client.api("/completions");
        let body = wire::next_token(&self.settings.model, prefix.clone(), 20);
        let c = self.one(server.client.post(&url, &body, wire::parse))?;
        c.choices[0]
            .logprobs
            .as_ref()
            .and_then(|l| l.top_logprobs.as_ref())
            .and_then(|t| t.first().cloned().flatten())
            .map(|m| top_of(&m))
            .ok_or_else(|| reply("a next-token request", "no top log-probs"))
    }

    /// The prompt log-probs check on the scoring server.
    pub fn check_prompt_logprobs(&self) -> Result<Checked, RemoteError> {
        let ids = self.tokenizer.encode(ECHO_PROBE, true)?;
        let echo = self.echo(&ids)?;
        let n = echo.keys.len();
        if n < 4 {
            return Err(reply("the prompt log-probs probe", format!("{n} positions echoed")));
        }
        // Positions with a prefix on both sides: the third token (" was" in the probe), the
        // middle and the last but one.
        let positions = [2, n / 2, n - 2];
        let (mut same, mut next) = (Vec::new(), Vec::new());
        let mut first = None;
        for &j in &positions {
            let Some(top) = &echo.tops[j] else {
                return Err(reply("the prompt log-probs probe", format!("no alternatives at position {j}")));
            };
            let before = self.next_top(&echo.prefixes[j])?;
            let after = self.next_top(&echo.prefixes[j + 1])?;
            same.push(distance(top, &before));
            next.push(distance(top, &after));
            first.get_or_insert((j, before, top.clone()));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (d_same, d_next) = (mean(&same), mean(&next));
        tracing::info!(d_same, d_next, "model server's prompt log-probs probed");
        let nats = |d: f64| if d.is_finite() { format!("{d:.3}") } else { "∞ (no alternative in common)".into() };
        // A right server: its own two answers agree to its kernels' noise (f32: 1e-6; a bf16
        // server's prefill and decode kernels differ more, so a clear margin against the next
        // position also passes).
        if d_same <= TOLERANCE || (d_same <= 5.0 * TOLERANCE && d_same * 5.0 <= d_next) {
            return Ok(Checked { probes: PROBES.len(), d_same, d_next });
        }
        let (j, before, top) = first.expect("three positions");
        let piece = super::shown(&echo.pieces[j]);
        let reported = echo.values[j].map(|v| format!("{v:.2}")).unwrap_or_else(|| "no value".into());
        let best = |t: &Top| {
            t.iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| match k.parse::<u32>() {
                    Ok(id) => format!("{:?}", self.tokenizer.id_to_token(id).unwrap_or_default()),
                    Err(_) => format!("{:?}", super::shown(k)),
                })
                .unwrap_or_default()
        };
        let prefix_text = match &echo.prefixes[j] {
            serde_json::Value::String(s) => format!("{:?}", super::shown(s)),
            other => format!("{} tokens", other.as_array().map_or(0, Vec::len)),
        };
        let theirs = match before.get(&echo.keys[j]) {
            Some(v) => format!("gives it {v:.2}"),
            None => "does not have it among its 20 most likely".to_string(),
        };
        if d_next <= TOLERANCE {
            return Err(RemoteError::Refused(format!(
                "the model server's prompt log-probs are read one position late (llama-cpp-python issue #1983): \
                 {piece:?} is reported at {reported} with {} on top, but a next-token request on {prefix_text} {theirs} \
                 with {} on top (mean |Δ log p| {} against the right position, {} against the next); \
                 score on a server whose prompt log-probs are right (vLLM) or fix the server",
                best(&top),
                best(&before),
                nats(d_same),
                nats(d_next)
            )));
        }
        Err(RemoteError::Refused(format!(
            "the model server's prompt log-probs disagree with its own next-token log-probs: mean |Δ log p| {} \
             at the right position and {} one later (tolerance {TOLERANCE}); {piece:?} is reported at \
             {reported}, a next-token request on {prefix_text} {theirs}",
            nats(d_same),
            nats(d_next)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_over_shared_alternatives() {
        let a: Top = [("1".into(), -1.0), ("2".into(), -2.0), ("3".into(), -9.0)].into();
        let b: Top = [("1".into(), -1.5), ("2".into(), -2.0), ("4".into(), -3.0)].into();
        assert!((distance(&a, &b) - 0.25).abs() < 1e-12);
        assert!(distance(&a, &[("9".to_string(), -1.0)].into()).is_infinite());
    }
}
