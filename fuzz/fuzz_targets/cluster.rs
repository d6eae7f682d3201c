#![no_main]
//! relay::fuzzing::cluster (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::cluster(data));
