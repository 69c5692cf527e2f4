//! Compiles ringkv's etcd-compatible `.proto` files with prost (and, with the
//! `client` feature, tonic client stubs; with `json`, serde impls in
//! protobuf's JSON mapping by pbjson). protoc comes from the system (Debian
//! `protobuf-compiler`) or `PROTOC`.

const PROTOS: [&str; 7] = [
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/ringkvpb/raft.proto",
    "proto/grpc/health/v1/health.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
];

/// The packages the JSON gateway speaks: etcd's API, not ringkv's own.
#[cfg(feature = "json")]
const JSON_PACKAGES: [&str; 5] = [".etcdserverpb", ".mvccpb", ".authpb", ".v3lockpb", ".v3electionpb"];

fn main() -> std::io::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("descriptors.bin");
    compile(&descriptors)?;
    json(&descriptors)
}

#[cfg(feature = "client")]
fn compile(descriptors: &std::path::Path) -> std::io::Result<()> {
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .file_descriptor_set_path(descriptors)
        .compile(&PROTOS, &["proto"])
}

#[cfg(not(feature = "client"))]
fn compile(descriptors: &std::path::Path) -> std::io::Result<()> {
    prost_build::Config::new()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&PROTOS, &["proto"])
}

/// grpc-gateway's jsonpb with `OrigName`: proto field names, as etcd's gateway
/// writes them.
#[cfg(feature = "json")]
fn json(descriptors: &std::path::Path) -> std::io::Result<()> {
    let set = std::fs::read(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        // jsonpb, as grpc-gateway reads requests, skips fields it does not know.
        .ignore_unknown_fields()
        .build(&JSON_PACKAGES)
}

#[cfg(not(feature = "json"))]
fn json(_descriptors: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}
