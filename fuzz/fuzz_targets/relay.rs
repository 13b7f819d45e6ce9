#![no_main]
//! Fuzz target: see `distribus::fuzzing::relay`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::relay(data));
