#![no_main]
//! relay::fuzzing::socketio (see relay/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::socketio(data));
