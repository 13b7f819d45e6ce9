#![no_main]
//! Fuzz target: see `distribus::fuzzing::delivery`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::delivery(data));
