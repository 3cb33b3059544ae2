//! A judge's reply, as an LLM server (or whoever answers at its URL) sent it: read for a letter
//! or no decision, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apl::judge::template::parse_verdict(&String::from_utf8_lossy(data));
});
