#![no_main]
//! relay::fuzzing::actions (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::actions(data));
