//! Versions ringkv reports.

/// The etcd server version ringkv speaks for (API and behaviour), reported where
/// etcd reports its own version. kube-apiserver parses it as semver and enables
/// RequestWatchProgress only from 3.5.13 on.
pub const ETCD_COMPATIBLE_VERSION: &str = "3.5.16";

/// ringkv's own version (the crate version), in `/version`, `/metrics` and the log.
pub const RINGKV_VERSION: &str = env!("CARGO_PKG_VERSION");

/// etcd's cluster version: major.minor.0 of the server version.
pub fn cluster_version() -> String {
    let mut parts = ETCD_COMPATIBLE_VERSION.split('.');
    let major = parts.next().expect("semver has a major part");
    let minor = parts.next().expect("semver has a minor part");
    format!("{major}.{minor}.0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_version_is_major_minor_zero() {
        assert_eq!(super::cluster_version(), "3.5.0");
    }
}
