//! The LLM judge: renders each pair with the task's prompt, shows it in a random order (or both
//! orders), un-swaps the letter, and never turns an unreadable answer into a side. Calls run
//! concurrently up to the configured limit; each is written to the ledger, and answered calls
//! are served from it on a rerun. Running totals (tokens, cost, retries, first-position picks,
//! order disagreements) are kept for the project's accounting and the position-bias statistics.
//!
//! The judge is async inside; as an `Oracle` (a blocking trait, called from the worker's blocking
//! thread or the experiment runner) it drives itself on the ambient runtime, or a private one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::client::{ChatClient, ChatRequest, ClientConfig, Message, Usage};
use super::destination::Destinations;
use super::ledger::{AuditEntry, Ledger, call_key, redact_url, sha256_hex};
use super::template::{Shown, comparison, logprob_verdict, parse_verdict, render_for};
use super::{AnswerMode, Disagreement, JudgeError, JudgeOrder, JudgeSettings};
use crate::openai::Blocking;
use apl_engine::oracle::{Comparison, Judgement, Oracle, OracleError, Preference};
pub use apl_shared::Side;

/// One call's result, un-swapped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallVerdict {
    /// Which text was shown first (as "A").
    pub first_shown: Side,
    /// The text chosen; none when the answer named no letter or the call failed.
    pub choice: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairVerdict {
    pub preference: Preference,
    pub calls: Vec<CallVerdict>,
    /// Both orders asked and both answered, with different texts chosen.
    pub orders_disagree: bool,
}

impl PairVerdict {
    pub fn failed(&self) -> Option<&str> {
        self.calls.iter().find_map(|c| c.error.as_deref())
    }
}

pub use apl_shared::{JudgeReport, JudgeTotals};

/// Agreement of a judge with itself over repeated asks of the same question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    pub pairs: usize,
    pub repeats: u32,
    /// Mean over pairs of the share of agreeing answer pairs (no decision is an answer too).
    pub agreement: f64,
    /// Share of pairs answered the same way every time.
    pub unanimous: f64,
    /// Per pair, the un-swapped answers in ask order.
    pub answers: Vec<Vec<Option<Side>>>,
}

pub struct LlmJudge {
    settings: JudgeSettings,
    api_key: Option<String>,
    ledger: Arc<Ledger>,
    destinations: Arc<Destinations>,
    /// Runs the calls from the loop's threads; dropped in flight when the job is cancelled.
    blocking: Blocking,
    totals: Mutex<JudgeTotals>,
}

impl std::fmt::Debug for LlmJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmJudge").field("model", &self.settings.model).field("base_url", &self.base_url()).finish()
    }
}

/// One planned call.
struct Ask<'a> {
    item: usize,
    item_texts: &'a Comparison<'a>,
    first: Side,
    repeat: u32,
}

impl LlmJudge {
    /// `destinations`: where calls may go (the server's operator policy, or `Destinations::any()`
    /// for the operator's own commands).
    pub fn new(
        settings: JudgeSettings,
        api_key: Option<String>,
        ledger: Arc<Ledger>,
        destinations: Arc<Destinations>,
    ) -> Result<Self, JudgeError> {
        settings.validate()?;
        Ok(Self {
            settings,
            api_key,
            ledger,
            destinations,
            blocking: Blocking::default(),
            totals: Mutex::new(JudgeTotals::default()),
        })
    }

    /// The same judge, whose calls stop (in flight too) once `flag` is set.
    pub fn cancelled_by(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.blocking = Blocking::cancelled_by(flag);
        self
    }

    pub fn settings(&self) -> &JudgeSettings {
        &self.settings
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn totals(&self) -> JudgeTotals {
        self.totals.lock().unwrap().clone()
    }

    fn base_url(&self) -> String {
        redact_url(self.settings.base_url.trim_end_matches('/'))
    }

    /// The label judges are stored under: `llm:<model>`.
    pub fn label(&self) -> String {
        format!("llm:{}", self.settings.model)
    }

    fn client(&self) -> Result<ChatClient, JudgeError> {
        let s = &self.settings;
        ChatClient::new(ClientConfig {
            base_url: s.base_url.clone(),
            api_key: self.api_key.clone(),
            timeout: Duration::from_secs_f64(s.timeout_seconds),
            retries: s.retries,
            backoff_initial: Duration::from_secs_f64(s.backoff_seconds),
            backoff_max: Duration::from_secs(60),
            destinations: self.destinations.clone(),
        })
    }

    fn random_first(&self, c: &Comparison) -> Side {
        random_first(self.settings.seed, c)
    }

    fn request(&self, c: &Comparison, first: Side) -> Result<ChatRequest, JudgeError> {
        let s = &self.settings;
        let (x, y) = match first {
            Side::A => (c.a, c.b),
            Side::B => (c.b, c.a),
        };
        let r = render_for(s.task, s.answer, s.template.as_ref(), c.prompt, x, y)?;
        let logprobs = s.answer == AnswerMode::Logprobs;
        Ok(ChatRequest {
            model: s.model.clone(),
            messages: vec![Message::system(&r.system), Message::user(&r.user)],
            temperature: s.temperature,
            max_tokens: if logprobs { 1 } else { s.max_tokens },
            top_logprobs: logprobs.then_some(20),
        })
    }

    async fn ask(&self, client: &ChatClient, ask: &Ask<'_>) -> CallVerdict {
        let c = ask.item_texts;
        let req = match self.request(c, ask.first) {
            Ok(r) => r,
            Err(e) => {
                return CallVerdict {
                    first_shown: ask.first,
                    choice: None,
                    error: Some(e.to_string()),
                    cached: false,
                    rationale: None,
                };
            }
        };
        let key = call_key(&req, ask.repeat);
        let (reply, error, attempts, latency_ms, cached) = match self.ledger.cached(&key) {
            Some(r) => (Some(r), None, 0, 0, true),
            None => {
                let out = client.chat(&req).await;
                match out.result {
                    Ok(r) => (Some(r), None, out.attempts, out.latency_ms, false),
                    Err(e) => (None, Some(e.to_string()), out.attempts, out.latency_ms, false),
                }
            }
        };
        let shown = reply.as_ref().and_then(|r| match self.settings.answer {
            AnswerMode::Text => parse_verdict(&r.content),
            AnswerMode::Logprobs => r.top_logprobs.as_deref().and_then(logprob_verdict),
        });
        let choice = shown.map(|s| match (s, ask.first) {
            (Shown::First, first) => first,
            (Shown::Second, Side::A) => Side::B,
            (Shown::Second, Side::B) => Side::A,
        });
        let usage = if cached { Usage::default() } else { reply.as_ref().map(|r| r.usage.clone()).unwrap_or_default() };
        let cost = (usage.prompt_tokens as f64 * self.settings.price_prompt_per_million
            + usage.completion_tokens as f64 * self.settings.price_completion_per_million)
            / 1e6;
        {
            let mut t = self.totals.lock().unwrap();
            t.calls += 1;
            t.cached += cached as u64;
            t.retries += attempts.saturating_sub(1) as u64;
            t.prompt_tokens += usage.prompt_tokens;
            t.completion_tokens += usage.completion_tokens;
            t.cost_usd += cost;
            if error.is_some() {
                t.failed += 1;
            } else if let Some(s) = shown {
                t.decided += 1;
                t.first_position += (s == Shown::First) as u64;
            } else {
                t.no_decision += 1;
            }
        }
        let entry = AuditEntry {
            time_ms: crate::store::now_ms(),
            key,
            base_url: self.base_url(),
            pair: sha256_hex(&[c.prompt, c.a, c.b]),
            first_shown: ask.first,
            repeat: ask.repeat,
            request: req,
            reply: reply.clone(),
            error: error.clone(),
            verdict: shown,
            attempts,
            latency_ms,
            cached,
            cost_usd: cost,
        };
        let error = match self.ledger.record(&entry) {
            Ok(()) => error,
            Err(e) => Some(error.unwrap_or(e.to_string())),
        };
        CallVerdict {
            first_shown: ask.first,
            choice: if error.is_some() { None } else { choice },
            error,
            cached,
            rationale: reply.as_ref().and_then(|r| comparison(&r.content)),
        }
    }

    /// Runs the planned calls concurrently; results in plan order.
    async fn run_asks(&self, asks: &[Ask<'_>]) -> Result<Vec<CallVerdict>, JudgeError> {
        let client = self.client()?;
        let client = &client;
        let mut out: Vec<(usize, CallVerdict)> = futures_util::stream::iter(asks.iter().enumerate())
            .map(|(i, a)| async move { (i, self.ask(client, a).await) })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        self.ledger.sync()?;
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    /// Judges each pair: one call in `random` order mode, two in `both`.
    pub async fn judge_pairs(&self, items: &[Comparison<'_>]) -> Result<Vec<PairVerdict>, JudgeError> {
        let mut asks = Vec::new();
        for (i, c) in items.iter().enumerate() {
            match self.settings.order {
                JudgeOrder::Random => asks.push(Ask { item: i, item_texts: c, first: self.random_first(c), repeat: 0 }),
                JudgeOrder::Both => {
                    asks.push(Ask { item: i, item_texts: c, first: Side::A, repeat: 0 });
                    asks.push(Ask { item: i, item_texts: c, first: Side::B, repeat: 0 });
                }
            }
        }
        let verdicts = self.run_asks(&asks).await?;
        let mut per_item: Vec<Vec<CallVerdict>> = vec![Vec::new(); items.len()];
        for (a, v) in asks.iter().zip(verdicts) {
            per_item[a.item].push(v);
        }
        let mut out = Vec::with_capacity(items.len());
        for calls in per_item {
            let choices: Vec<Option<Side>> = calls.iter().map(|c| c.choice).collect();
            let (preference, disagree) = combine(&choices, self.settings.on_disagreement);
            if calls.len() == 2 && choices.iter().all(Option::is_some) {
                let mut t = self.totals.lock().unwrap();
                t.both_orders += 1;
                t.disagreements += disagree as u64;
            }
            out.push(PairVerdict { preference, calls, orders_disagree: disagree });
        }
        Ok(out)
    }

    /// Asks each pair `repeats` times (fresh calls: the repeat number is part of the cache key;
    /// the first is the labelling call itself), in the pair's usual order.
    pub async fn self_consistency(&self, items: &[Comparison<'_>], repeats: u32) -> Result<Consistency, JudgeError> {
        let repeats = repeats.max(2);
        let mut asks = Vec::new();
        for (i, c) in items.iter().enumerate() {
            let first = match self.settings.order {
                JudgeOrder::Random => self.random_first(c),
                JudgeOrder::Both => Side::A,
            };
            for r in 0..repeats {
                asks.push(Ask { item: i, item_texts: c, first, repeat: r });
            }
        }
        let verdicts = self.run_asks(&asks).await?;
        let failed = verdicts.iter().filter(|v| v.error.is_some()).count();
        if let Some(e) = verdicts.iter().find_map(|v| v.error.as_deref()) {
            return Err(JudgeError::CallsFailed { failed, total: verdicts.len(), first: e.to_string() });
        }
        let mut answers: Vec<Vec<Option<Side>>> = vec![Vec::new(); items.len()];
        for (a, v) in asks.iter().zip(verdicts) {
            answers[a.item].push(v.choice);
        }
        Ok(consistency(answers, repeats))
    }
}

/// The order a pair is shown in, in `random` mode: from the seed and the texts, so the same pair
/// is asked the same way on a rerun.
pub fn random_first(seed: u64, c: &Comparison) -> Side {
    let h = sha256_hex(&[&seed.to_string(), c.prompt, c.a, c.b]);
    if u8::from_str_radix(&h[..2], 16).unwrap_or(0) & 1 == 0 { Side::A } else { Side::B }
}

/// A pair's preference from its un-swapped answers (one, or one per order), and whether two
/// answers disagreed.
pub fn combine(choices: &[Option<Side>], on_disagreement: Disagreement) -> (Preference, bool) {
    let pref = |s: Side| match s {
        Side::A => Preference::A,
        Side::B => Preference::B,
    };
    match choices {
        [Some(x)] => (pref(*x), false),
        [Some(x), Some(y)] if x == y => (pref(*x), false),
        [Some(_), Some(_)] => (
            match on_disagreement {
                Disagreement::Tie => Preference::Tie,
                Disagreement::NoDecision => Preference::NoDecision,
            },
            true,
        ),
        _ => (Preference::NoDecision, false),
    }
}

/// The share of agreeing pairs among one question's answers (1 for fewer than two answers).
pub fn pairwise_agreement<T: PartialEq>(answers: &[T]) -> f64 {
    let n = answers.len();
    let pairs = n * n.saturating_sub(1) / 2;
    if pairs == 0 {
        return 1.0;
    }
    let same: usize = (0..n).map(|i| answers[i + 1..].iter().filter(|x| **x == answers[i]).count()).sum();
    same as f64 / pairs as f64
}

/// Agreement statistics over repeated answers.
pub fn consistency(answers: Vec<Vec<Option<Side>>>, repeats: u32) -> Consistency {
    let agree_sum: f64 = answers.iter().map(|a| pairwise_agreement(a)).sum();
    let unanimous = answers.iter().filter(|a| a.windows(2).all(|w| w[0] == w[1])).count();
    let n = answers.len().max(1) as f64;
    Consistency { pairs: answers.len(), repeats, agreement: agree_sum / n, unanimous: unanimous as f64 / n, answers }
}

impl Oracle for LlmJudge {
    fn name(&self) -> String {
        self.label()
    }

    fn judge(&self, item: &Comparison) -> Result<Judgement, OracleError> {
        Ok(self.judge_all(std::slice::from_ref(item))?.remove(0))
    }

    fn report(&self) -> Option<JudgeReport> {
        let totals = self.totals();
        Some(JudgeReport {
            first_position_rate: totals.first_position_rate(),
            position_bias_rate: totals.position_bias_rate(),
            audit_log_calls: self.ledger.cached_calls(),
            totals,
        })
    }

    /// Fails if any call failed after its retries (answered calls are in the ledger, so running
    /// again asks only the rest); unreadable answers are `NoDecision`, not failures.
    fn judge_all(&self, items: &[Comparison]) -> Result<Vec<Judgement>, OracleError> {
        let verdicts = self
            .blocking
            .run(self.judge_pairs(items))
            .unwrap_or(Err(JudgeError::Cancelled))
            .map_err(|e| OracleError::new(self.label(), e))?;
        let failed = verdicts.iter().filter(|v| v.failed().is_some()).count();
        if let Some(e) = verdicts.iter().find_map(|v| v.failed()) {
            let e = JudgeError::CallsFailed { failed, total: verdicts.len(), first: e.to_string() };
            return Err(OracleError::new(self.label(), e));
        }
        Ok(verdicts
            .into_iter()
            .map(|v| Judgement {
                preference: v.preference,
                rationale: v.calls.iter().find_map(|c| c.rationale.clone()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_counts_agreeing_answer_pairs() {
        use Side::*;
        // Pair 1: A A A (3/3 agreeing pairs); pair 2: A B A (1 of 3); pair 3: B, none (0 of 1).
        let c =
            consistency(vec![vec![Some(A), Some(A), Some(A)], vec![Some(A), Some(B), Some(A)], vec![Some(B), None]], 3);
        assert!((c.agreement - (1.0 + 1.0 / 3.0 + 0.0) / 3.0).abs() < 1e-12);
        assert!((c.unanimous - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn random_order_is_stable_per_pair_and_mixed_over_pairs() {
        let settings = JudgeSettings { base_url: "http://127.0.0.1:8081/v1".into(), ..Default::default() };
        let j = LlmJudge::new(settings, None, Arc::new(Ledger::in_memory()), Arc::new(Destinations::any())).unwrap();
        let texts: Vec<String> = (0..64).map(|i| format!("text {i}")).collect();
        let firsts: Vec<Side> =
            texts.iter().map(|t| j.random_first(&Comparison { prompt: "p", a: t, b: "other" })).collect();
        let again: Vec<Side> =
            texts.iter().map(|t| j.random_first(&Comparison { prompt: "p", a: t, b: "other" })).collect();
        assert_eq!(firsts, again);
        let a_first = firsts.iter().filter(|s| **s == Side::A).count();
        assert!((16..=48).contains(&a_first), "{a_first} of 64 shown A first");
    }
}
