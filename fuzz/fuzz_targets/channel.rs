#![no_main]
//! Fuzz target: see `distribus::fuzzing::channel`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::channel(data));
