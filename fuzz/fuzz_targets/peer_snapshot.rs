//! `ringkv_server::fuzzing::peer_snapshot`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_server::fuzzing::peer_snapshot(data));
