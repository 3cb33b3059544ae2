//! The OpenAI-compatible chat completions protocol (`POST {base}/chat/completions`), spoken by
//! OpenAI, vLLM, llama.cpp's server and Ollama: the request body and the reply the judge reads.
//! Retries, destinations, the key and the reply limit are `openai`'s.

use super::JudgeError;
use crate::openai::{CallError, Client, Who, shape};

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

/// Why a chat call failed, after any retries.
pub type ChatError = CallError;

/// How a call went: the reply or the final error, attempts made, time taken.
pub type Outcome = crate::openai::Outcome<ChatReply>;

pub use crate::openai::ClientConfig;

/// A chat-completions client for the judge: [`Client`] with the chat protocol's body and reply.
#[derive(Clone, Debug)]
pub struct ChatClient {
    client: Client,
    url: String,
}

impl ChatClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, JudgeError> {
        let client = Client::new(Who::Judge, cfg)?;
        Ok(Self { url: client.api("/chat/completions"), client })
    }

    /// One chat completion, retried as `openai`'s header says.
    pub async fn chat(&self, req: &ChatRequest) -> Outcome {
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
        self.client.post(&self.url, &body, parse_reply).await
    }
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

fn parse_reply(bytes: &[u8]) -> Result<ChatReply, ChatError> {
    let malformed = |shape| ChatError::Malformed { who: Who::Judge, expected: "a chat completion", shape };
    let w: Wire = serde_json::from_slice(bytes).map_err(|_| malformed(shape(bytes)))?;
    let c = w.choices.into_iter().next().ok_or_else(|| malformed(format!("no choices in {}", shape(bytes))))?;
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
        assert!(matches!(parse_reply(b"<html>busy</html>"), Err(ChatError::Malformed { .. })));
        let none = parse_reply(br#"{"choices":[]}"#).unwrap_err().to_string();
        assert!(
            none.starts_with(
                "the judge server's reply is not a chat completion: no choices in a JSON object with fields [choices]"
            ),
            "{none}"
        );
        // A null content (refusals, tool calls) is an empty answer, not a protocol error.
        let null = br#"{"choices":[{"message":{"content":null}}]}"#;
        assert_eq!(parse_reply(null).unwrap().content, "");
        let lp = br#"{"choices":[{"message":{"content":"A"},"logprobs":{"content":[{"token":"A","logprob":-0.4,
                     "top_logprobs":[{"token":"A","logprob":-0.4},{"token":" B","logprob":-3.1}]}]}}]}"#;
        assert_eq!(parse_reply(lp).unwrap().top_logprobs, Some(vec![("A".into(), -0.4), (" B".into(), -3.1)]));
    }
}
