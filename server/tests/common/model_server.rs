//! A mock model server that speaks exactly the JSON of vLLM's and llama-cpp-python's
//! completions APIs (field for field, as their `protocol.py` / `types.py` write it), computing
//! its answers with a real model: the tiny llama fixture, run by this engine. Shared by the
//! server's tests (`remote.rs`) and the end-to-end tests (`tests/tests/jobs.rs`).
//!
//! Faults make it a wrong server: echoed log-probs read one position late (llama-cpp-python
//! #1983), no prompt log-probs, another tokenizer, 503s, slowness. Adapters loaded by name are
//! read with this engine's PEFT loader and served, when it is given the starting checkpoint.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apl_engine::model::{Batch, Checkpoint, Model, Padding, Tokenizer};
use apl_engine::train::policy::Policy;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// The tiny llama fixture (`engine/tests/fixtures/llama`).
pub fn llama() -> Checkpoint {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/llama");
    Checkpoint::load(&dir, DType::F32, &Device::Cpu).unwrap()
}

#[derive(Default)]
pub struct Faults {
    /// Echoed log-probs from the distribution after the token (llama-cpp-python #1983).
    pub shifted: bool,
    /// No `prompt_logprobs` in vLLM replies (a server that ignores the field).
    pub no_prompt_logprobs: bool,
    /// The tokenizer endpoint adds a token to texts with a non-ASCII character.
    pub odd_tokenizer: bool,
    /// Answer this many requests 503 with Retry-After first.
    pub unavailable: AtomicUsize,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Completions answered 200 with a body that never ends.
    pub endless: bool,
}

pub struct Mock {
    pub model: Model,
    pub tok: Tokenizer,
    pub faults: Faults,
    pub bodies: Mutex<Vec<Value>>,
    /// Adapters loaded (`POST /v1/load_lora_adapter`): name, path.
    pub adapters: Mutex<Vec<(String, String)>>,
    /// With the starting checkpoint: each adapter read by this engine's PEFT loader and served
    /// under its name (else adapters are served with the base model's numbers).
    pub base: Option<Checkpoint>,
    pub served: Mutex<HashMap<String, Arc<Policy>>>,
}

pub type Shared = Arc<Mock>;

impl Mock {
    /// The policy served as `name`, when it is a loaded adapter.
    pub fn policy(&self, name: &Value) -> Option<Arc<Policy>> {
        self.served.lock().unwrap().get(name.as_str()?).cloned()
    }

    /// log_softmax of `model`'s logits at every position of `ids`: [position][token].
    fn logprobs(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
        let batch = Batch::new(&[ids], Padding::Right, 0, DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward(&batch).unwrap().squeeze(0).unwrap();
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
    fn generate(
        &self,
        model: &Model,
        ids: &[u32],
        body: &Value,
        rng: &mut ChaCha8Rng,
    ) -> (Vec<u32>, Vec<f32>, &'static str) {
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
            let dist = Self::logprobs(model, &seq).pop().unwrap();
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
    let adapter = m.policy(&body["model"]);
    let model = adapter.as_ref().map_or(&m.model, |p| p.model());
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
            let lp = Mock::logprobs(model, p);
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
            let (toks, lps, finish) = m.generate(model, p, body, &mut rng);
            let logprobs = top_k.map(|k| {
                let mut seq = p.clone();
                let mut tops = Vec::new();
                for &t in &toks {
                    let dist = Mock::logprobs(model, &seq).pop().unwrap();
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
    let model = &m.model;
    let text = body["prompt"].as_str().unwrap();
    let ids = m.tok.encode(text, true).unwrap();
    let k = body["logprobs"].as_u64().unwrap_or(0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(body["seed"].as_u64().unwrap_or(0));
    let (mut new, mut new_lps, finish) = m.generate(model, &ids, body, &mut rng);
    if finish == "stop" {
        // Its end-of-sequence token is neither in the text nor in the log-probs.
        new.pop();
        new_lps.pop();
    }
    let echo = body["echo"].as_bool().unwrap_or(false);
    let all: Vec<u32> = [ids.as_slice(), &new].concat();
    let lp = Mock::logprobs(model, &all);
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
    if m.faults.endless {
        let chunk = axum::body::Bytes::from(vec![b' '; 1 << 20]);
        let body = futures_util::stream::repeat_with(move || Ok::<_, std::convert::Infallible>(chunk.clone()));
        return ([("content-type", "application/json")], axum::body::Body::from_stream(body)).into_response();
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

async fn models(State(m): State<Shared>) -> Response {
    let mut names = vec!["base".to_string()];
    names.extend(m.adapters.lock().unwrap().iter().map(|(n, _)| n.clone()));
    let data: Vec<Value> = names.iter().map(|n| json!({"id": n, "object": "model", "owned_by": "vllm"})).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn load_lora_adapter(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    let name = body["lora_name"].as_str().unwrap().to_string();
    let path = body["lora_path"].as_str().unwrap().to_string();
    if let Some(base) = &m.base {
        let policy = apl_engine::train::peft::load(base.clone(), std::path::Path::new(&path)).unwrap();
        m.served.lock().unwrap().insert(name.clone(), Arc::new(policy));
    }
    m.adapters.lock().unwrap().push((name.clone(), path));
    format!("Success: LoRA adapter '{name}' added successfully.").into_response()
}

async fn extras_tokenize(State(m): State<Shared>, Json(body): Json<Value>) -> Response {
    Json(json!({"tokens": tokens_of(&m, body["input"].as_str().unwrap())["tokens"]})).into_response()
}

pub struct Fixture {
    pub model: Model,
    pub tok: Tokenizer,
}

/// The tiny llama fixture the mock computes with.
pub fn fixture() -> Fixture {
    let ck = llama();
    let tok = ck.tokenizer.clone().expect("the fixture's tokenizer");
    Fixture { model: Model::from_checkpoint(&ck).unwrap(), tok }
}

pub async fn start(faults: Faults) -> (String, Shared) {
    start_with(faults, None).await
}

/// A mock that serves adapters on `base` (see `Mock::base`).
pub async fn start_with(faults: Faults, base: Option<Checkpoint>) -> (String, Shared) {
    let f = fixture();
    let m = Arc::new(Mock {
        model: f.model,
        tok: f.tok,
        faults,
        bodies: Mutex::new(Vec::new()),
        adapters: Mutex::new(Vec::new()),
        base,
        served: Mutex::new(HashMap::new()),
    });
    let app = axum::Router::new()
        .route("/v1/completions", axum::routing::post(completions))
        .route("/tokenize", axum::routing::post(tokenize))
        .route("/extras/tokenize", axum::routing::post(extras_tokenize))
        .route("/v1/models", axum::routing::get(models))
        .route("/v1/load_lora_adapter", axum::routing::post(load_lora_adapter))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), m)
}
