#![no_main]
//! Fuzz target: see `distribus::fuzzing::frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::frame(data));
