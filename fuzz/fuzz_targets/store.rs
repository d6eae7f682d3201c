#![no_main]
//! relay::fuzzing::store (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::store(data));
