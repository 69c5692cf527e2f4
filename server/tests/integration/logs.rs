//! etcd's logging flags: `--logger zap` writes JSON lines with etcd's keys
//! (level, ts, caller, msg first) to every `--log-outputs` output, and a level
//! or logger etcd does not know stops the start with a message naming it.

use std::time::{Duration, Instant};

use crate::support::{Ringkv, START_TIMEOUT};

#[test]
fn zap_json_lines_go_to_every_output_and_unknown_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ringkv.log");
    let args = [
        "--logger=zap".to_string(),
        format!("--log-outputs=stderr,{}", file.display()),
        "--log-level=info".to_string(),
    ];
    let ringkv = Ringkv::spawn(&dir.path().join("data"), &args).ready();
    // The ready line reached stderr; each line goes to the file after it.
    let deadline = Instant::now() + START_TIMEOUT;
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("serving client requests on")
    {
        assert!(Instant::now() < deadline, "the ready line never reached the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ringkv);
    let written = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    for line in &lines {
        assert!(line.starts_with("{\"level\":\""), "{line}");
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        for key in ["level", "ts", "caller", "msg"] {
            assert!(keys.iter().any(|k| *k == key), "{key} in {line}");
        }
        assert_ne!(value["level"], "debug", "--log-level=info: {line}");
    }

    for (args, said) in [
        (["--log-level=verbose"], "unknown level \"verbose\""),
        (["--logger=glog"], "unknown logger option \"glog\""),
    ] {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let (status, log) = Ringkv::spawn(&dir.path().join("refused"), &args).failed(START_TIMEOUT);
        assert!(!status.success());
        assert!(log.contains(said), "{args:?}: {log}");
    }
}
