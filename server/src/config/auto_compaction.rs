//! `--auto-compaction-mode` and `--auto-compaction-retention` as etcd reads
//! them: the policy the store core's compactor (`store::auto_compaction`)
//! follows.

use std::time::Duration;

/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// The validated policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompactionPolicy {
    Off,
    /// Keep about this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

impl AutoCompactionPolicy {
    /// Parses `--auto-compaction-retention` for `mode` as etcd does: periodic takes
    /// a duration (`30m`, `1h`) or a whole number of hours; revision a count.
    pub fn parse(mode: AutoCompactionMode, retention: &str) -> Result<AutoCompactionPolicy, String> {
        let retention = retention.trim();
        match mode {
            AutoCompactionMode::Periodic => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => humantime::parse_duration(retention)
                        .map_err(|error| format!("invalid periodic retention {retention:?}: {error}"))?,
                };
                Ok(if period.is_zero() {
                    AutoCompactionPolicy::Off
                } else {
                    AutoCompactionPolicy::Periodic(period)
                })
            }
            AutoCompactionMode::Revision => {
                let revisions = retention
                    .parse::<i64>()
                    .ok()
                    .filter(|&revisions| revisions >= 0)
                    .ok_or_else(|| format!("invalid revision retention {retention:?}: not a revision count"))?;
                Ok(if revisions == 0 {
                    AutoCompactionPolicy::Off
                } else {
                    AutoCompactionPolicy::Revision(revisions)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn retention_parses_as_etcd_does() {
        let parse = AutoCompactionPolicy::parse;
        assert_eq!(parse(AutoCompactionMode::Periodic, "0"), Ok(AutoCompactionPolicy::Off));
        assert_eq!(
            parse(AutoCompactionMode::Periodic, "1"),
            Ok(AutoCompactionPolicy::Periodic(seconds(3600)))
        );
        assert_eq!(
            parse(AutoCompactionMode::Periodic, "30m"),
            Ok(AutoCompactionPolicy::Periodic(seconds(1800)))
        );
        assert_eq!(
            parse(AutoCompactionMode::Revision, "1000"),
            Ok(AutoCompactionPolicy::Revision(1000))
        );
        assert_eq!(parse(AutoCompactionMode::Revision, "0"), Ok(AutoCompactionPolicy::Off));
        assert!(parse(AutoCompactionMode::Revision, "1h").is_err());
        assert!(parse(AutoCompactionMode::Revision, "-5").is_err());
        assert!(parse(AutoCompactionMode::Periodic, "soon").is_err());
    }
}
