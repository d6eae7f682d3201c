#![no_main]
//! relay::fuzzing::ws_json (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::ws_json(data));
