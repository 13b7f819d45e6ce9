#![no_main]
//! Fuzz target: see `distribus::fuzzing::gateway_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::gateway_frame(data));
