#![no_main]
//! relay::fuzzing::engineio (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::engineio(data));
