//! etcd's logging flags, read and checked before anything logs: `--logger`
//! (zap: JSON lines; capnslog: text), `--log-outputs` and `--log-level`.

use std::path::PathBuf;

/// How a log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event (`--logger capnslog`, etcd 3.4's default).
    Text,
    /// One JSON object per line, keys as etcd's zap logger writes them.
    ZapJson,
}

/// Where log lines go; each line goes to every output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

/// How much is logged: etcd's level names, the least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// The logging flags, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    pub outputs: Vec<LogOutput>,
    pub level: LogLevel,
}

/// A logging flag ringkv cannot follow, said at start as etcd says it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogFlagError {
    #[error("error verifying flags, unknown logger option {0:?}")]
    Logger(String),
    #[error(
        "error verifying flags, unknown level {0:?} for --log-level (debug, info, warn, error, dpanic, panic or fatal)"
    )]
    Level(String),
    #[error("error verifying flags, --log-outputs names no output")]
    NoOutput,
}

impl LogSettings {
    /// Reads `--logger`, `--log-outputs` and `--log-level` as etcd does.
    pub fn parse(logger: &str, outputs: &[String], level: &str) -> Result<LogSettings, LogFlagError> {
        let format = match logger {
            "zap" => LogFormat::ZapJson,
            "capnslog" => LogFormat::Text,
            other => return Err(LogFlagError::Logger(other.to_string())),
        };
        // zap's level names; dpanic, panic and fatal make zap stop the
        // process after logging, which a server must not do for a log line:
        // here they log errors only.
        let level = match level {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" | "dpanic" | "panic" | "fatal" => LogLevel::Error,
            other => return Err(LogFlagError::Level(other.to_string())),
        };
        let mut parsed = Vec::new();
        for output in outputs
            .iter()
            .map(|output| output.trim())
            .filter(|output| !output.is_empty())
        {
            let output = match output {
                // Under systemd etcd's "default" is the journal, which reads
                // stderr from a service anyway.
                "default" | "stderr" => LogOutput::Stderr,
                "stdout" => LogOutput::Stdout,
                path => LogOutput::File(PathBuf::from(path)),
            };
            if !parsed.contains(&output) {
                parsed.push(output);
            }
        }
        if parsed.is_empty() {
            return Err(LogFlagError::NoOutput);
        }
        Ok(LogSettings {
            format,
            outputs: parsed,
            level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(list: &[&str]) -> Vec<String> {
        list.iter().map(|output| output.to_string()).collect()
    }

    #[test]
    fn etcds_names_are_read_and_the_defaults_are_text_on_stderr_at_info() {
        let defaults = LogSettings::parse("capnslog", &outputs(&["default"]), "info").unwrap();
        assert_eq!(
            defaults,
            LogSettings {
                format: LogFormat::Text,
                outputs: vec![LogOutput::Stderr],
                level: LogLevel::Info,
            }
        );
        let zap = LogSettings::parse(
            "zap",
            &outputs(&["stdout", "/var/log/etcd.log", "stderr", "default"]),
            "panic",
        )
        .unwrap();
        assert_eq!(zap.format, LogFormat::ZapJson);
        assert_eq!(
            zap.outputs,
            vec![
                LogOutput::Stdout,
                LogOutput::File("/var/log/etcd.log".into()),
                LogOutput::Stderr
            ]
        );
        assert_eq!(zap.level, LogLevel::Error);
    }

    #[test]
    fn unknown_names_are_errors_that_name_them() {
        assert_eq!(
            LogSettings::parse("bogus", &outputs(&["default"]), "info"),
            Err(LogFlagError::Logger("bogus".into()))
        );
        let level = LogSettings::parse("zap", &outputs(&["default"]), "verbose").unwrap_err();
        assert!(level.to_string().contains("unknown level \"verbose\""), "{level}");
        assert_eq!(
            LogSettings::parse("zap", &outputs(&[" ", ""]), "info"),
            Err(LogFlagError::NoOutput)
        );
    }
}
