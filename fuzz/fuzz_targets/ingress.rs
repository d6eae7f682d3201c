#![no_main]
//! relay::fuzzing::ingress (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::ingress(data));
