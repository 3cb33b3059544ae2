//! A prompt upload in JSON lines (plain and TL;DR): any bytes give records or an error, never a
//! panic, and every record holds text that was in the upload.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for tldr in [false, true] {
        if let Ok(records) = apl_engine::data::prompts::parse_jsonl("fuzz.jsonl", &text, tldr) {
            assert!(records.len() <= text.lines().count());
        }
    }
});
