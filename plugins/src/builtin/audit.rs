//! `audit`: a JSON line per command (before it starts and when it ends), per change to a file
//! (write, create, rename, remove, ...), per lifecycle step, per closed flow with its bytes,
//! per DNS answer, per inspected HTTP request (method, host, path and header *names*: values
//! carry credentials) and per event, appended to a file.
//!
//! Configuration: `path=FILE` (default `audit.jsonl` in the sandbox's state directory). Put it
//! last to record what the plugins before it made of each command.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::{now_ms, Context};
use crate::data::{
    DnsAnswer, Event, Exec, ExecEnded, FlowBytes, FsAccess, HttpRequest, Lifecycle, SandboxInfo,
};
use crate::hook::{Hook, Interests};
use crate::plugin::{Decision, FailurePolicy, Plugin};

/// `audit`'s settings: `path=FILE`.
pub type Config = super::OutputPath;

/// The `audit` plugin.
pub struct Audit {
    sandbox: String,
    out: Mutex<BufWriter<File>>,
}

impl Audit {
    /// Opens (appends to) the file.
    pub fn open(config: Config, cx: &Context) -> Result<Audit, String> {
        let path = config.path.unwrap_or_else(|| cx.dir.join("audit.jsonl"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("audit: cannot open {}: {e}", path.display()))?;
        Ok(Audit {
            sandbox: cx.sandbox.clone(),
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    fn record(&self, kind: &str, data: Value) {
        let line = json!({"ts_ms": now_ms(), "sandbox": self.sandbox, "kind": kind, "data": data});
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A full disk must not fail the sandbox's commands: the record is lost, and said so.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            tracing::warn!("audit: cannot write a record");
        }
    }
}

impl Plugin for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    fn interests(&self) -> Interests {
        [
            Hook::Lifecycle,
            Hook::ExecBefore,
            Hook::ExecAfter,
            Hook::FsChange,
            Hook::Bytes,
            Hook::DnsAnswer,
            Hook::Http,
            Hook::Event,
        ]
        .into_iter()
        .collect()
    }

    /// A recorder never blocks what it records.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::Open
    }

    fn lifecycle(&self, _sandbox: &SandboxInfo, step: &Lifecycle) {
        self.record("lifecycle", json!(step));
    }

    fn before_exec(&self, exec: &mut Exec) -> Decision {
        self.record(
            "exec",
            json!({"argv": exec.argv, "cwd": exec.cwd, "uid": exec.uid,
                   "env": exec.env.iter().map(|(k, _)| k).collect::<Vec<_>>()}),
        );
        Decision::Continue
    }

    fn exec_ended(&self, ended: &ExecEnded) {
        self.record("exec_end", json!(ended));
    }

    fn fs_change(&self, change: &FsAccess) {
        self.record("file", json!(change));
    }

    fn flow_bytes(&self, bytes: &FlowBytes) {
        self.record("flow", json!(bytes));
    }

    fn dns_answer(&self, answer: &DnsAnswer) {
        self.record("dns", json!(answer));
    }

    fn http_request(&self, request: &mut HttpRequest) -> Decision {
        self.record(
            "http",
            json!({"method": request.method, "host": request.host, "path": request.path,
                   "headers": request.headers.iter().map(|(k, _)| k).collect::<Vec<_>>()}),
        );
        Decision::Continue
    }

    fn event(&self, event: &Event) {
        self.record(
            "event",
            json!({"direction": event.direction, "topic": event.topic}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_with_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let cx = Context {
            sandbox: "sb".into(),
            dir: dir.path().into(),
        };
        let audit = Audit::open(Config::parse_for("audit", None).unwrap(), &cx).unwrap();
        let mut exec = Exec {
            argv: vec!["ls".into()],
            env: vec![("SECRET".into(), "value".into())],
            ..Exec::default()
        };
        assert_eq!(audit.before_exec(&mut exec), Decision::Continue);
        audit.lifecycle(&SandboxInfo::default(), &Lifecycle::Started);
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "exec");
        assert_eq!(lines[0]["data"]["argv"][0], "ls");
        assert_eq!(lines[0]["data"]["env"][0], "SECRET");
        assert!(
            !text.contains("value"),
            "environment values are not recorded"
        );
        assert_eq!(lines[1]["data"]["step"], "started");
        assert!(Config::parse_for("audit", Some("path=")).is_err());
        assert!(Config::parse_for("audit", Some("file=x")).is_err());
    }
}
