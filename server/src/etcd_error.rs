//! etcd's client-visible errors, with the exact gRPC code and message text.
//!
//! Clients (clientv3, kube-apiserver) map errors back by message text, so every
//! message here is byte for byte etcd's (`api/v3rpc/rpctypes/error.go`). This is the
//! one place where an etcd error becomes a gRPC status.

use std::borrow::Cow;

use crate::status::{response_too_large, Code, Status};

/// An error a client can see, in etcd's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdError {
    EmptyKey,
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    TooManyOps,
    /// ringkv's own: transactions nested deeper than `apply::check::TXN_DEPTH_MAX`.
    TxnTooDeep,
    DuplicateKey,
    InvalidSortOption,
    Compacted,
    FutureRev,
    LeaseNotFound,
    LeaseExist,
    LeaseTtlTooLarge,
    RequestTooLarge,
    TooManyRequests,
    NoLeader,
    NotLeader,
    Stopped,
    Timeout,
    TimeoutDueToLeaderFail,
    TimeoutLeaderTransfer,
    NoSpace,
    /// The CORRUPT alarm is raised (etcd's corrupt applier).
    Corrupt,
    BadLeaderTransferee,
    MemberNotFound,
    MemberExist,
    PeerUrlExist,
    MemberBadUrls,
    MemberNotLearner,
    LearnerNotReady,
    TooManyLearners,
    Unhealthy,
    /// Not mapped by etcd 3.4's gRPC layer: clients see code Unknown.
    NotEnoughStarted,
    NotSupportedForLearner,
    // etcd's auth errors (`auth/store.go`, mapped in `v3rpc/util.go`).
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
    /// Authenticate for a user added with `no_password`: not in etcd's gRPC
    /// error map, so clients see code Unknown and the auth package's text.
    NoPasswordUser,
    /// An auth error etcd's Maintenance service returns without mapping it
    /// (Defragment, Snapshot, Hash, HashKV): code Unknown, the auth
    /// package's own text.
    AuthUnmapped(UnmappedAuth),
    /// A response over the send limit: grpc-go's error, not etcd's (etcd
    /// builds the response, and its gRPC layer refuses to send it).
    ResponseTooLarge {
        bytes: usize,
        max: usize,
    },
}

/// The auth errors Maintenance answers unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedAuth {
    UserEmpty,
    UserNotFound,
    PermissionDenied,
    InvalidAuthToken,
}

impl EtcdError {
    /// `self` as etcd's Maintenance service answers it: an auth error
    /// unmapped, any other as it is.
    pub fn unmapped(self) -> EtcdError {
        let unmapped = match self {
            EtcdError::UserEmpty => UnmappedAuth::UserEmpty,
            EtcdError::UserNotFound => UnmappedAuth::UserNotFound,
            EtcdError::PermissionDenied => UnmappedAuth::PermissionDenied,
            EtcdError::InvalidAuthToken => UnmappedAuth::InvalidAuthToken,
            other => return other,
        };
        EtcdError::AuthUnmapped(unmapped)
    }

    /// The gRPC status code etcd answers with.
    pub fn code(self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | TxnTooDeep | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist | BadLeaderTransferee | NotLeader | MemberExist | PeerUrlExist | MemberNotLearner
            | LearnerNotReady | TooManyLearners => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound
            | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | InvalidAuthMgmt | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoPasswordUser | AuthUnmapped(_) => Code::Unknown,
            Unhealthy => Code::Unavailable,
            Corrupt => Code::DataLoss,
            NotEnoughStarted => Code::Unknown,
            TooManyRequests | NoSpace | ResponseTooLarge { .. } => Code::ResourceExhausted,
            NoLeader | Stopped | Timeout | TimeoutDueToLeaderFail | TimeoutLeaderTransfer | NotSupportedForLearner => {
                Code::Unavailable
            }
        }
    }

    /// etcd's message text, including the `etcdserver: ` prefix (grpc-go's
    /// for a response too large).
    pub fn message(self) -> Cow<'static, str> {
        use EtcdError::*;
        let text = match self {
            ResponseTooLarge { bytes, max } => return Cow::Owned(response_too_large(bytes, max).message),
            EmptyKey => "etcdserver: key is not provided",
            KeyNotFound => "etcdserver: key not found",
            ValueProvided => "etcdserver: value is provided",
            LeaseProvided => "etcdserver: lease is provided",
            TooManyOps => "etcdserver: too many operations in txn request",
            TxnTooDeep => "etcdserver: too many nested txns in txn request",
            DuplicateKey => "etcdserver: duplicate key given in txn request",
            InvalidSortOption => "etcdserver: invalid sort option",
            Compacted => "etcdserver: mvcc: required revision has been compacted",
            FutureRev => "etcdserver: mvcc: required revision is a future revision",
            LeaseNotFound => "etcdserver: requested lease not found",
            LeaseExist => "etcdserver: lease already exists",
            LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            RequestTooLarge => "etcdserver: request is too large",
            TooManyRequests => "etcdserver: too many requests",
            NoLeader => "etcdserver: no leader",
            NotLeader => "etcdserver: not leader",
            Stopped => "etcdserver: server stopped",
            Timeout => "etcdserver: request timed out",
            TimeoutDueToLeaderFail => "etcdserver: request timed out, possibly due to previous leader failure",
            TimeoutLeaderTransfer => "etcdserver: request timed out, leader transfer took too long",
            NoSpace => "etcdserver: mvcc: database space exceeded",
            Corrupt => "etcdserver: corrupt cluster",
            BadLeaderTransferee => "etcdserver: bad leader transferee",
            MemberNotFound => "etcdserver: member not found",
            MemberExist => "etcdserver: member ID already exist",
            PeerUrlExist => "etcdserver: Peer URLs already exists",
            MemberBadUrls => "etcdserver: given member URLs are invalid",
            MemberNotLearner => "etcdserver: can only promote a learner member",
            LearnerNotReady => "etcdserver: can only promote a learner member which is in sync with leader",
            TooManyLearners => "etcdserver: too many learner members in cluster",
            Unhealthy => "etcdserver: unhealthy cluster",
            NotEnoughStarted => "etcdserver: re-configuration failed due to not enough started members",
            NotSupportedForLearner => "etcdserver: rpc not supported for learner",
            RootUserNotExist => "etcdserver: root user does not exist",
            RootRoleNotExist => "etcdserver: root user does not have root role",
            UserAlreadyExist => "etcdserver: user name already exists",
            UserEmpty => "etcdserver: user name is empty",
            UserNotFound => "etcdserver: user name not found",
            RoleAlreadyExist => "etcdserver: role name already exists",
            RoleNotFound => "etcdserver: role name not found",
            RoleEmpty => "etcdserver: role name is empty",
            AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            PermissionDenied => "etcdserver: permission denied",
            RoleNotGranted => "etcdserver: role is not granted to the user",
            PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthNotEnabled => "etcdserver: authentication is not enabled",
            InvalidAuthToken => "etcdserver: invalid auth token",
            InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthOldRevision => "etcdserver: revision of auth store is old",
            NoPasswordUser => "auth: authentication failed, password was given for no password user",
            AuthUnmapped(UnmappedAuth::UserEmpty) => "auth: user name is empty",
            AuthUnmapped(UnmappedAuth::UserNotFound) => "auth: user not found",
            AuthUnmapped(UnmappedAuth::PermissionDenied) => "auth: permission denied",
            AuthUnmapped(UnmappedAuth::InvalidAuthToken) => "auth: invalid auth token",
        };
        Cow::Borrowed(text)
    }
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Status {
        Status::new(error.code(), error.message())
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_carries_etcds_prefix() {
        use EtcdError::*;
        let all = [
            EmptyKey,
            KeyNotFound,
            ValueProvided,
            LeaseProvided,
            TooManyOps,
            TxnTooDeep,
            DuplicateKey,
            InvalidSortOption,
            Compacted,
            FutureRev,
            LeaseNotFound,
            LeaseExist,
            LeaseTtlTooLarge,
            RequestTooLarge,
            TooManyRequests,
            NoLeader,
            NotLeader,
            Stopped,
            Timeout,
            TimeoutDueToLeaderFail,
            TimeoutLeaderTransfer,
            NoSpace,
            Corrupt,
            BadLeaderTransferee,
            MemberNotFound,
            MemberExist,
            PeerUrlExist,
            MemberBadUrls,
            MemberNotLearner,
            LearnerNotReady,
            TooManyLearners,
            Unhealthy,
            NotEnoughStarted,
            NotSupportedForLearner,
            RootUserNotExist,
            RootRoleNotExist,
            UserAlreadyExist,
            UserEmpty,
            UserNotFound,
            RoleAlreadyExist,
            RoleNotFound,
            RoleEmpty,
            AuthFailed,
            PermissionDenied,
            RoleNotGranted,
            PermissionNotGranted,
            AuthNotEnabled,
            InvalidAuthToken,
            InvalidAuthMgmt,
            AuthOldRevision,
        ];
        for error in all {
            assert!(error.message().starts_with("etcdserver: "), "{error:?}");
        }
    }

    #[test]
    fn a_response_too_large_is_grpc_gos_resource_exhausted() {
        let error = EtcdError::ResponseTooLarge { bytes: 300, max: 200 };
        let status = Status::from(error);
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(
            status.message,
            "grpc: trying to send message larger than max (300 vs. 200)"
        );
    }

    #[test]
    fn a_corrupt_cluster_is_data_loss_as_in_etcd() {
        let status = Status::from(EtcdError::Corrupt);
        assert_eq!(status.code, Code::DataLoss);
        assert_eq!(status.message, "etcdserver: corrupt cluster");
    }

    #[test]
    fn compacted_and_future_revision_are_out_of_range() {
        // kube-apiserver turns these into 410 Gone / TooLargeResourceVersion by code + text.
        assert_eq!(EtcdError::Compacted.code(), Code::OutOfRange);
        assert_eq!(EtcdError::FutureRev.code(), Code::OutOfRange);
    }
}
