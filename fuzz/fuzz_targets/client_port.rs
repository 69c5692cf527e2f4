//! `ringkv_server::fuzzing::client_port`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_server::fuzzing::client_port(data));
