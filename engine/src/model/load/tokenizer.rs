//! Text <-> token ids, from an HF `tokenizer.json` or rebuilt from a GGUF file's metadata.
//!
//! A GGUF file carries its vocabulary, merges, token types and the name of its pre-tokenizer
//! (`tokenizer.ggml.pre`). We translate that into the equivalent `tokenizer.json` document and
//! let the `tokenizers` crate run it, so both sources go through the same, well-tested BPE.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::{Value, json};

use crate::model::error::{ModelError, Result};

/// Names of special tokens that end a completion when the model emits them.
const END_TOKENS: &[&str] = &["<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<|end_of_text|>"];

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("eos_ids", &self.eos_ids).finish()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::format(path, e))?;
        Ok(Self::with_end_tokens(inner, &[]))
    }

    /// Rebuilds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let doc = gguf_tokenizer_json(path, content)?;
        let inner: tokenizers::Tokenizer =
            doc.to_string().parse().map_err(|e| ModelError::format(path, format!("rebuilding the tokenizer: {e}")))?;
        let md = &content.metadata;
        let eos: Vec<u32> = md.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()).into_iter().collect();
        Ok(Self::with_end_tokens(inner, &eos))
    }

    fn with_end_tokens(inner: tokenizers::Tokenizer, extra: &[u32]) -> Self {
        let mut eos: BTreeSet<u32> = extra.iter().copied().collect();
        for name in END_TOKENS {
            if let Some(id) = inner.token_to_id(name) {
                eos.insert(id);
            }
        }
        Self { inner, eos_ids: eos.into_iter().collect() }
    }

    /// Adds end-of-sequence ids given by the model config.
    pub fn add_eos_ids(&mut self, ids: &[u32]) {
        for id in ids {
            if !self.eos_ids.contains(id) {
                self.eos_ids.push(*id);
            }
        }
        self.eos_ids.sort_unstable();
    }

    /// Ids that end a completion.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    /// `add_special` adds what the tokenizer's post-processor adds (a BOS, for some models).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| ModelError::Tokenizer(format!("encoding {:?}: {e}", preview(text))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids back to text, special tokens included, so that decode(encode(s)) == s.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| ModelError::Tokenizer(format!("decoding {} ids: {e}", ids.len())))
    }

    /// Decodes generated ids as text for people, judges and the store: a NUL character (a
    /// byte-level model can emit byte 0 as a token; PostgreSQL's TEXT cannot hold it, and no
    /// reader wants it) becomes U+FFFD, the replacement character.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        let text = self.decode(ids)?;
        Ok(if text.contains('\0') { text.replace('\0', "\u{FFFD}") } else { text })
    }

    /// Writes the tokenizer as an HF `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| ModelError::format(path, format!("writing the tokenizer: {e}")))
    }

    /// The text of each token, for display.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// GPT-2's pre-tokenizer regex is the ByteLevel default; others are spelled out as HF writes them.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer `tokenizer.json` uses for a llama.cpp `tokenizer.ggml.pre` name.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split =
        |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    // (pre-tokenizer, ignore_merges)
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
        // SmolLM / StarCoder: every digit on its own, then GPT-2's byte-level regex.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama-bpe" | "llama3" => {
            (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}), true)
        }
        "qwen2" => (json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}), false),
        other => {
            return Err(ModelError::format(
                path,
                format!(
                    "tokenizer.ggml.pre {other:?} is not supported (default, gpt2, smollm, starcoder, llama-bpe, \
                     qwen2); use an HF checkpoint directory with tokenizer.json instead"
                ),
            ));
        }
    })
}

/// Builds an HF `tokenizer.json` document from GGUF metadata.
fn gguf_tokenizer_json(path: &Path, content: &gguf_file::Content) -> Result<Value> {
    let md = &content.metadata;
    let bad = |m: String| ModelError::format(path, m);
    let get = |k: &str| md.get(k).ok_or_else(|| bad(format!("metadata key {k} is missing")));
    let model = get("tokenizer.ggml.model")?.to_string().map_err(|e| bad(format!("tokenizer.ggml.model: {e}")))?;
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer.ggml.model {model:?} is not supported (only byte-level BPE, \"gpt2\"); \
             use an HF checkpoint directory with tokenizer.json instead"
        )));
    }
    let strings = |k: &str| -> Result<Vec<String>> {
        get(k)?
            .to_vec()
            .map_err(|e| bad(format!("{k}: {e}")))?
            .iter()
            .enumerate()
            .map(|(i, v)| v.to_string().cloned().map_err(|e| bad(format!("{k}[{i}]: {e}"))))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| bad(format!("tokenizer.ggml.token_type: {e}")))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(v) => v.to_string().map_err(|e| bad(format!("tokenizer.ggml.pre: {e}")))?.clone(),
        None => "default".to_string(),
    };
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(path, &pre)?;

    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        // llama.cpp token types: 3 control, 4 user-defined.
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == 4, "special": ty == 3,
            }));
        }
    }
    let bos = md.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok());
    let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let tok =
                tokens.get(id as usize).ok_or_else(|| bad(format!("bos_token_id {id} is beyond the vocabulary")))?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {tok: {"id": tok, "ids": [id], "tokens": [tok]}},
            })
        }
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
        },
    }))
}
