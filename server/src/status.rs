//! What a call answers other than OK, in gRPC's terms: a status code and a
//! message. etcd's API defines its errors this way (`rpctypes`: a code and
//! the exact text), so the layers below the transport (`etcd_error`, and
//! through it `apply` and `store`) speak it too; `grpc` writes a Status as
//! the `grpc-status` / `grpc-message` trailers. Also grpc-go's limit on a
//! response message, which a response built below the transport stops at,
//! and the status that answers a response over it.

use std::fmt;

/// The largest response message sent: grpc-go's `MaxSendMsgSize` as etcd sets
/// it (`math.MaxInt32`). A larger one is answered with grpc-go's error instead.
pub const RESPONSE_BYTES_MAX: usize = i32::MAX as usize;

/// The 17 gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// A call's outcome other than OK: code and human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        assert!(code != Code::Ok, "a Status is an error");
        Status {
            code,
            message: message.into(),
        }
    }
}

/// grpc-go's answer for a response message over the send limit.
pub fn response_too_large(bytes: usize, max: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("grpc: trying to send message larger than max ({bytes} vs. {max})"),
    )
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}
