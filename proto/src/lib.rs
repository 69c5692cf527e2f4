//! etcd v3 wire-compatible protobuf messages for ringkv.
//!
//! Package and message names follow etcd v3.5 so that etcdctl, clientv3 and
//! kube-apiserver talk to ringkv unchanged.

/// etcd's `mvccpb` package: stored key-values and watch events.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}
