//! The LLM judge against a scripted chat-completions server started by the test: good answers,
//! malformed answers, 429 with Retry-After, 500s, timeouts, non-JSON bodies and a refused key.
//! Checks the labels (un-swapped), the retries the server saw, that no unreadable answer becomes
//! a side, that the audit log has every call and no key, and that a rerun is served from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apl::judge::client::{ChatClient, ChatError, ChatRequest, ClientConfig, Message};
use apl::judge::ledger::{AuditEntry, Ledger};
use apl::judge::llm::Side;
use apl::judge::{Disagreement, JudgeOrder, JudgeSettings, LlmJudge};
use apl_engine::oracle::{Comparison, Oracle, Preference};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

mod common;

fn any() -> Arc<apl::judge::destination::Destinations> {
    Arc::new(apl::judge::destination::Destinations::any())
}

const KEY: &str = "sk-test-key-0123456789";

#[derive(Default)]
struct Script {
    /// Requests seen per prompt tag, with their arrival times.
    seen: HashMap<String, Vec<Instant>>,
    auth: Vec<Option<String>>,
    /// Every request body, to check nothing but the protocol is sent.
    bodies: Vec<Value>,
}

type Shared = Arc<Mutex<Script>>;

fn reply(content: &str) -> Response {
    Json(json!({
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    }))
    .into_response()
}

/// The letter the server's "preference" has in this request: the text starting "good" wins.
fn letter_of_good(user: &str) -> &'static str {
    let a = user.find("Continuation A: ").unwrap();
    let b = user.find("Continuation B: ").unwrap();
    if user[a..b].contains("good") { "A" } else { "B" }
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let user = body["messages"][1]["content"].as_str().unwrap_or_default().to_string();
    let tag = user.split("Review start: ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
    let n = {
        let mut s = s.lock().unwrap();
        s.auth.push(headers.get("authorization").map(|v| v.to_str().unwrap().to_string()));
        s.bodies.push(body.clone());
        let v = s.seen.entry(tag.clone()).or_default();
        v.push(Instant::now());
        v.len()
    };
    let good = format!("Comparison: one of them is upbeat.\nPreferred: {}", letter_of_good(&user));
    if body["logprobs"] == json!(true) {
        // A model that never writes the letter first, but ranks the right one above the other.
        let (right, wrong) = if letter_of_good(&user) == "A" { ("A", " B") } else { (" B", "A") };
        let top = if tag == "noletter" {
            json!([{"token": "The", "logprob": -0.1}, {"token": "I", "logprob": -2.0}])
        } else {
            json!([{"token": "The", "logprob": -0.1}, {"token": right, "logprob": -1.5}, {"token": wrong, "logprob": -2.5}])
        };
        return Json(json!({
            "choices": [{"message": {"role": "assistant", "content": "The"}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": "The", "logprob": -0.1, "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 90, "completion_tokens": 1}
        }))
        .into_response();
    }
    match tag.as_str() {
        "malformed" => reply("Comparison: both are lovely.\nI cannot choose."),
        "garbage" if n == 1 => (StatusCode::OK, "<html>upstream busy</html>").into_response(),
        "ratelimited" if n == 1 => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"error": {"message": "slow down"}})))
                .into_response()
        }
        "flaky" if n <= 2 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "slow" if n == 1 => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply(&good)
        }
        "dead" => (StatusCode::SERVICE_UNAVAILABLE, "secret-upstream-detail").into_response(),
        "refused" => (StatusCode::UNAUTHORIZED, "secret-upstream-detail: key sk-other").into_response(),
        // Always the first position: total position bias.
        "biased" => reply("Comparison: the first.\nPreferred: A"),
        // Alternates between the letters, whatever is shown.
        "flip" => reply(if n % 2 == 1 { "A" } else { "B" }),
        _ => reply(&good),
    }
}

async fn start() -> (String, Shared) {
    let shared: Shared = Default::default();
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat)).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), shared)
}

fn settings(base_url: &str) -> JudgeSettings {
    JudgeSettings {
        base_url: base_url.into(),
        model: "scripted".into(),
        api_key_env: None,
        timeout_seconds: 1.0,
        retries: 3,
        backoff_seconds: 0.05,
        concurrency: 4,
        price_prompt_per_million: 10.0,
        price_completion_per_million: 30.0,
        ..Default::default()
    }
}

struct Item {
    prompt: String,
    a: String,
    b: String,
}

/// A pair tagged `tag` whose good text is on side `good`.
fn item(tag: &str, i: usize, good: Side) -> Item {
    let (g, b) = (format!("good text {i}"), format!("bland text {i}"));
    let (a, b) = if good == Side::A { (g, b) } else { (b, g) };
    Item { prompt: format!("{tag} review {i}"), a, b }
}

fn comparisons(items: &[Item]) -> Vec<Comparison<'_>> {
    items.iter().map(|i| Comparison { prompt: &i.prompt, a: &i.a, b: &i.b }).collect()
}

fn audit(path: &std::path::Path) -> Vec<AuditEntry> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_retries_audit_and_cache() {
    let (url, script) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("judge/audit.jsonl");
    let mut items: Vec<Item> = (0..8).map(|i| item("ok", i, if i % 2 == 0 { Side::A } else { Side::B })).collect();
    for (i, tag) in ["malformed", "garbage", "ratelimited", "flaky", "slow"].iter().enumerate() {
        items.push(item(tag, 100 + i, Side::B));
    }
    let judge = LlmJudge::new(settings(&url), Some(KEY.into()), Arc::new(Ledger::open(&log).unwrap()), any())
        .expect("settings valid");
    let verdicts = judge.judge_pairs(&comparisons(&items)).await.unwrap();

    // Right labels, un-swapped whatever order each pair was shown in.
    for (i, v) in verdicts.iter().enumerate().take(8) {
        assert_eq!(v.preference, if i % 2 == 0 { Preference::A } else { Preference::B }, "pair {i}: {v:?}");
    }
    let shown_first: Vec<Side> = verdicts.iter().map(|v| v.calls[0].first_shown).collect();
    assert!(shown_first.contains(&Side::A) && shown_first.contains(&Side::B), "orders are mixed: {shown_first:?}");
    // No answer without a letter mapped to a side, and it is not retried.
    assert_eq!(verdicts[8].preference, Preference::NoDecision);
    assert!(verdicts[8].failed().is_none());
    // Transient failures retried until answered.
    for v in &verdicts[9..] {
        assert_eq!(v.preference, Preference::B, "{v:?}");
    }
    {
        let s = script.lock().unwrap();
        let count = |t: &str| s.seen.get(t).map_or(0, Vec::len);
        assert_eq!(
            (count("malformed"), count("garbage"), count("ratelimited"), count("flaky"), count("slow")),
            (1, 2, 2, 3, 2)
        );
        assert_eq!(count("ok"), 8);
        let rl = &s.seen["ratelimited"];
        assert!(rl[1] - rl[0] >= Duration::from_millis(950), "Retry-After honoured: {:?}", rl[1] - rl[0]);
        assert!(s.auth.iter().all(|a| a.as_deref() == Some(&format!("Bearer {KEY}"))));
        // The protocol's fields only, with the paper's temperature.
        for b in &s.bodies {
            let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["max_tokens", "messages", "model", "temperature"]);
            assert_eq!(b["temperature"], json!(0.05));
        }
    }
    let t = judge.totals();
    assert_eq!((t.calls, t.cached, t.failed, t.no_decision, t.decided), (13, 0, 0, 1, 12));
    assert_eq!(t.retries, 1 + 1 + 2 + 1);
    assert_eq!((t.prompt_tokens, t.completion_tokens), (1300, 130));
    assert!((t.cost_usd - (1300.0 * 10.0 + 130.0 * 30.0) / 1e6).abs() < 1e-12);

    // The audit log: one line per call, with request and reply, attempts, and no key anywhere.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(KEY) && !text.to_lowercase().contains("bearer"));
    let entries = audit(&log);
    assert_eq!(entries.len(), 13);
    assert!(entries.iter().all(|e| e.reply.is_some() && e.error.is_none() && !e.cached));
    assert_eq!(entries.iter().map(|e| e.attempts).sum::<u32>(), 13 + 5);
    assert!(entries.iter().all(|e| e.request.messages.len() == 2 && e.request.model == "scripted"));

    // A rerun with a fresh judge on the same log sends nothing and gives the same labels.
    let again = LlmJudge::new(settings(&url), Some(KEY.into()), Arc::new(Ledger::open(&log).unwrap()), any()).unwrap();
    let before: usize = script.lock().unwrap().seen.values().map(Vec::len).sum();
    let verdicts2 = again.judge_pairs(&comparisons(&items)).await.unwrap();
    let after: usize = script.lock().unwrap().seen.values().map(Vec::len).sum();
    assert_eq!(before, after, "a rerun costs nothing");
    assert_eq!(
        verdicts.iter().map(|v| v.preference).collect::<Vec<_>>(),
        verdicts2.iter().map(|v| v.preference).collect::<Vec<_>>()
    );
    let t2 = again.totals();
    assert_eq!((t2.calls, t2.cached, t2.cost_usd), (13, 13, 0.0));
    assert_eq!(audit(&log).len(), 26, "cache hits are logged too, marked cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_never_labelled() {
    let (url, script) = start().await;
    let items = vec![item("ok", 1, Side::A), item("dead", 2, Side::A)];
    let judge = Arc::new(LlmJudge::new(settings(&url), None, Arc::new(Ledger::in_memory()), any()).unwrap());
    let verdicts = judge.judge_pairs(&comparisons(&items)).await.unwrap();
    assert_eq!(verdicts[0].preference, Preference::A);
    assert_eq!(verdicts[1].preference, Preference::NoDecision);
    let e = verdicts[1].failed().unwrap();
    assert!(e.contains("503") && !e.contains("secret-upstream-detail"), "{e}");
    assert_eq!(script.lock().unwrap().seen["dead"].len(), 4, "first attempt and 3 retries");
    assert!(script.lock().unwrap().auth.iter().all(Option::is_none), "no key configured, no header");

    // As an oracle (a blocking call, as the worker makes it): the whole batch fails, naming the
    // labeller, with the calls that failed as its cause.
    let j = judge.clone();
    let owned: Vec<(String, String, String)> =
        items.iter().map(|i| (i.prompt.clone(), i.a.clone(), i.b.clone())).collect();
    let err = tokio::task::spawn_blocking(move || {
        let c: Vec<Comparison> = owned.iter().map(|(p, a, b)| Comparison { prompt: p, a, b }).collect();
        apl::error::describe(&j.judge_all(&c).unwrap_err())
    })
    .await
    .unwrap();
    assert!(
        err.starts_with("the llm:scripted labeller failed: 1 of 2 judge calls failed") && err.contains("503"),
        "{err}"
    );

    // A refused key is not retried, and the upstream body is not echoed.
    let client = ChatClient::new(ClientConfig {
        base_url: url.clone(),
        api_key: Some(KEY.into()),
        timeout: Duration::from_secs(2),
        retries: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        destinations: any(),
    })
    .unwrap();
    let req = ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::system("s"),
            Message::user("Review start: refused\nContinuation A: x\nContinuation B: y"),
        ],
        temperature: 0.0,
        max_tokens: 4,
        top_logprobs: None,
    };
    let out = client.chat(&req).await;
    assert_eq!(out.attempts, 1);
    let e = out.result.unwrap_err();
    assert!(matches!(e, ChatError::Status { status: 401, .. }));
    assert!(e.to_string().contains("check the API key") && !e.to_string().contains("secret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_orders_expose_position_bias() {
    let (url, _script) = start().await;
    let items: Vec<Item> = (0..6).map(|i| item(if i < 4 { "biased" } else { "ok" }, i, Side::B)).collect();
    let both = JudgeSettings { order: JudgeOrder::Both, ..settings(&url) };
    let judge = LlmJudge::new(both.clone(), None, Arc::new(Ledger::in_memory()), any()).unwrap();
    let v = judge.judge_pairs(&comparisons(&items)).await.unwrap();
    assert!(v[..4].iter().all(|v| v.preference == Preference::Tie && v.orders_disagree && v.calls.len() == 2));
    assert!(v[4..].iter().all(|v| v.preference == Preference::B && !v.orders_disagree));
    let t = judge.totals();
    assert_eq!((t.both_orders, t.disagreements), (6, 4));
    assert!((t.position_bias_rate().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    // 8 biased calls all chose the first position, 4 honest ones split evenly.
    assert!((t.first_position_rate().unwrap() - 10.0 / 12.0).abs() < 1e-12);

    let strict = JudgeSettings { on_disagreement: Disagreement::NoDecision, ..both };
    let judge = LlmJudge::new(strict, None, Arc::new(Ledger::in_memory()), any()).unwrap();
    let v = judge.judge_pairs(&comparisons(&items[..1])).await.unwrap();
    assert_eq!(v[0].preference, Preference::NoDecision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_consistency_asks_afresh() {
    let (url, script) = start().await;
    let items = vec![item("ok", 1, Side::A), item("flip", 2, Side::A)];
    let ledger = Arc::new(Ledger::in_memory());
    let judge = LlmJudge::new(settings(&url), None, ledger, any()).unwrap();
    let c = judge.self_consistency(&comparisons(&items), 4).await.unwrap();
    assert_eq!(script.lock().unwrap().seen["ok"].len(), 4, "repeats are not served from the cache");
    assert_eq!(c.answers[0], vec![Some(Side::A); 4]);
    // The flipping pair: two answers each way, 2 of its 6 answer pairs agree.
    assert!((c.agreement - (1.0 + 2.0 / 6.0) / 2.0).abs() < 1e-12, "{c:?}");
    assert_eq!(c.unanimous, 0.5);
}

/// The local judge on a tiny random model: its margins are log p(" A") - log p(" B") read off
/// the plain forward pass and a log-softmax, and its preferences un-swap them.
#[test]
fn local_judge_reads_letter_logprobs_and_unswaps() {
    use apl::judge::local::LocalJudge;
    use apl_engine::model::Batch;
    use candle_core::{D, DType};

    let ck = common::load("llama", DType::F32);
    let model = apl_engine::model::Model::from_checkpoint(&ck).unwrap();
    let tok = ck.tokenizer().unwrap();
    // The fixture has 64 positions: a short custom prompt.
    let items: Vec<Item> =
        (0..6).map(|i| Item { prompt: format!("p{i}"), a: format!("good {i}"), b: format!("bad {}", 7 * i) }).collect();
    let cs = comparisons(&items);
    let template = apl::judge::CustomTemplate { system: "Judge.".into(), user: "{prompt} A: {a} B: {b}".into() };
    let both = JudgeSettings {
        task: apl::judge::JudgeTask::Custom,
        template: Some(template),
        order: JudgeOrder::Both,
        on_disagreement: Disagreement::NoDecision,
        ..Default::default()
    };
    let judge = LocalJudge::new(model.clone(), tok.clone(), both.clone(), 4);
    let asks: Vec<(Comparison, Side)> = cs.iter().flat_map(|c| [(*c, Side::A), (*c, Side::B)]).collect();
    let margins = judge.margins(&asks).unwrap();

    // Independently: prompt + letter through forward(), log-softmax row by row, summed over the
    // letter's tokens.
    let letter_logp = |prompt: &[u32], letter: &[u32]| -> f32 {
        let ids: Vec<u32> = prompt.iter().chain(letter).copied().collect();
        let batch =
            Batch::from_rows(vec![ids.clone()], vec![vec![true; ids.len()]], DType::F32, model.device()).unwrap();
        let logits = model.forward(&batch).unwrap().get(0).unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().to_vec2::<f32>().unwrap();
        letter.iter().enumerate().map(|(t, &id)| lsm[prompt.len() - 1 + t][id as usize]).sum()
    };
    let (a_ids, b_ids) = (tok.encode(" A", false).unwrap(), tok.encode(" B", false).unwrap());
    assert!(tok.token_to_id("<|im_start|>").is_some());
    for (k, (c, first)) in asks.iter().enumerate() {
        let (x, y) = if *first == Side::A { (c.a, c.b) } else { (c.b, c.a) };
        let r = apl::judge::template::render(both.task, both.template.as_ref(), c.prompt, x, y).unwrap();
        // The fixture's tokenizer has ChatML's tokens, so the chat layout applies.
        let text = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\nPreferred:",
            r.system, r.user
        );
        let ids = tok.encode(&text, true).unwrap();
        let want = letter_logp(&ids, &a_ids) - letter_logp(&ids, &b_ids);
        assert!((margins[k] - want).abs() < 1e-4, "ask {k}: {} vs {want}", margins[k]);
    }
    // Both orders: a side only when the two un-swapped answers agree.
    let judged = judge.judge_all(&cs).unwrap();
    for (i, j) in judged.iter().enumerate() {
        let first = if margins[2 * i] > 0.0 { Preference::A } else { Preference::B };
        let second = if margins[2 * i + 1] > 0.0 { Preference::B } else { Preference::A };
        let want = if first == second { first } else { Preference::NoDecision };
        assert_eq!(j.preference, want, "pair {i}");
    }
    assert_eq!(judge.name(), "local:logprob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_answers_force_a_choice() {
    let (url, script) = start().await;
    let mut items: Vec<Item> = (0..6).map(|i| item("ok", i, if i % 3 == 0 { Side::A } else { Side::B })).collect();
    items.push(item("noletter", 9, Side::A));
    let s = JudgeSettings { answer: apl::judge::AnswerMode::Logprobs, ..settings(&url) };
    let judge = LlmJudge::new(s, None, Arc::new(Ledger::in_memory()), any()).unwrap();
    let v = judge.judge_pairs(&comparisons(&items)).await.unwrap();
    for (i, v) in v.iter().enumerate().take(6) {
        assert_eq!(v.preference, if i % 3 == 0 { Preference::A } else { Preference::B }, "pair {i}");
    }
    assert_eq!(v[6].preference, Preference::NoDecision, "neither letter among the alternatives");
    let s = script.lock().unwrap();
    for b in &s.bodies {
        assert_eq!(
            (b["max_tokens"].clone(), b["logprobs"].clone(), b["top_logprobs"].clone()),
            (json!(1), json!(true), json!(20))
        );
        assert!(b["messages"][1]["content"].as_str().unwrap().ends_with("nothing else."));
    }
}
