//! `ringkv_engine::fuzzing::wal_open`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_engine::fuzzing::wal_open(data));
