//! The operator's `--judge-allow` list: hosts, addresses and CIDR ranges, parsed or refused with
//! a message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apl::judge::destination::Destinations::parse_allow(&String::from_utf8_lossy(data));
});
