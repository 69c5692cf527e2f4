//! What one HTTP/2 connection may hold in memory for its calls: each open
//! call's headers plus a fixed cost, and the request bytes its streams have
//! received but not yet handed to a handler (partly received messages).
//!
//! Flow control does not bound these: a stream's window is handed back as soon
//! as its bytes are buffered (a message may be larger than the window), and
//! etcd's default `--max-concurrent-streams` is unlimited. So the connection
//! keeps one count, and a call that would take it past the limit fails alone
//! with RESOURCE_EXHAUSTED; the connection and its other calls go on.

use std::cell::Cell;
use std::rc::Rc;

use crate::status::{Code, Status};

/// The most one connection's calls hold: 32 requests of etcd's largest
/// (`--max-request-bytes` 1.5 MiB + grpc overhead) partly received at once.
/// etcd (grpc-go) has no such limit.
pub const CONNECTION_REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What an open call costs besides its headers and buffered bytes (h2's
/// stream state and the call's task), so that empty calls count too.
pub const CALL_OVERHEAD_BYTES: usize = 1024;

/// The shared count of one connection.
#[derive(Clone)]
pub struct ConnectionBudget {
    used: Rc<Cell<usize>>,
    max: usize,
}

impl ConnectionBudget {
    pub fn new(max: usize) -> ConnectionBudget {
        ConnectionBudget {
            used: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// A new charge of `bytes`, or the status that refuses it.
    pub fn charge(&self, bytes: usize) -> Result<Charge, Status> {
        let mut charge = Charge {
            budget: Some(self.clone()),
            bytes: 0,
        };
        charge.set(bytes)?;
        Ok(charge)
    }

    fn exhausted(&self) -> Status {
        Status::new(
            Code::ResourceExhausted,
            format!(
                "ringkv: the calls of this connection would hold more than {} bytes",
                self.max
            ),
        )
    }
}

/// Bytes one holder (a call, a message decoder) has charged to its
/// connection; given back when dropped.
pub struct Charge {
    budget: Option<ConnectionBudget>,
    bytes: usize,
}

impl Charge {
    /// A charge against no connection (decoder tests and fuzz targets).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn unbounded() -> Charge {
        Charge { budget: None, bytes: 0 }
    }

    /// Makes the charge `bytes`; refused (and left as it was) if that would
    /// take the connection past its limit.
    pub fn set(&mut self, bytes: usize) -> Result<(), Status> {
        let Some(budget) = &self.budget else {
            self.bytes = bytes;
            return Ok(());
        };
        let others = budget.used.get() - self.bytes;
        if bytes > self.bytes && others + bytes > budget.max {
            return Err(budget.exhausted());
        }
        budget.used.set(others + bytes);
        self.bytes = bytes;
        Ok(())
    }

    /// Lowers the charge to `bytes`, which never fails.
    pub fn lower(&mut self, bytes: usize) {
        assert!(bytes <= self.bytes, "lowering a charge of {} to {bytes}", self.bytes);
        self.set(bytes).expect("a lower charge always fits");
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.set(budget.used.get() - self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_share_the_connections_limit_and_are_given_back_when_dropped() {
        let budget = ConnectionBudget::new(100);
        let first = budget.charge(60).unwrap();
        let mut second = budget.charge(0).unwrap();
        let refused = second.set(41).unwrap_err();
        assert_eq!(refused.code, Code::ResourceExhausted);
        assert_eq!(second.bytes, 0, "a refused charge stays as it was");
        second.set(40).unwrap();
        assert!(budget.charge(1).is_err());
        drop(first);
        assert_eq!(budget.used.get(), 40);
        second.lower(10);
        assert_eq!(budget.used.get(), 10);
        drop(second);
        assert_eq!(budget.used.get(), 0);
    }
}
