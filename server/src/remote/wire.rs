//! The completions API as the two servers speak it: request bodies and what is read back.
//!
//! Every sampling knob is sent explicitly, because servers fill what is left out with their own
//! defaults (vLLM from the model's `generation_config.json`; llama-cpp-python with top-k 40,
//! top-p 0.95, min-p 0.05 and a repeat penalty of 1.1), and the loop's samples must come from
//! the model's own distribution at the given temperature, as the local engine's do.
//!
//! - vLLM takes token-id prompts, several a request, with `n` samples each (choices come back
//!   prompt-major), returns token ids (`return_token_ids`, or `token_id:N` strings with
//!   `return_tokens_as_token_ids`) and scores prompts with `prompt_logprobs` (per position, a
//!   map from token id to `{logprob}`; position 0 is null).
//! - llama-cpp-python takes one text prompt a request and ignores `n` and `min_tokens`, so each
//!   completion is its own request and an exact length is `logit_bias` against end-of-sequence
//!   (applied by its sampler; the reported log-probs stay the model's). Its tokens are strings;
//!   scoring is `echo`, where `text_offset` (in characters, i.e. Python code points) says where
//!   the completion starts.
//!
//! Log-probs are the model's at temperature 1 on both (vLLM's default `raw_logprobs`,
//! llama-cpp-python's raw scores), as the local engine reports them.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::openai::{CallError, Who, shape};

/// A completions reply, as far as it is read.
#[derive(Debug, Deserialize)]
pub struct Completion {
    pub choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<Logprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM's generated token ids (`return_token_ids`).
    #[serde(default)]
    pub token_ids: Option<Vec<u32>>,
    /// vLLM's prompt log-probs: per prompt position, token id → its log-prob.
    #[serde(default)]
    pub prompt_logprobs: Option<Vec<Option<HashMap<String, PromptLogprob>>>>,
}

/// The legacy completions `logprobs` object.
#[derive(Debug, Default, Deserialize)]
pub struct Logprobs {
    #[serde(default)]
    pub text_offset: Vec<usize>,
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub top_logprobs: Option<Vec<Option<HashMap<String, f64>>>>,
}

#[derive(Debug, Deserialize)]
pub struct PromptLogprob {
    pub logprob: f64,
}

/// Reads a completions reply: a reply that is not one is malformed (and retried).
pub fn parse(bytes: &[u8]) -> Result<Completion, CallError> {
    let malformed = |shape| CallError::Malformed { who: Who::Model, expected: "a completion", shape };
    let mut c: Completion = serde_json::from_slice(bytes).map_err(|_| malformed(shape(bytes)))?;
    if c.choices.is_empty() {
        return Err(malformed(format!("no choices in {}", shape(bytes))));
    }
    c.choices.sort_by_key(|c| c.index);
    Ok(c)
}

/// What a sampling request asks, whichever server.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub temperature: f64,
    pub max_tokens: usize,
    /// End-of-sequence suppressed until `max_tokens`.
    pub exact: bool,
    pub seed: u64,
}

/// vLLM: `n` samples of each token-id prompt, stopping at (and, before `min_tokens`, never
/// sampling) any of our end-of-sequence ids, which may be more than the model's own.
pub fn vllm_sample(model: &str, prompts: &[&[u32]], n: usize, k: Knobs, eos: &[u32]) -> Value {
    json!({
        "model": model,
        "prompt": prompts,
        "n": n,
        "max_tokens": k.max_tokens,
        "min_tokens": if k.exact { k.max_tokens } else { 0 },
        "temperature": k.temperature,
        "top_p": 1.0,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": k.seed,
        "stop_token_ids": eos,
        "logprobs": 1,
        "return_token_ids": true,
        "return_tokens_as_token_ids": true,
        "skip_special_tokens": false,
    })
}

/// vLLM: each row's prompt log-probs (and one throwaway token).
pub fn vllm_score(model: &str, rows: &[Vec<u32>], top: usize) -> Value {
    json!({
        "model": model,
        "prompt": rows,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": top,
    })
}

/// llama-cpp-python: one sample of a text prompt.
pub fn text_sample(model: &str, prompt: &str, k: Knobs, eos: &[u32]) -> Value {
    let mut body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": k.max_tokens,
        "temperature": k.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": k.seed,
        "logprobs": 1,
    });
    if k.exact {
        let bias: serde_json::Map<String, Value> = eos.iter().map(|id| (id.to_string(), json!(-100.0))).collect();
        body["logit_bias"] = Value::Object(bias);
    }
    body
}

/// Any text server: the text echoed with its log-probs (`top` alternatives a position), and one
/// throwaway token (a `max_tokens` of 0 means "no limit" to some servers).
pub fn text_echo(model: &str, text: &str, top: usize) -> Value {
    json!({
        "model": model,
        "prompt": text,
        "echo": true,
        "logprobs": top,
        "max_tokens": 1,
        "temperature": 0.0,
    })
}

/// The most likely next tokens after a prompt (token ids, keyed `token_id:N`, for vLLM; text,
/// keyed by token text as its echo keys them, otherwise): greedy, one token.
pub fn next_token(model: &str, prompt: Value, top: usize) -> Value {
    let ids = prompt.is_array();
    let mut body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": top,
    });
    if ids {
        body["return_tokens_as_token_ids"] = json!(true);
    }
    body
}

/// A token id from vLLM's `token_id:N` form.
pub fn token_id(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:").and_then(|n| n.parse().ok())
}

/// The key a top-log-probs map is compared under: `token_id:N` becomes `N` (vLLM's generated
/// tokens), so it meets the ids of vLLM's prompt log-probs; text keys stay text.
pub fn top_key(s: &str) -> String {
    token_id(s).map(|id| id.to_string()).unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_and_llama_cpp_python_replies_read() {
        // vLLM 0.11 (`protocol.py`): prompt-major choices, token ids, prompt log-probs by id.
        let v = br#"{"id":"cmpl-1","object":"text_completion","model":"m","choices":[
            {"index":1,"text":" b","logprobs":{"text_offset":[0],"token_logprobs":[-0.5],"tokens":["token_id:65"],"top_logprobs":[{"token_id:65":-0.5}]},"finish_reason":"length","token_ids":[65]},
            {"index":0,"text":" a","logprobs":null,"finish_reason":"length","token_ids":[64],
             "prompt_logprobs":[null,{"12":{"logprob":-1.25,"rank":1,"decoded_token":"x"}}]}],
            "usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}"#;
        let c = parse(v).unwrap();
        assert_eq!(c.choices[0].token_ids, Some(vec![64]));
        assert_eq!(c.choices[1].logprobs.as_ref().unwrap().token_logprobs, vec![Some(-0.5)]);
        let pl = c.choices[0].prompt_logprobs.as_ref().unwrap();
        assert!(pl[0].is_none() && pl[1].as_ref().unwrap()["12"].logprob == -1.25);
        // llama-cpp-python 0.3 echo: the first token's log-prob is null.
        let l = br#"{"id":"cmpl-2","object":"text_completion","created":1,"model":"m","choices":[{"text":"Hi there","index":0,
            "logprobs":{"text_offset":[0,2],"token_logprobs":[null,-2.0],"tokens":["Hi"," there"],"top_logprobs":[null,{" there":-2.0}]},
            "finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let c = parse(l).unwrap();
        assert_eq!(c.choices[0].logprobs.as_ref().unwrap().token_logprobs, vec![None, Some(-2.0)]);
        let e = parse(br#"{"choices":[]}"#).unwrap_err().to_string();
        assert_eq!(
            e,
            "the model server's reply is not a completion: no choices in a JSON object with fields [choices] (14 bytes)"
        );
        assert_eq!(
            (token_id("token_id:42"), top_key("token_id:7"), top_key(" the")),
            (Some(42), "7".into(), " the".into())
        );
    }

    #[test]
    fn every_sampling_knob_is_explicit() {
        let k = Knobs { temperature: 0.7, max_tokens: 16, exact: true, seed: 9 };
        let v = vllm_sample("m", &[&[1, 2]], 4, k, &[0, 2]);
        assert_eq!(v["stop_token_ids"], json!([0, 2]));
        assert_eq!((v["min_tokens"].as_u64(), v["top_k"].as_i64(), v["n"].as_u64()), (Some(16), Some(-1), Some(4)));
        assert_eq!(v["prompt"], json!([[1, 2]]));
        let t = text_sample("m", "Hi", k, &[0, 2]);
        assert_eq!((t["repeat_penalty"].as_f64(), t["min_p"].as_f64()), (Some(1.0), Some(0.0)));
        assert_eq!(t["logit_bias"], json!({"0": -100.0, "2": -100.0}));
        assert!(text_sample("m", "Hi", Knobs { exact: false, ..k }, &[0]).get("logit_bias").is_none());
    }
}
