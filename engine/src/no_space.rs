//! Telling a full file system apart from other I/O errors: the one failure of
//! an allocation (a WAL segment prepared, the page file grown) that the server
//! survives, because nothing it counts on was written.

use std::io;

/// True for ENOSPC and EDQUOT: no room left (the file system or a quota).
/// Judged by kind, not errno: glommio keeps the kind of the errors it wraps.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_no_space_and_eio_is_not() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
        let wrapped = io::Error::new(io::Error::from_raw_os_error(libc::ENOSPC).kind(), "fallocate");
        assert!(is_no_space(&wrapped), "a wrapped error keeps its kind");
    }
}
