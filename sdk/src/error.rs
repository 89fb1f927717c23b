//! The SDK's one error type.
//!
//! Every variant names the cause and, where there is one, the fix: these messages reach users
//! of the CLI unchanged. Failures that happen inside the runtime process travel to the SDK as a
//! [`crate::report::Failure`] and become the matching variant here.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong creating or driving a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image store or an image failed (pull, resolve, unpack).
    #[error("image: {0}")]
    Image(#[source] msbvm_image::Error),
    /// The sandbox name does not follow the naming rule.
    #[error("invalid sandbox name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A live sandbox already has this name.
    #[error("a sandbox named {name:?} is already running; pick another name or stop it with `msbvm stop {name}`")]
    NameInUse {
        /// The name.
        name: String,
    },
    /// No sandbox of this name exists.
    #[error("no sandbox named {name:?}; `msbvm ls` lists the sandboxes")]
    NotFound {
        /// The name.
        name: String,
    },
    /// No snapshot of this name exists.
    #[error("no snapshot named {name:?}; `msbvm snapshot ls` lists the snapshots")]
    SnapshotNotFound {
        /// The name.
        name: String,
    },
    /// The sandbox exists but is not running (it stopped or its runtime died).
    #[error("sandbox {name:?} is not running (status: {status}); see `msbvm logs {name}`, remove it with `msbvm rm {name}`")]
    NotRunning {
        /// The name.
        name: String,
        /// Its recorded status.
        status: String,
    },
    /// A resource request is out of range.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// This host cannot run VMs for this user (no /dev/kvm, no permission).
    #[error("{0}")]
    NoKvm(String),
    /// The guest kernel is missing and cannot be built.
    #[error("the guest kernel is unavailable: {0}")]
    Kernel(String),
    /// The guest agent binary was not found.
    #[error("{0}")]
    AgentMissing(String),
    /// The busybox binary for the guest was not found or is unusable.
    #[error("{0}")]
    BusyboxMissing(String),
    /// The `msbvm` binary that runs sandboxes was not found.
    #[error("cannot find the `msbvm` binary that runs sandboxes ({0}); set MSBVM_BIN to its path")]
    RuntimeMissing(String),
    /// The guest stopped before its agent reported ready.
    #[error("the sandbox's guest died during boot: {reason}{}", console_section(.console_tail))]
    GuestDied {
        /// How the VM ended.
        reason: String,
        /// The last lines of the guest console.
        console_tail: String,
    },
    /// The VM could not be started.
    #[error("cannot start the sandbox's VM: {0}")]
    Vm(String),
    /// The guest agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {theirs}, this msbvm speaks {ours}: use an msbvm-agent built from the same msbvm version")]
    ProtocolMismatch {
        /// The SDK's version.
        ours: u32,
        /// The agent's (or runtime's) version.
        theirs: u32,
    },
    /// The peer sent something that does not follow the protocol.
    #[error("protocol error talking to {peer}: {detail}")]
    Protocol {
        /// Who: "the guest agent", "the sandbox runtime", "the vsock device".
        peer: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The guest agent refused a request.
    #[error("the guest agent refused the request: {0}")]
    Agent(String),
    /// A plugin of the sandbox refused the request (a command it does not allow); the
    /// request never reached the guest.
    #[error("denied by a plugin: {0}")]
    Denied(String),
    /// A file operation in the guest failed; [`Error::file_error_kind`] says how.
    #[error("in the sandbox: {0}")]
    GuestFile(msbvm_protocol::files::FileError),
    /// The guest agent did not answer within an [`crate::AgentLimits`] timeout.
    #[error("the guest agent did not answer in time: waiting for {waiting_for}, {limit} passed (see AgentLimits)")]
    AgentTimeout {
        /// What the SDK was waiting for.
        waiting_for: String,
        /// Which bound passed: the reply timeout or the operation's deadline.
        limit: &'static str,
    },
    /// The guest sent more than an [`crate::AgentLimits`] bound allows.
    #[error("the sandbox sent too much: {what} (the limit is {limit}; raise AgentLimits::{setting} to allow more)")]
    LimitExceeded {
        /// What was too large.
        what: String,
        /// The limit.
        limit: u64,
        /// The [`crate::AgentLimits`] field that sets it.
        setting: &'static str,
    },
    /// The connection to the guest ended before the process's exit was reported.
    #[error(
        "the connection to the sandbox ended before the process exited (the sandbox stopped?)"
    )]
    ConnectionLost,
    /// The agent did not report ready in time.
    #[error("the sandbox did not become ready within {}s{}{}", .after.as_secs_f64(), console_section(.console_tail), stuck_section(.where_it_was))]
    ReadyTimeout {
        /// How long the SDK waited.
        after: Duration,
        /// The last lines of the guest console.
        console_tail: String,
        /// What the runtime found when it stopped the guest: where each vCPU
        /// was and the end of the guest kernel's log (empty if it said nothing).
        where_it_was: String,
    },
    /// The runtime process ended or failed without a more specific reason.
    #[error("the sandbox runtime failed: {message}{}", log_section(.log_tail))]
    Runtime {
        /// What happened.
        message: String,
        /// The last lines of the runtime log.
        log_tail: String,
    },
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox state directory holds something unreadable.
    #[error("corrupt sandbox state at {}: {source}; remove the directory", .path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A peer-sandbox call from inside a sandbox ([`crate::peer`]) cannot be made here.
    #[error("not running inside an msbvm sandbox ({0})")]
    NotInSandbox(String),
    /// The host's spawn service refused or failed a request ([`crate::peer`]).
    #[error("{0}")]
    Spawn(String),
}

fn console_section(tail: &str) -> String {
    if tail.trim().is_empty() {
        "\n(the guest console was empty)".into()
    } else {
        format!("\nlast lines of the guest console:\n{}", indent(tail))
    }
}

fn stuck_section(where_it_was: &str) -> String {
    if where_it_was.trim().is_empty() {
        String::new()
    } else {
        format!(
            "\nwhere the guest was when it was stopped:\n{}",
            indent(where_it_was)
        )
    }
}

fn log_section(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nlast lines of the runtime log:\n{}", indent(tail))
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every [`Error::kind`], in variant order.
pub const ERROR_KINDS: &[&str] = &[
    "Image",
    "InvalidName",
    "NameInUse",
    "NotFound",
    "SnapshotNotFound",
    "NotRunning",
    "InvalidConfig",
    "NoKvm",
    "Kernel",
    "AgentMissing",
    "BusyboxMissing",
    "RuntimeMissing",
    "GuestDied",
    "Vm",
    "ProtocolMismatch",
    "Protocol",
    "Agent",
    "Denied",
    "GuestFile",
    "AgentTimeout",
    "LimitExceeded",
    "ConnectionLost",
    "ReadyTimeout",
    "RuntimeFailed",
    "HostIo",
    "CorruptState",
    "NotInSandbox",
    "Spawn",
];

impl Error {
    /// The error's kind as one stable word, for the SDKs of other languages (each maps it to
    /// an exception class, `NotFound` to `NotFoundError`): the variant's name, except
    /// `RuntimeFailed` for [`Error::Runtime`] and `HostIo` for [`Error::Io`] (names those
    /// languages give to their own errors). One of [`ERROR_KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Image(_) => "Image",
            Error::InvalidName { .. } => "InvalidName",
            Error::NameInUse { .. } => "NameInUse",
            Error::NotFound { .. } => "NotFound",
            Error::SnapshotNotFound { .. } => "SnapshotNotFound",
            Error::NotRunning { .. } => "NotRunning",
            Error::InvalidConfig(_) => "InvalidConfig",
            Error::NoKvm(_) => "NoKvm",
            Error::Kernel(_) => "Kernel",
            Error::AgentMissing(_) => "AgentMissing",
            Error::BusyboxMissing(_) => "BusyboxMissing",
            Error::RuntimeMissing(_) => "RuntimeMissing",
            Error::GuestDied { .. } => "GuestDied",
            Error::Vm(_) => "Vm",
            Error::ProtocolMismatch { .. } => "ProtocolMismatch",
            Error::Protocol { .. } => "Protocol",
            Error::Agent(_) => "Agent",
            Error::Denied(_) => "Denied",
            Error::GuestFile(_) => "GuestFile",
            Error::AgentTimeout { .. } => "AgentTimeout",
            Error::LimitExceeded { .. } => "LimitExceeded",
            Error::ConnectionLost => "ConnectionLost",
            Error::ReadyTimeout { .. } => "ReadyTimeout",
            Error::Runtime { .. } => "RuntimeFailed",
            Error::Io { .. } => "HostIo",
            Error::CorruptState { .. } => "CorruptState",
            Error::NotInSandbox(_) => "NotInSandbox",
            Error::Spawn(_) => "Spawn",
        }
    }

    /// The fields a caller may act on, as (name, text): `name` of a sandbox or snapshot,
    /// `status`, `console_tail`, `where_it_was`, `log_tail`, and a guest file error's `kind`
    /// in snake case ("not_found").
    pub fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::InvalidName { name, .. }
            | Error::NameInUse { name }
            | Error::NotFound { name }
            | Error::SnapshotNotFound { name } => vec![("name", name.clone())],
            Error::NotRunning { name, status } => {
                vec![("name", name.clone()), ("status", status.clone())]
            }
            Error::GuestDied { console_tail, .. } => vec![("console_tail", console_tail.clone())],
            Error::ReadyTimeout {
                console_tail,
                where_it_was,
                ..
            } => vec![
                ("console_tail", console_tail.clone()),
                ("where_it_was", where_it_was.clone()),
            ],
            Error::GuestFile(f) => vec![("kind", f.kind.snake_case().to_string())],
            Error::Runtime { log_tail, .. } => vec![("log_tail", log_tail.clone())],
            _ => Vec::new(),
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant, in declaration order.
    fn one_of_each() -> Vec<Error> {
        let s = || "x".to_string();
        vec![
            Error::Image(msbvm_image::Error::InvalidImage(s())),
            Error::InvalidName {
                name: s(),
                reason: s(),
            },
            Error::NameInUse { name: s() },
            Error::NotFound { name: s() },
            Error::SnapshotNotFound { name: s() },
            Error::NotRunning {
                name: s(),
                status: s(),
            },
            Error::InvalidConfig(s()),
            Error::NoKvm(s()),
            Error::Kernel(s()),
            Error::AgentMissing(s()),
            Error::BusyboxMissing(s()),
            Error::RuntimeMissing(s()),
            Error::GuestDied {
                reason: s(),
                console_tail: s(),
            },
            Error::Vm(s()),
            Error::ProtocolMismatch { ours: 1, theirs: 2 },
            Error::Protocol {
                peer: "agent",
                detail: s(),
            },
            Error::Agent(s()),
            Error::Denied(s()),
            Error::GuestFile(msbvm_protocol::files::FileError {
                kind: msbvm_protocol::files::FileErrorKind::NotFound,
                message: s(),
                errno: None,
            }),
            Error::AgentTimeout {
                waiting_for: s(),
                limit: "1s",
            },
            Error::LimitExceeded {
                what: s(),
                limit: 1,
                setting: "x",
            },
            Error::ConnectionLost,
            Error::ReadyTimeout {
                after: Duration::ZERO,
                console_tail: s(),
                where_it_was: s(),
            },
            Error::Runtime {
                message: s(),
                log_tail: s(),
            },
            Error::Io {
                context: s(),
                source: std::io::Error::other("x"),
            },
            Error::CorruptState {
                path: PathBuf::from("/x"),
                source: serde_json::from_str::<u8>("?").unwrap_err(),
            },
            Error::NotInSandbox(s()),
            Error::Spawn(s()),
        ]
    }

    #[test]
    fn every_variant_has_its_own_kind_and_the_list_names_them_all() {
        let kinds: Vec<&str> = one_of_each().iter().map(Error::kind).collect();
        assert_eq!(kinds, ERROR_KINDS);
        let distinct: std::collections::HashSet<_> = kinds.iter().collect();
        assert_eq!(distinct.len(), kinds.len());
        let file = &one_of_each()[18];
        assert_eq!(file.details(), vec![("kind", "not_found".to_string())]);
    }

    #[test]
    fn guest_died_shows_console_tail_indented() {
        let e = Error::GuestDied {
            reason: "the guest kernel panicked".into(),
            console_tail: "Kernel panic - not syncing\nend".into(),
        };
        let text = e.to_string();
        assert!(text.contains("panicked"), "{text}");
        assert!(
            text.contains("\n    Kernel panic - not syncing\n    end"),
            "{text}"
        );
    }

    #[test]
    fn empty_console_is_said() {
        let e = Error::ReadyTimeout {
            after: Duration::from_secs(3),
            console_tail: String::new(),
            where_it_was: String::new(),
        };
        assert!(e.to_string().contains("console was empty"), "{e}");
        assert!(!e.to_string().contains("where the guest was"), "{e}");
        let e = Error::ReadyTimeout {
            after: Duration::from_secs(3),
            console_tail: String::new(),
            where_it_was: "vCPU 0 (runnable) at RIP 0x1".into(),
        };
        assert!(
            e.to_string().ends_with(
                "where the guest was when it was stopped:\n    vCPU 0 (runnable) at RIP 0x1"
            ),
            "{e}"
        );
    }
}
