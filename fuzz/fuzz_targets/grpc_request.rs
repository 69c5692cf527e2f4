//! `ringkv_server::fuzzing::grpc_request`; see docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_server::fuzzing::grpc_request(data));
