//! `ringkv_server::fuzzing::snapshot_file`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_server::fuzzing::snapshot_file(data));
