#![no_main]
//! Fuzz target: see `distribus::fuzzing::record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::record(data));
