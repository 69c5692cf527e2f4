//! Compiles ringkv's etcd-compatible `.proto` files with prost.
//! protoc comes from the system (Debian `protobuf-compiler`), or `PROTOC`.

fn main() -> std::io::Result<()> {
    let protos = ["proto/mvccpb/kv.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new().compile_protos(&protos, &["proto"])
}
