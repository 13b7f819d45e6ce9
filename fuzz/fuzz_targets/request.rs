#![no_main]
//! Fuzz target: see `distribus::fuzzing::request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::request(data));
