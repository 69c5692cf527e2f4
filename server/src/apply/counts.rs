//! The operations etcd's mvcc layer counts (`etcd_mvcc_range_total`,
//! `put_total`, `delete_total`, `txn_total`): each request runs as one mvcc
//! transaction, whose reads (a Range, a compare, the previous value a Put or
//! DeleteRange returns or keeps) count as ranges; a transaction of more than one
//! operation counts as a txn too (etcd's `metricsTxnWrite.End`).

use ringkv_proto::etcdserverpb as pb;

/// Operation counts, summed over requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    pub txns: u64,
}

impl OpCounts {
    /// A Range request.
    pub fn range(&mut self) {
        self.add(OpCounts {
            ranges: 1,
            ..OpCounts::default()
        });
    }

    /// A Put request, applied.
    pub fn put(&mut self, request: &pb::PutRequest) {
        let mut one = OpCounts::default();
        one.count_put(request);
        self.add(one);
    }

    /// A DeleteRange request, applied.
    pub fn delete(&mut self, request: &pb::DeleteRangeRequest) {
        let mut one = OpCounts::default();
        one.count_delete(request);
        self.add(one);
    }

    /// A Txn request and its response: its compares and the branch it took,
    /// nested Txns' included.
    pub fn txn(&mut self, request: &pb::TxnRequest, response: &pb::TxnResponse) {
        let mut one = OpCounts::default();
        one.count_txn(request, response);
        self.add(one);
    }

    /// Adds one mvcc transaction's counts.
    fn add(&mut self, one: OpCounts) {
        self.ranges += one.ranges;
        self.puts += one.puts;
        self.deletes += one.deletes;
        if one.ranges + one.puts + one.deletes > 1 {
            self.txns += 1;
        }
    }

    fn count_put(&mut self, request: &pb::PutRequest) {
        if request.prev_kv || request.ignore_value || request.ignore_lease {
            self.ranges += 1;
        }
        self.puts += 1;
    }

    fn count_delete(&mut self, request: &pb::DeleteRangeRequest) {
        if request.prev_kv {
            self.ranges += 1;
        }
        self.deletes += 1;
    }

    fn count_txn(&mut self, request: &pb::TxnRequest, response: &pb::TxnResponse) {
        use pb::request_op::Request;
        use pb::response_op::Response;
        self.ranges += request.compare.len() as u64;
        let branch = if response.succeeded {
            &request.success
        } else {
            &request.failure
        };
        for (op, answer) in branch.iter().zip(&response.responses) {
            match (&op.request, &answer.response) {
                (Some(Request::RequestRange(_)), _) => self.ranges += 1,
                (Some(Request::RequestPut(put)), _) => self.count_put(put),
                (Some(Request::RequestDeleteRange(delete)), _) => self.count_delete(delete),
                (Some(Request::RequestTxn(nested)), Some(Response::ResponseTxn(answer))) => {
                    self.count_txn(nested, answer)
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;
    use pb::response_op::Response;

    fn op(request: Request) -> pb::RequestOp {
        pb::RequestOp { request: Some(request) }
    }

    fn answer(response: Response) -> pb::ResponseOp {
        pb::ResponseOp {
            response: Some(response),
        }
    }

    #[test]
    fn a_lone_put_or_range_is_no_txn_but_a_put_returning_its_previous_value_is() {
        let mut counts = OpCounts::default();
        counts.range();
        counts.put(&pb::PutRequest::default());
        assert_eq!(
            counts,
            OpCounts {
                ranges: 1,
                puts: 1,
                deletes: 0,
                txns: 0
            }
        );
        counts.put(&pb::PutRequest {
            prev_kv: true,
            ..Default::default()
        });
        assert_eq!((counts.ranges, counts.puts, counts.txns), (2, 2, 1));
    }

    #[test]
    fn a_txn_counts_its_compares_and_the_branch_it_took_nested_ones_included() {
        let nested = pb::TxnRequest {
            compare: vec![pb::Compare::default()],
            success: vec![op(Request::RequestDeleteRange(pb::DeleteRangeRequest::default()))],
            failure: vec![op(Request::RequestPut(pb::PutRequest::default()))],
        };
        let request = pb::TxnRequest {
            compare: vec![pb::Compare::default(), pb::Compare::default()],
            success: vec![
                op(Request::RequestRange(pb::RangeRequest::default())),
                op(Request::RequestTxn(nested)),
            ],
            failure: vec![op(Request::RequestPut(pb::PutRequest::default()))],
        };
        let response = pb::TxnResponse {
            succeeded: true,
            responses: vec![
                answer(Response::ResponseRange(pb::RangeResponse::default())),
                answer(Response::ResponseTxn(pb::TxnResponse {
                    succeeded: false,
                    responses: vec![answer(Response::ResponsePut(pb::PutResponse::default()))],
                    ..Default::default()
                })),
            ],
            ..Default::default()
        };
        let mut counts = OpCounts::default();
        counts.txn(&request, &response);
        assert_eq!(
            counts,
            OpCounts {
                ranges: 4,
                puts: 1,
                deletes: 0,
                txns: 1
            }
        );
    }
}
