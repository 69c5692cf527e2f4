//! `ringkv_engine::fuzzing::page_store`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_engine::fuzzing::page_store(data));
