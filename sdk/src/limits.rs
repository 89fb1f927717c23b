//! How much the SDK reads from the guest agent, and how long it waits for it.
//!
//! The agent runs inside the sandbox, next to untrusted code running as root, so the SDK
//! treats everything it sends as hostile: every wait on it is bounded in time and every
//! buffer it fills is bounded in size. [`AgentLimits`] holds those bounds; a sandbox handle
//! carries one ([`crate::SandboxBuilder::agent_limits`], [`crate::Sandbox::with_agent_limits`]).
//!
//! Time has two bounds:
//! - the **reply timeout** is an idle timeout on the protocol: the vsock `CONNECT`, the hello,
//!   an exec's "started" answer, and every message of a file operation (metadata, each chunk,
//!   each batch of directory entries, the final "done") must arrive within it, and every
//!   message the SDK sends must be taken within it. It never applies to a running process's
//!   output: a command may legitimately print nothing for an hour. Such a process is bounded
//!   only by its own [`crate::ExecOptions::timeout`] (none by default), and a caller reading
//!   an [`crate::ExecStream`] decides itself how long to wait.
//! - the **operation timeout** is an overall deadline on each file operation and on an exec's
//!   start, so an agent that trickles a byte just inside the reply timeout forever still ends.
//!   For streams the caller paces ([`crate::Sandbox::read_file_stream`],
//!   [`crate::Sandbox::write_file_from`], archives to or from the caller's reader or writer)
//!   it counts the caller's time too.
//!
//! Exceeding a bound is [`crate::Error::AgentTimeout`] or [`crate::Error::LimitExceeded`].

use std::time::Duration;

/// Default [`AgentLimits::reply_timeout`]: generous, since under nested emulation the guest
/// can take seconds to answer.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`AgentLimits::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default [`AgentLimits::max_read_file`]: 256 MiB.
pub const DEFAULT_MAX_READ_FILE: u64 = 256 << 20;
/// Default [`AgentLimits::max_list_entries`].
pub const DEFAULT_MAX_LIST_ENTRIES: usize = 100_000;
/// Default [`AgentLimits::max_exec_output`]: 256 MiB.
pub const DEFAULT_MAX_EXEC_OUTPUT: u64 = 256 << 20;

/// The default reply timeout: `MSBVM_AGENT_REPLY_TIMEOUT_SECS` when it is a whole number of
/// seconds above zero, else [`DEFAULT_REPLY_TIMEOUT`]. The override is for hosts that are far
/// slower than real hardware (nested emulation with many guests on one emulated CPU), where
/// an idle guest can take longer than 30 s to be scheduled at all; the CLI has no flag for it.
fn reply_timeout_from_env(value: Option<String>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map_or(DEFAULT_REPLY_TIMEOUT, Duration::from_secs)
}

/// Bounds on what the SDK accepts from a sandbox's guest agent; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Idle timeout on every protocol message (default [`DEFAULT_REPLY_TIMEOUT`]).
    pub reply_timeout: Duration,
    /// Deadline of a whole file operation and of an exec's start; `None` for none (default
    /// [`DEFAULT_OPERATION_TIMEOUT`]).
    pub operation_timeout: Option<Duration>,
    /// Largest file [`crate::Sandbox::read_file`] returns, in bytes (default
    /// [`DEFAULT_MAX_READ_FILE`]; use [`crate::Sandbox::read_file_stream`] for more).
    pub max_read_file: u64,
    /// Most entries [`crate::Sandbox::list_dir`] returns (default
    /// [`DEFAULT_MAX_LIST_ENTRIES`]; each holds a name of at most 255 bytes and a symlink
    /// target of at most 4 KiB).
    pub max_list_entries: usize,
    /// Most bytes of stdout plus stderr that [`crate::ExecStream::collect`] (and so
    /// [`crate::Sandbox::exec`]) gathers (default [`DEFAULT_MAX_EXEC_OUTPUT`]); past it the
    /// process is killed and the call fails.
    pub max_exec_output: u64,
    /// Most tar entries one [`crate::Sandbox::copy_out`] unpacks (default 1,000,000).
    pub max_copy_entries: u64,
    /// Most bytes of file data one [`crate::Sandbox::copy_out`] writes on the host, checked
    /// against each file's size before it is written (default 8 GiB).
    pub max_copy_bytes: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        let unpack = msbvm_protocol::files::archive::UnpackLimits::default();
        AgentLimits {
            reply_timeout: reply_timeout_from_env(
                std::env::var("MSBVM_AGENT_REPLY_TIMEOUT_SECS").ok(),
            ),
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            max_read_file: DEFAULT_MAX_READ_FILE,
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
            max_exec_output: DEFAULT_MAX_EXEC_OUTPUT,
            max_copy_entries: unpack.max_entries,
            max_copy_bytes: unpack.max_bytes,
        }
    }
}

impl AgentLimits {
    /// The deadline of an operation starting now.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.operation_timeout
            .map(|t| tokio::time::Instant::now() + t)
    }
}

/// When a wait that began now ends: after `idle`, but never past `deadline`; with which
/// bound that is, for the error. `None` when neither bound is finite.
pub(crate) fn wait_end(
    idle: Duration,
    deadline: Option<tokio::time::Instant>,
) -> Option<(tokio::time::Instant, &'static str)> {
    let idle_end = tokio::time::Instant::now().checked_add(idle);
    match (idle_end, deadline) {
        (Some(i), Some(d)) if d < i => Some((d, "the operation's deadline")),
        (None, Some(d)) => Some((d, "the operation's deadline")),
        (Some(i), _) => Some((i, "the reply timeout")),
        (None, None) => None,
    }
}

/// Waits for `fut` at most `idle` and never past `deadline`; a timeout is
/// [`crate::Error::AgentTimeout`] saying what was awaited.
pub(crate) async fn bounded<T>(
    idle: Duration,
    deadline: Option<tokio::time::Instant>,
    waiting_for: &str,
    fut: impl std::future::Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    let Some((end, limit)) = wait_end(idle, deadline) else {
        return fut.await;
    };
    match tokio::time::timeout_at(end, fut).await {
        Ok(r) => r,
        Err(_) => Err(crate::Error::AgentTimeout {
            waiting_for: waiting_for.to_string(),
            limit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_timeout_override_takes_whole_seconds_above_zero() {
        let secs = |v: &str| reply_timeout_from_env(Some(v.to_string()));
        assert_eq!(secs("300"), Duration::from_secs(300));
        assert_eq!(secs(" 45 "), Duration::from_secs(45));
        for bad in ["0", "-5", "1.5", "ten", ""] {
            assert_eq!(secs(bad), DEFAULT_REPLY_TIMEOUT, "{bad:?}");
        }
        assert_eq!(reply_timeout_from_env(None), DEFAULT_REPLY_TIMEOUT);
    }
}
