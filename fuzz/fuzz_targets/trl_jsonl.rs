//! A TRL preference file (prompt / chosen / rejected, with extra fields): any bytes give records
//! or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(records) = apl_engine::data::trl::parse_jsonl("fuzz.jsonl", &text) {
        assert!(records.len() <= text.lines().count());
    }
});
