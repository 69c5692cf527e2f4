//! List pages decoded to the fields the kube loop checks.
//!
//! A full list is about 10 MiB of values that the load generator never reads.
//! Decoding them into `KeyValue`s (prost 0.11 copies each bytes field twice)
//! was most of `ringkv-bench`'s CPU under the kube mix, on the two cores it
//! shares with the server it measures. A page is decoded here as a message
//! that names only the header, each key-value's key and mod revision, and
//! `more`: prost skips every other field, values included, without copying.
//! Field numbers are etcd's (`RangeResponse`, `mvccpb.KeyValue`).

use crate::channel::Channel;
use ringkv_proto::etcdserverpb::{RangeRequest, ResponseHeader};
use tonic::client::Grpc;
use tonic::codec::ProstCodec;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::connect::RESPONSE_BYTES_MAX;

/// `etcdserverpb.RangeResponse`, without `count` and the key-values' other fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPage {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<ListedKey>,
    #[prost(bool, tag = "3")]
    pub more: bool,
}

/// `mvccpb.KeyValue`: key (1) and mod_revision (3) only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListedKey {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
}

/// `KV.Range`, answered as a [`ListPage`].
pub struct ListPages {
    grpc: Grpc<Channel>,
}

impl ListPages {
    pub fn new(channel: Channel) -> ListPages {
        ListPages {
            grpc: Grpc::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX),
        }
    }

    pub async fn range(&mut self, request: RangeRequest) -> Result<ListPage, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|error| Status::new(Code::Unknown, format!("service was not ready: {error}")))?;
        let codec = ProstCodec::<RangeRequest, ListPage>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Range");
        let response = self.grpc.unary(tonic::Request::new(request), path, codec).await?;
        Ok(response.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use ringkv_proto::etcdserverpb::RangeResponse;
    use ringkv_proto::mvccpb::KeyValue;

    use super::*;

    #[test]
    fn a_page_reads_the_header_keys_mod_revisions_and_more_of_a_range_response() {
        let kv = |key: &[u8], mod_revision| KeyValue {
            key: key.to_vec(),
            create_revision: 2,
            mod_revision,
            version: 3,
            value: vec![7; 1024],
            lease: 5,
        };
        let response = RangeResponse {
            header: Some(ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            kvs: vec![kv(b"/registry/pods/a", 9), kv(b"/registry/pods/b", 11)],
            more: true,
            count: 700,
        };
        let page = ListPage::decode(&response.encode_to_vec()[..]).unwrap();
        assert_eq!(page.header.map(|header| header.revision), Some(42));
        let keys: Vec<(&[u8], i64)> = page.kvs.iter().map(|kv| (&kv.key[..], kv.mod_revision)).collect();
        assert_eq!(keys, [(&b"/registry/pods/a"[..], 9), (&b"/registry/pods/b"[..], 11)]);
        assert!(page.more);
    }
}
