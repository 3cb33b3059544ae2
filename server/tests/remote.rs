//! The remote model backend against a mock server that speaks exactly the JSON of vLLM's and
//! llama-cpp-python's completions APIs (field for field, as their `protocol.py` / `types.py`
//! write it), computing its answers with a real model: the tiny llama fixture, run by this
//! engine. So a remote sample's log-probs and a remote score must equal the local engine's
//! scoring of the same tokens (f32 noise only), which checks every alignment the client does:
//! choices to rows, prompt log-prob positions to completion tokens, echo offsets to the
//! prompt/completion boundary. A switch makes the mock read echoed log-probs one position late,
//! as llama-cpp-python does (its issue #1983): the probe must refuse it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apl::judge::destination::Destinations;
use apl::remote::{Remote, RemoteError};
use apl_engine::backend::{ModelBackend, Role, SampleJob};
use apl_engine::model::{Batch, FinishReason, Model, Padding, Tokenizer, sequence_logprobs};
use apl_shared::settings::{RemoteBackend, ServerKind};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

mod common;

#[derive(Default)]
struct Faults {
    /// Echoed log-probs from the distribution after the token (llama-cpp-python #1983).
    shifted: bool,
    /// No `prompt_logprobs` in vLLM replies (a server that ignores the field).
    no_prompt_logprobs: bool,
    /// The tokenizer endpoint adds a token to texts with a non-ASCII character.
    odd_tokenizer: bool,
    /// Answer this many requests 503 with Retry-After first.
    unavailable: AtomicUsize,
    /// Wait this long before answering.
    delay: Option<Duration>,
}

struct Mock {
    model: Model,
    tok: Tokenizer,
    faults: Faults,
    bodies: Mutex<Vec<Value>>,
}

type Shared = Arc<Mock>;

impl Mock {
    /// log_softmax of the logits at every position of `ids`: [position][token].
    fn logprobs(&self, ids: &[u32]) -> Vec<Vec<f32>> {
        let batch = Batch::new(&[ids], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
        let logits = self.model.forward(&batch).unwrap().squeeze(0).unwrap();
        candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2().unwrap()
    }

    fn piece(&self, id: u32) -> String {
        self.tok.decode(&[id]).unwrap()
    }

    /// The text token `j` adds to the ones before it, as llama-cpp-python reports tokens
    /// (`detokenize([token], prev_tokens)`, bytes that are not a whole character dropped).
    fn piece_after(&self, ids: &[u32], j: usize) -> String {
        let (a, b) = (self.tok.decode(&ids[..j]).unwrap(), self.tok.decode(&ids[..=j]).unwrap());
        b.strip_prefix(a.as_str()).unwrap_or(&b).replace('\u{FFFD}', "")
    }

    /// The `k` most likely next tokens of a distribution, as (id, log-prob).
    fn top(dist: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = dist.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all
    }

    /// `max_tokens` tokens after `ids` at `temperature` (end-of-sequence suppressed before
    /// `min_tokens`; the logit bias applied), each with its log-prob at temperature 1.
    fn generate(&self, ids: &[u32], body: &Value, rng: &mut ChaCha8Rng) -> (Vec<u32>, Vec<f32>, &'static str) {
        let max = body["max_tokens"].as_u64().unwrap() as usize;
        let min = body["min_tokens"].as_u64().unwrap_or(0) as usize;
        let t = body["temperature"].as_f64().unwrap() as f32;
        let bias: BTreeMap<u32, f32> = body["logit_bias"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap() as f32)).collect())
            .unwrap_or_default();
        let (mut seq, mut toks, mut lps) = (ids.to_vec(), Vec::new(), Vec::new());
        let eos = self.tok.eos_ids();
        for step in 0..max {
            let dist = self.logprobs(&seq).pop().unwrap();
            let mut w: Vec<f32> = dist.iter().map(|&l| l / t.max(1e-4)).collect();
            for (&id, &b) in &bias {
                w[id as usize] += b;
            }
            if step < min {
                for &e in eos {
                    w[e as usize] = f32::NEG_INFINITY;
                }
            }
            let next = if t == 0.0 {
                Self::top(&w, 1)[0].0
            } else {
                let m = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let p: Vec<f32> = w.iter().map(|&x| (x - m).exp()).collect();
                let mut u = rng.random::<f32>() * p.iter().sum::<f32>();
                let mut pick = 0;
                for (i, &x) in p.iter().enumerate() {
                    pick = i;
                    if u < x {
                        break;
                    }
                    u -= x;
                }
                pick as u32
            };
            seq.push(next);
            toks.push(next);
            lps.push(dist[next as usize]);
            if eos.contains(&next) {
                return (toks, lps, "stop");
            }
        }
        (toks, lps, "length")
    }
}

fn usage(p: usize, c: usize) -> Value {
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// vLLM's `/v1/completions` for token-id prompts.
fn vllm(m: &Mock, body: &Value) -> Value {
    let prompts: Vec<Vec<u32>> = match &body["prompt"] {
        Value::Array(a) if a.first().is_some_and(Value::is_array) => {
            a.iter().map(|p| serde_json::from_value(p.clone()).unwrap()).collect()
        }
        p => vec![serde_json::from_value(p.clone()).unwrap()],
    };
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let top_k = body["logprobs"].as_u64();
    let mut rng = ChaCha8Rng::seed_from_u64(body["seed"].as_u64().unwrap_or(0));
    let mut choices = Vec::new();
    for p in &prompts {
        let prompt_logprobs: Option<Vec<Value>> = body["prompt_logprobs"].as_u64().map(|k| {
            let lp = m.logprobs(p);
            (0..p.len())
                .map(|j| {
                    if j == 0 {
                        return Value::Null;
                    }
                    let mut e = serde_json::Map::new();
                    for (rank, (id, v)) in Mock::top(&lp[j - 1], k as usize).into_iter().enumerate() {
                        e.insert(id.to_string(), json!({"logprob": v, "rank": rank + 1, "decoded_token": m.piece(id)}));
                    }
                    let actual = lp[j - 1][p[j] as usize];
                    let rank = lp[j - 1].iter().filter(|&&x| x > actual).count() + 1;
                    e.insert(
                        p[j].to_string(),
                        json!({"logprob": actual, "rank": rank, "decoded_token": m.piece(p[j])}),
                    );
                    Value::Object(e)
                })
                .collect()
        });
        for _ in 0..n {
            let (toks, lps, finish) = m.generate(p, body, &mut rng);
            let logprobs = top_k.map(|k| {
                let mut seq = p.clone();
                let mut tops = Vec::new();
                for &t in &toks {
                    let dist = m.logprobs(&seq).pop().unwrap();
                    let mut e: serde_json::Map<String, Value> = Mock::top(&dist, k as usize)
                        .into_iter()
                        .map(|(id, v)| (format!("token_id:{id}"), json!(v)))
                        .collect();
                    e.insert(format!("token_id:{t}"), json!(dist[t as usize]));
                    tops.push(Value::Object(e));
                    seq.push(t);
                }
                json!({
                    "text_offset": (0..toks.len()).collect::<Vec<_>>(),
                    "token_logprobs": lps,
                    "tokens": toks.iter().map(|t| format!("token_id:{t}")).collect::<Vec<_>>(),
                    "top_logprobs": tops,
                })
            });
            let mut choice = json!({
                "index": choices.len(),
                "text": m.tok.decode(&toks).unwrap(),
                "logprobs": logprobs,
                "finish_reason": finish,
                "stop_reason": null,
                "token_ids": toks,
                "prompt_logprobs": null,
                "prompt_token_ids": p,
            });
            if !m.faults.no_prompt_logprobs {
                choice["prompt_logprobs"] = json!(prompt_logprobs);
            }
            choices.push(choice);
        }
    }
    // Shuffled, as a server may send them: the client orders by index.
    choices.reverse();
    json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"],
           "choices": choices, "usage": usage(prompts.iter().map(Vec::len).sum(), n)})
}

/// llama-cpp-python's `/v1/completions`: one text prompt, `echo` and `logprobs`.
fn llama_cpp_python(m: &Mock, body: &Value) -> Value {
    let text = body["prompt"].as_str().unwrap();
    let ids = m.tok.encode(text, true).unwrap();
    let k = body["logprobs"].as_u64().unwrap_or(0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(body["seed"].as_u64().unwrap_or(0));
    let (mut new, mut new_lps, finish) = m.generate(&ids, body, &mut rng);
    if finish == "stop" {
        // Its end-of-sequence token is neither in the text nor in the log-probs.
        new.pop();
        new_lps.pop();
    }
    let echo = body["echo"].as_bool().unwrap_or(false);
    let all: Vec<u32> = [ids.as_slice(), &new].concat();
    let lp = m.logprobs(&all);
    let (mut tokens, mut offsets, mut values, mut tops) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0;
    let first = if echo { 0 } else { ids.len() };
    for (j, &t) in all.iter().enumerate() {
        let piece = m.piece_after(&all, j);
        if j == ids.len() {
            // Generated text's offsets count from the end of the prompt text.
            offset = text.chars().count();
        }
        if j >= first {
            // Position j's log-prob: from the distribution before it, or (shifted, prompt tokens
            // only) after it.
            let d = if m.faults.shifted && j < ids.len() { Some(j) } else { j.checked_sub(1) };
            let value = if j >= ids.len() { Some(new_lps[j - ids.len()]) } else { d.map(|d| lp[d][t as usize]) };
            tokens.push(piece.clone());
            offsets.push(offset);
            values.push(value);
            tops.push(d.map(|d| {
                let mut e: serde_json::Map<String, Value> =
                    Mock::top(&lp[d], k).into_iter().map(|(id, v)| (m.piece(id), json!(v))).collect();
                e.insert(piece.clone(), json!(lp[d][t as usize]));
                Value::Object(e)
            }));
        }
        offset += piece.chars().count();
    }
    let new_text = m.tok.decode(&new).unwrap();
    let text_out = if echo { format!("{text}{new_text}") } else { new_text };
    json!({
        "id": "cmpl-mock", "object": "text_completion", "created": 1, "model": body["model"],
        "choices": [{"text": text_out, "index": 0,
                     "logprobs": if k > 0 { json!({"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}) } else { Value::Null },
                     "finish_reason": finish}],
        "usage": usage(ids.len(), new.len()),
    })
}

async fn completions(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    m.bodies.lock().unwrap().push(body.clone());
    if let Some(d) = m.faults.delay {
        tokio::time::sleep(d).await;
    }
    if m.faults.unavailable.load(Ordering::SeqCst) > 0 {
        m.faults.unavailable.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")], "busy").into_response();
    }
    let reply = if body["prompt"].is_string() { llama_cpp_python(&m, &body) } else { vllm(&m, &body) };
    Json(reply).into_response()
}

fn tokens_of(m: &Mock, text: &str) -> Value {
    let mut ids = m.tok.encode(text, true).unwrap();
    if m.faults.odd_tokenizer && !text.is_ascii() {
        ids.insert(3, 7);
    }
    json!({"tokens": ids, "count": ids.len(), "max_model_len": 2048})
}

async fn tokenize(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    Json(tokens_of(&m, body["prompt"].as_str().unwrap())).into_response()
}

async fn extras_tokenize(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    Json(json!({"tokens": tokens_of(&m, body["input"].as_str().unwrap())["tokens"]})).into_response()
}

struct Fixture {
    model: Model,
    tok: Tokenizer,
}

fn fixture() -> Fixture {
    let ck = common::load("llama", DType::F32);
    let tok = ck.tokenizer.clone().expect("the fixture's tokenizer");
    Fixture { model: Model::from_checkpoint(&ck).unwrap(), tok }
}

async fn start(faults: Faults) -> (String, Shared) {
    let f = fixture();
    let m = Arc::new(Mock { model: f.model, tok: f.tok, faults, bodies: Mutex::new(Vec::new()) });
    let app = axum::Router::new()
        .route("/v1/completions", axum::routing::post(completions))
        .route("/tokenize", axum::routing::post(tokenize))
        .route("/extras/tokenize", axum::routing::post(extras_tokenize))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), m)
}

fn settings(base_url: &str, server: ServerKind) -> RemoteBackend {
    RemoteBackend {
        base_url: base_url.into(),
        model: "base".into(),
        server,
        rows_per_request: 3,
        concurrency: 4,
        timeout_seconds: 5.0,
        retries: 3,
        backoff_seconds: 0.01,
        ..Default::default()
    }
}

fn remote(s: RemoteBackend) -> Remote {
    Remote::new(s, None, fixture().tok, Arc::new(Destinations::any())).unwrap()
}

/// Runs blocking backend calls off the test's runtime threads, as the loop does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Samples 4 prompts x 2 with per-row lengths, then checks every row: its length, and its
/// reported log-probs against the local engine's scoring of the same tokens.
fn sample_and_check(r: &Remote, exact: bool) -> Vec<Vec<u32>> {
    let f = fixture();
    let texts = ["The film", "I think that", "A long and winding", "Why"];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| f.tok.encode(t, true).unwrap()).collect();
    let prompts: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let lengths = [3, 5, 4, 4, 2, 6, 5, 1];
    let job = SampleJob {
        prompts: &prompts,
        per_prompt: 2,
        lengths: &lengths,
        exact_length: exact,
        temperature: 0.9,
        max_new_tokens: 6,
        seed: 11,
        batch_size: 8,
        pass_seed: |s, _| s,
    };
    let seen = Mutex::new(Vec::new());
    let samples = r.sample(Role::Policy, &job, &|d, n| seen.lock().unwrap().push((d, n))).unwrap();
    assert_eq!(samples.len(), 8);
    assert_eq!(seen.lock().unwrap().last(), Some(&(8, 8)));
    let mut compared = 0;
    for (row, s) in samples.iter().enumerate() {
        // The server's tokens (its log-probs, one each) have the row's length; a text server's
        // tokens are mapped back to ids by their text, or (where a piece is ambiguous) the
        // completion re-encoded, which may cut it otherwise: compared where it does not.
        if exact || s.finish == FinishReason::Length {
            assert_eq!(s.logprobs.len(), lengths[row], "row {row}");
        }
        assert!(s.logprobs.len() <= lengths[row]);
        // Only a token that is not a whole character (the tiny random model samples single
        // bytes above 127 often) leaves a text server's token ambiguous.
        let text = f.tok.decode(&s.tokens).unwrap();
        if s.tokens.len() != s.logprobs.len() {
            assert!(!text.is_ascii(), "row {row}: {text:?} was not mapped to the server's tokens");
            continue;
        }
        compared += 1;
        let pairs = [(prompts[row / 2], s.tokens.as_slice())];
        let local = sequence_logprobs(&f.model, &pairs, 1, |_| {}).unwrap();
        for (k, (a, b)) in s.logprobs.iter().zip(&local[0].tokens).enumerate() {
            assert!((a - b).abs() < 1e-4, "row {row} token {k}: remote {a} vs local {b}");
        }
    }
    assert!(compared >= 2, "{compared} of 8 rows have the server's tokens");
    // Seeded: the same job gives the same samples.
    let again = r.sample(Role::Policy, &job, &|_, _| {}).unwrap();
    assert_eq!(samples, again);
    samples.into_iter().map(|s| s.tokens).collect()
}

/// Scores rows remotely and locally: equal to f32 noise, token by token and in sum.
fn score_and_check(r: &Remote) {
    let f = fixture();
    let rows_text = [("The film", " was great"), ("I think that", " it is not"), ("Why", " yes and no, really")];
    let ids: Vec<(Vec<u32>, Vec<u32>)> = rows_text
        .iter()
        .map(|(p, c)| {
            let p_ids = f.tok.encode(p, true).unwrap();
            let all = f.tok.encode(&format!("{p}{c}"), true).unwrap();
            assert_eq!(&all[..p_ids.len()], p_ids.as_slice());
            (p_ids.clone(), all[p_ids.len()..].to_vec())
        })
        .collect();
    let rows: Vec<(&[u32], &[u32])> = ids.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    let local = sequence_logprobs(&f.model, &rows, 2, |_| {}).unwrap();
    let tokens = r.token_logprobs(Role::Reference, &rows, &|_, _| {}).unwrap();
    for (i, (t, l)) in tokens.iter().zip(&local).enumerate() {
        assert_eq!(t.len(), l.tokens.len(), "row {i}");
        for (k, (a, b)) in t.iter().zip(&l.tokens).enumerate() {
            assert!((a - b).abs() < 1e-4, "row {i} token {k}: remote {a} vs local {b}");
        }
    }
    let (policy, reference) = r.score(&rows, 2, &|_, _| {}).unwrap();
    assert_eq!(policy, reference, "an untrained policy is the reference");
    let refs = r.score_reference(&rows, 2, &|_, _| {}).unwrap();
    for ((a, b), l) in refs.iter().zip(&reference).zip(&local) {
        assert!((a - l.sum).abs() < 1e-4 && a == b, "{a} {b} {}", l.sum);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_samples_and_scores_as_the_local_engine_does() {
    let (url, mock) = start(Faults::default()).await;
    let s = settings(&url, ServerKind::Vllm);
    blocking(move || {
        let r = remote(s);
        let checked = r.check().unwrap();
        assert!(checked.d_same < 1e-5, "{checked:?}");
        assert!(checked.d_next > 0.05, "{checked:?}");
        sample_and_check(&r, true);
        sample_and_check(&r, false);
        score_and_check(&r);
    })
    .await;
    let bodies = mock.bodies.lock().unwrap();
    // 4 prompts at 3 a request: two sampling requests per job, every knob explicit.
    let mut sampling: Vec<&Value> = bodies.iter().filter(|b| b["n"] == json!(2)).take(2).collect();
    sampling.sort_by_key(|b| std::cmp::Reverse(b["prompt"].as_array().unwrap().len()));
    assert_eq!(sampling[0]["prompt"].as_array().unwrap().len(), 3);
    assert_eq!(sampling[1]["prompt"].as_array().unwrap().len(), 1);
    assert!(sampling.iter().all(|b| b["top_k"] == json!(-1) && b["repetition_penalty"] == json!(1.0)));
    assert_eq!(sampling[0]["max_tokens"], json!(6), "the longest row of the request (lengths 3, 5, 4, 4, 2, 6)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_python_samples_and_scores_by_text() {
    let (url, mock) = start(Faults::default()).await;
    let s = settings(&url, ServerKind::LlamaCppPython);
    blocking(move || {
        let r = remote(s);
        r.check().unwrap();
        sample_and_check(&r, true);
        score_and_check(&r);
    })
    .await;
    let bodies = mock.bodies.lock().unwrap();
    let sampling: Vec<&Value> = bodies.iter().filter(|b| b["seed"].is_u64() && b["echo"].is_null()).collect();
    // One request a completion, with end-of-sequence biased away for exact lengths.
    assert_eq!(sampling.len(), 16);
    assert!(sampling.iter().all(|b| b["logit_bias"].is_object() && b["top_k"] == json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_logprobs_read_one_position_late_are_refused() {
    let (url, _mock) = start(Faults { shifted: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::LlamaCppPython);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("read one position late (llama-cpp-python issue #1983)"), "{e}");
    // The fixture's tokenizer cuts the probe's third token as " m" ("This m|ovie").
    assert!(e.contains("\" m\" is reported at") && e.contains("next-token request on \"This\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_prompt_logprobs_or_with_another_tokenizer_is_refused() {
    let (url, _mock) = start(Faults { no_prompt_logprobs: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("returns no prompt log-probs"), "{e}");

    let (url, _mock) = start(Faults { odd_tokenizer: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("tokenises differently") && e.contains("probe 4") && e.contains("token 3: local"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_servers_are_retried_and_cancelled_calls_dropped() {
    let (url, mock) = start(Faults { unavailable: AtomicUsize::new(2), ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    blocking(move || score_and_check(&remote(s))).await;
    assert!(mock.bodies.lock().unwrap().len() >= 3);

    // A refused destination is not retried.
    let s = settings(&url, ServerKind::Vllm);
    let e = Remote::new(s, None, fixture().tok, Arc::new(Destinations::public_and(vec![]))).unwrap_err();
    assert!(matches!(e, RemoteError::Client(_)), "{e}");

    let (url, _mock) = start(Faults { delay: Some(Duration::from_secs(30)), ..Default::default() }).await;
    let flag = Arc::new(AtomicBool::new(false));
    let r = remote(settings(&url, ServerKind::Vllm)).cancelled_by(flag.clone());
    let t = Instant::now();
    let cancel = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::Relaxed);
    });
    let e = blocking(move || r.check().unwrap_err()).await;
    assert!(matches!(e, RemoteError::Cancelled), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}
