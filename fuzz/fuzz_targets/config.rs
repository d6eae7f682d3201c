#![no_main]
//! relay::fuzzing::config (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::config(data));
