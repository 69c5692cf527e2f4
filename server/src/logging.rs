//! The process's log subscriber from the logging flags (`config::logging`):
//! text lines, or JSON lines with the keys etcd's zap logger writes (`level`,
//! `ts`, `caller`, `msg`, then the event's fields), to every output named.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::logging::{LogFormat, LogLevel, LogOutput, LogSettings};

/// An output that could not be opened, said as etcd says it.
#[derive(Debug, thiserror::Error)]
#[error("error verifying flags, open sink {path:?}: {source}")]
pub struct OpenSinkError {
    path: String,
    source: io::Error,
}

/// Installs the process's subscriber. `RUST_LOG`, when set, chooses levels
/// per module (tracing's directives) in place of `--log-level`.
pub fn init(settings: &LogSettings) -> Result<(), OpenSinkError> {
    let sinks = settings.outputs.iter().map(Sink::open).collect::<Result<Vec<_>, _>>()?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::default().add_directive(level_filter(settings.level).into()));
    // Colours only for a person watching, not in log files and pipes.
    let ansi = settings.outputs == [LogOutput::Stderr] && io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Outputs(Arc::new(sinks)))
        .with_ansi(ansi);
    match settings.format {
        LogFormat::Text => builder.init(),
        LogFormat::ZapJson => builder.event_format(ZapJson).init(),
    }
    Ok(())
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    }
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

impl Sink {
    fn open(output: &LogOutput) -> Result<Sink, OpenSinkError> {
        Ok(match output {
            LogOutput::Stderr => Sink::Stderr,
            LogOutput::Stdout => Sink::Stdout,
            LogOutput::File(path) => {
                let file = File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| OpenSinkError {
                        path: path.display().to_string(),
                        source,
                    })?;
                Sink::File(Mutex::new(file))
            }
        })
    }

    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().lock().write_all(line),
            Sink::Stdout => io::stdout().lock().write_all(line),
            Sink::File(file) => file
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .write_all(line),
        }
    }
}

/// Every output; the formatter writes each event as one buffer, so a line
/// reaches each output whole.
#[derive(Clone)]
struct Outputs(Arc<Vec<Sink>>);

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Outputs;

    fn make_writer(&'a self) -> Outputs {
        self.clone()
    }
}

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A log line that cannot be written is lost, not a reason to stop.
        for sink in self.0.iter() {
            let _ = sink.write_line(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// etcd's zap encoding: `{"level":"info","ts":"2026-12-05T04:58:52.291Z",
/// "caller":"path/file.rs:117","msg":"...", fields...}`, keys in that order.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let caller = match (metadata.file(), metadata.line()) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            _ => metadata.target().to_string(),
        };
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        write!(
            writer,
            "{{\"level\":\"{}\",\"ts\":{},\"caller\":{},\"msg\":{}",
            zap_level(metadata.level()),
            json_string(&ts),
            json_string(&caller),
            json_string(&fields.message)
        )?;
        for (name, value) in &fields.others {
            write!(writer, ",{}:{value}", json_string(name))?;
        }
        writeln!(writer, "}}")
    }
}

fn zap_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        // zap has no trace level.
        Level::DEBUG | Level::TRACE => "debug",
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// An event's message and its other fields, each as JSON text.
#[derive(Default)]
struct JsonFields {
    message: String,
    others: Vec<(String, String)>,
}

impl JsonFields {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        self.others.push((field.name().to_string(), value.to_string()));
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.push(field, value.into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` and `%display` fields arrive here already formatted.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.push(field, text.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The lines a subscriber with `ZapJson` writes for what `log` logs.
    fn zap_lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let layer = tracing_subscriber::fmt::layer()
            .event_format(ZapJson)
            .with_writer(move || Captured(Arc::clone(&sink)));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_has_zaps_keys_first_and_the_fields_after_them() {
        let lines = zap_lines(|| {
            tracing::warn!(member_id = 7u64, leader = true, name = "a \"quoted\" name", url = %"http://x", "rejected connection from {}", "1.2.3.4");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        for key in ["level", "ts", "caller", "msg", "member_id", "leader", "name", "url"] {
            assert!(keys.contains(&key), "{key} in {line}");
        }
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "rejected connection from 1.2.3.4");
        assert_eq!(line["member_id"], 7);
        assert_eq!(line["leader"], true);
        assert_eq!(line["name"], "a \"quoted\" name");
        assert_eq!(line["url"], "http://x");
        assert!(line["caller"].as_str().unwrap().contains("logging.rs:"), "{line}");
        let ts = line["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-12-05T04:58:52.291Z".len(),
            "{ts}"
        );
    }

    #[test]
    fn written_lines_start_with_level_then_ts_caller_and_msg() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let layer = tracing_subscriber::fmt::layer()
            .event_format(ZapJson)
            .with_writer(move || Captured(Arc::clone(&sink)));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(x = 1, "hello");
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("{\"level\":\"info\",\"ts\":\""), "{text}");
        let after_ts = &text[text.find("\"caller\"").unwrap()..];
        assert!(after_ts.contains("\"msg\":\"hello\",\"x\":1}"), "{text}");
    }
}
