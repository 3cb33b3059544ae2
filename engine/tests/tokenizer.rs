//! The GGUF tokenizer against llama.cpp's tokenisation of SmolLM2's vocabulary.
//!
//! `tests/fixtures/smollm2-tokenizer/` holds the real model's tokenizer metadata (no weights)
//! and the ids llama.cpp (llama-cpp-python, `tokenize(..., special=True)`) gives for strings
//! chosen to be awkward: digits, unicode, leading and trailing spaces, special tokens.
//! Regenerate with `tests/fixtures/make_tokenizer_fixture.py`.

mod common;

use std::fs::File;
use std::io::BufReader;

use apl_engine::model::Tokenizer;
use candle_core::quantized::gguf_file;

fn smollm2() -> Tokenizer {
    let path = common::fixture("smollm2-tokenizer/tokenizer.gguf");
    let content = gguf_file::Content::read(&mut BufReader::new(File::open(&path).unwrap())).unwrap();
    Tokenizer::from_gguf(&content, &path).unwrap()
}

#[test]
fn gguf_tokenizer_matches_llama_cpp_and_round_trips() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("smollm2-tokenizer/expected.json")).unwrap())
            .unwrap();
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, true).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "round trip of {text:?}");
    }
    assert!(failures.is_empty(), "tokenisation differs:\n{}", failures.join("\n"));
}

#[test]
fn special_tokens_and_eos() {
    let tok = smollm2();
    // <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2 (the GGUF's eos).
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(tok.eos_ids(), &[0, 2]);
}

/// A byte-level model can emit byte 0 as a token. As text for people and the store (PostgreSQL
/// refuses NUL in TEXT), it becomes U+FFFD; the exact decode keeps it.
#[test]
fn generated_nul_bytes_become_replacement_characters() {
    let tok = smollm2();
    let ids = tok.encode("a\0b", false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "a\0b");
    assert_eq!(tok.decode_text(&ids).unwrap(), "a\u{FFFD}b");
}
