#![no_main]
//! Fuzz target: see `distribus::fuzzing::response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| distribus::fuzzing::response(data));
