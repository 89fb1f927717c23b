//! What the runtime tells its creator on the readiness pipe: one JSON object per line,
//! progress first ([`Report::BuildingKernel`], [`Report::Booting`]), then exactly one of
//! [`Report::Ready`] or [`Report::Failed`], after which the runtime closes the pipe.
//!
//! Errors cross the process boundary as a [`Failure`] (kind + message + console tail) and
//! become the same [`Error`] variant on the SDK side.

use msbvm_protocol::BootTimes;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What starts each runtime-log line that says where a guest stopped before it was ready
/// had got to (its vCPUs, its kernel log); the SDK quotes from the first such line on when
/// it reports a ready timeout.
pub const STOPPED_BEFORE_READY: &str = "stopped before ready";

/// One line on the readiness pipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The guest kernel is not built yet; building it (minutes).
    BuildingKernel,
    /// The VM is starting; the boot timeout runs from here.
    Booting,
    /// The agent reported ready.
    Ready(ReadyInfo),
    /// The sandbox could not be started.
    Failed(Failure),
}

impl Report {
    /// The report as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"failed","kind":"other","message":"unencodable report: {e}"}}"#)
        });
        line.push('\n');
        line
    }

    /// Parses one line.
    pub fn from_line(line: &str) -> Result<Report, BadReport> {
        serde_json::from_str(line.trim()).map_err(|source| BadReport {
            line: line.to_string(),
            source,
        })
    }
}

/// A readiness-pipe line that is not a [`Report`].
#[derive(Debug, thiserror::Error)]
#[error("{source} in {line:?}")]
pub struct BadReport {
    /// The line.
    pub line: String,
    /// Why it does not parse.
    #[source]
    pub source: serde_json::Error,
}

/// What the runtime knows when its sandbox becomes ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// The runtime's pid.
    pub pid: u32,
    /// The guest agent's boot timestamps.
    pub boot: BootTimes,
    /// Milliseconds from the runtime's start to the agent's ready message.
    pub ready_after_ms: f64,
    /// Milliseconds from the runtime's start to the VM starting to boot.
    pub vm_start_ms: f64,
}

/// Kinds of failure that map to distinct [`Error`] variants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// See [`Error::InvalidName`].
    InvalidName,
    /// See [`Error::NameInUse`].
    NameInUse,
    /// See [`Error::NoKvm`].
    NoKvm,
    /// See [`Error::Kernel`].
    Kernel,
    /// See [`Error::AgentMissing`].
    AgentMissing,
    /// See [`Error::BusyboxMissing`].
    BusyboxMissing,
    /// See [`Error::GuestDied`].
    GuestDied,
    /// See [`Error::ProtocolMismatch`].
    ProtocolMismatch {
        /// Host side.
        ours: u32,
        /// Agent side.
        theirs: u32,
    },
    /// See [`Error::Vm`].
    Vm,
    /// Anything else; becomes [`Error::Runtime`].
    Other,
}

/// A failure reported by the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Which kind.
    pub kind: FailureKind,
    /// The error message (for `GuestDied`: how the VM ended).
    pub message: String,
    /// The last lines of the guest console, where relevant.
    #[serde(default)]
    pub console_tail: String,
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Failure {
        let (kind, message, console_tail) = match e {
            Error::InvalidName { reason, .. } => (FailureKind::InvalidName, reason.clone(), ""),
            Error::NameInUse { .. } => (FailureKind::NameInUse, String::new(), ""),
            Error::NoKvm(m) => (FailureKind::NoKvm, m.clone(), ""),
            Error::Kernel(m) => (FailureKind::Kernel, m.clone(), ""),
            Error::AgentMissing(m) => (FailureKind::AgentMissing, m.clone(), ""),
            Error::BusyboxMissing(m) => (FailureKind::BusyboxMissing, m.clone(), ""),
            Error::GuestDied {
                reason,
                console_tail,
            } => (
                FailureKind::GuestDied,
                reason.clone(),
                console_tail.as_str(),
            ),
            Error::ProtocolMismatch { ours, theirs } => (
                FailureKind::ProtocolMismatch {
                    ours: *ours,
                    theirs: *theirs,
                },
                e.to_string(),
                "",
            ),
            Error::Vm(m) => (FailureKind::Vm, m.clone(), ""),
            // Its message alone: `into_error` wraps it in the same variant again.
            Error::Runtime { message, .. } => (FailureKind::Other, message.clone(), ""),
            other => (FailureKind::Other, other.to_string(), ""),
        };
        Failure {
            kind,
            message,
            console_tail: console_tail.to_string(),
        }
    }
}

impl Failure {
    /// The SDK error for this failure of sandbox `name`; `log_tail` is the runtime log's end,
    /// shown for failures without a more specific cause.
    pub fn into_error(self, name: &str, log_tail: String) -> Error {
        match self.kind {
            FailureKind::InvalidName => Error::InvalidName {
                name: name.to_string(),
                reason: self.message,
            },
            FailureKind::NameInUse => Error::NameInUse {
                name: name.to_string(),
            },
            FailureKind::NoKvm => Error::NoKvm(self.message),
            FailureKind::Kernel => Error::Kernel(self.message),
            FailureKind::AgentMissing => Error::AgentMissing(self.message),
            FailureKind::BusyboxMissing => Error::BusyboxMissing(self.message),
            FailureKind::GuestDied => Error::GuestDied {
                reason: self.message,
                console_tail: self.console_tail,
            },
            FailureKind::ProtocolMismatch { ours, theirs } => {
                Error::ProtocolMismatch { ours, theirs }
            }
            FailureKind::Vm => Error::Vm(self.message),
            FailureKind::Other => Error::Runtime {
                message: self.message,
                log_tail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_single_json_lines() {
        let ready = Report::Ready(ReadyInfo {
            pid: 3,
            boot: BootTimes {
                agent_start_ns: 1,
                ready_ns: 2,
                ..Default::default()
            },
            ready_after_ms: 80.5,
            vm_start_ms: 4.0,
        });
        for r in [Report::BuildingKernel, Report::Booting, ready] {
            let line = r.to_line();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line}"
            );
            assert_eq!(Report::from_line(&line).unwrap(), r);
        }
        assert!(Report::BuildingKernel
            .to_line()
            .contains(r#""type":"building_kernel""#));
        assert!(Report::from_line("garbage").is_err());
    }

    #[test]
    fn errors_survive_the_trip() {
        let cases = [
            Error::NoKvm("no /dev/kvm".into()),
            Error::GuestDied {
                reason: "panic".into(),
                console_tail: "Kernel panic".into(),
            },
            Error::ProtocolMismatch { ours: 1, theirs: 2 },
            Error::NameInUse { name: "x".into() },
            Error::AgentMissing("no agent".into()),
        ];
        for e in cases {
            let f = Failure::from(&e);
            let line = Report::Failed(f).to_line();
            let Report::Failed(back) = Report::from_line(&line).unwrap() else {
                panic!("{line}")
            };
            assert_eq!(
                back.into_error("x", String::new()).to_string(),
                e.to_string()
            );
        }
    }

    #[test]
    fn runtime_errors_are_not_wrapped_twice() {
        let e = Error::Runtime {
            message: "stopped early".into(),
            log_tail: String::new(),
        };
        let back = Failure::from(&e).into_error("x", String::new());
        assert_eq!(back.to_string(), e.to_string());
    }

    #[test]
    fn other_errors_keep_their_message_and_log() {
        let e = Error::ConnectionLost;
        let back = Failure::from(&e).into_error("x", "log line".into());
        let text = back.to_string();
        assert!(
            text.contains("connection") && text.contains("log line"),
            "{text}"
        );
    }
}
