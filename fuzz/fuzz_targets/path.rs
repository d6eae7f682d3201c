#![no_main]
//! relay::fuzzing::path (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::path(data));
