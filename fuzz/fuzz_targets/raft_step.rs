//! `ringkv_server::fuzzing::raft_step`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_server::fuzzing::raft_step(data));
