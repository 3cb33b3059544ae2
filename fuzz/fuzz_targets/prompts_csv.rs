//! A prompt upload in CSV (plain and TL;DR): any bytes give records or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for tldr in [false, true] {
        let _ = apl_engine::data::prompts::parse_csv("fuzz.csv", data, tldr);
    }
});
