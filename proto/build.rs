//! Compiles ringkv's etcd-compatible `.proto` files with prost (and, with the
//! `client` feature, tonic client stubs). protoc comes from the system (Debian
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

fn main() -> std::io::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    compile()
}

#[cfg(feature = "client")]
fn compile() -> std::io::Result<()> {
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .compile(&PROTOS, &["proto"])
}

#[cfg(not(feature = "client"))]
fn compile() -> std::io::Result<()> {
    prost_build::Config::new().compile_protos(&PROTOS, &["proto"])
}
