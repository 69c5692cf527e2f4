//! etcd's KV semantics on top of MVCC: what a Range, Put, DeleteRange, Txn or
//! Compact request does to the store and what it answers.
//!
//! This mirrors etcd's applier (etcdserver/apply.go in 3.4/3.5): the same order of
//! checks, the same revision in every (nested) response header, the same errors.
//! Headers are filled here with `revision` only; the store core adds cluster id,
//! member id and raft term to the outermost header, as etcd's gRPC layer does.

pub mod check;
mod counts;
mod encoded_range;
pub mod lease;
mod range;
mod txn;
mod write;

pub use counts::OpCounts;
pub use encoded_range::{EncodedRangeResponse, PREFIX_BYTES_MAX};
pub use range::{range, RangeAnswer, RangeBuild};
pub use txn::{is_read_only, is_serializable, txn, TxnBuild};
pub use write::{delete_range, put};

use ringkv_engine::mvcc::{KeySpan, Mvcc, MvccError, RangeEnd, RangeOptions, RangeResult, WriteTxn, NO_LEASE};
use ringkv_proto::etcdserverpb as pb;

use crate::etcd_error::EtcdError;

/// Why a request could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The client's request is refused with an etcd error; nothing was written.
    Client(EtcdError),
    /// The store is broken (I/O error, corruption): the server must stop.
    Fatal(MvccError),
    /// A write transaction failed after writing part of its changes, which
    /// cannot be taken back: the server must stop (etcd panics too). The checks
    /// made before a transaction executes exist so that this never happens.
    PartlyWritten(EtcdError),
}

impl From<MvccError> for ApplyError {
    fn from(error: MvccError) -> ApplyError {
        match error {
            MvccError::Compacted => ApplyError::Client(EtcdError::Compacted),
            MvccError::FutureRev => ApplyError::Client(EtcdError::FutureRev),
            fatal => ApplyError::Fatal(fatal),
        }
    }
}

impl From<EtcdError> for ApplyError {
    fn from(error: EtcdError) -> ApplyError {
        ApplyError::Client(error)
    }
}

/// Something a Range can read from: the committed store, or a write transaction
/// (which sees its own earlier writes).
pub trait ReadView {
    fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError>;
}

impl ReadView for Mvcc {
    fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError> {
        Mvcc::range(self, span, options)
    }
}

/// A write transaction plus whether it changed anything yet: etcd reports
/// `begin + 1` as the revision only once something changed.
pub struct WriteView<'a> {
    txn: WriteTxn<'a>,
    changed: bool,
}

impl<'a> WriteView<'a> {
    pub fn new(txn: WriteTxn<'a>) -> WriteView<'a> {
        WriteView { txn, changed: false }
    }

    /// The revision a response reports: the new one if this transaction wrote,
    /// the store's current one if not.
    fn reported_revision(&self) -> i64 {
        if self.changed {
            self.txn.revision()
        } else {
            self.txn.revision() - 1
        }
    }

    /// Ends the transaction; returns the store's revision after it.
    pub fn end(self) -> i64 {
        let changed = self.changed;
        let revision = self.txn.revision();
        let after = self.txn.end();
        assert_eq!(after, if changed { revision } else { revision - 1 });
        after
    }
}

impl ReadView for WriteView<'_> {
    fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(span, options)
    }
}

/// etcd's range conventions: empty `range_end` = the key alone, `"\0"` = every key
/// from `key` on, anything else = `[key, range_end)`.
pub fn key_span<'a>(key: &'a [u8], range_end: &'a [u8]) -> KeySpan<'a> {
    let end = match range_end {
        [] => RangeEnd::Key,
        [0] => RangeEnd::ToEnd,
        end => RangeEnd::Until(end),
    };
    KeySpan { key, end }
}

/// etcd's standalone Put checks its lease before anything else.
pub fn check_put_lease(view: &WriteView<'_>, request: &pb::PutRequest) -> Result<(), ApplyError> {
    if request.lease != NO_LEASE && !view.txn.leases().contains(request.lease) {
        return Err(EtcdError::LeaseNotFound.into());
    }
    Ok(())
}

/// A response header carrying only a revision (nested responses keep it that way).
pub fn revision_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Compact: logical at once; the physical removal runs later in bounded steps.
pub fn compact(mvcc: &mut Mvcc, request: &pb::CompactionRequest) -> Result<pb::CompactionResponse, ApplyError> {
    mvcc.compact(request.revision)?;
    Ok(pb::CompactionResponse {
        header: revision_header(mvcc.current_revision()),
    })
}

#[cfg(test)]
mod tests;
