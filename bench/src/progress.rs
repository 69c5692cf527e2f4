//! The live progress line on stderr (stdout carries only the report).
//!
//! On a terminal one line is redrawn in place every second; otherwise (a pipe, a
//! CI log) a plain line is printed every few seconds so logs stay short.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redraw period on a terminal.
pub const TERMINAL_PERIOD: Duration = Duration::from_secs(1);
/// Period of plain lines when stderr is not a terminal.
pub const LINES_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Redraw one line with a carriage return.
    Terminal,
    /// Print plain lines.
    Lines,
    /// Print nothing (`--quiet`).
    Off,
}

impl ProgressMode {
    pub fn detect(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Lines
        }
    }

    /// A one-off status message (starting a server, populating keys).
    pub fn note(self, message: &str) {
        if self != ProgressMode::Off {
            eprintln!("{message}");
        }
    }
}

/// Completed requests so far, updated by every request loop.
#[derive(Debug, Default)]
pub struct Counters {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// `put  12s  123,456 ops  10,234 ops/s  0 errors`
pub fn line(label: &str, elapsed: Duration, ops: u64, errors: u64, recent_per_sec: f64) -> String {
    format!(
        "{label}  {}s  {} ops  {} ops/s  {} errors",
        elapsed.as_secs(),
        crate::report::fmt_count(ops),
        crate::report::fmt_rate(recent_per_sec),
        crate::report::fmt_count(errors)
    )
}

/// The running progress printer; [`Progress::finish`] stops it.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    mode: ProgressMode,
}

impl Progress {
    pub fn start(label: String, counters: Arc<Counters>, mode: ProgressMode) -> Progress {
        let period = match mode {
            ProgressMode::Off => return Progress { task: None, mode },
            ProgressMode::Terminal => TERMINAL_PERIOD,
            ProgressMode::Lines => LINES_PERIOD,
        };
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let mut last_ops = 0;
            loop {
                ticker.tick().await;
                let ops = counters.ops.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                let recent = (ops - last_ops) as f64 / period.as_secs_f64();
                last_ops = ops;
                let text = line(&label, start.elapsed(), ops, errors, recent);
                let mut stderr = std::io::stderr().lock();
                let _ = match mode {
                    ProgressMode::Terminal => write!(stderr, "\r\x1b[2K{text}"),
                    _ => writeln!(stderr, "{text}"),
                };
                let _ = stderr.flush();
            }
        });
        Progress { task: Some(task), mode }
    }

    /// Stops printing and clears the terminal line.
    pub fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if self.mode == ProgressMode::Terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_elapsed_ops_rate_and_errors() {
        assert_eq!(
            line("put", Duration::from_millis(12_400), 123_456, 0, 10_234.4),
            "put  12s  123,456 ops  10,234 ops/s  0 errors"
        );
    }

    #[test]
    fn quiet_turns_progress_off() {
        assert_eq!(ProgressMode::detect(true), ProgressMode::Off);
    }
}
