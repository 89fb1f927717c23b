//! The Rust SDK for msbvm sandboxes: disposable Linux microVMs started from the caller's
//! code, with no daemon.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msbvm_sdk::Error> {
//! use msbvm_sdk::Sandbox;
//! let sandbox = Sandbox::builder("demo").cpus(1).memory_mib(256).create().await?;
//! let out = sandbox.exec("echo", ["hello"]).await?;
//! assert_eq!(out.stdout_str(), "hello\n");
//! sandbox.stop().await?;
//! # Ok(()) }
//! ```
//!
//! This crate is the client: it starts runtimes and speaks to them, and links no VMM, FUSE
//! server or network stack. Each sandbox is owned by a runtime process (`msbvm __runtime`,
//! the `msbvm-runtime` crate) that the SDK starts ([`RuntimeArgs`]); other processes reach it
//! by name through its state directory (`$MSBVM_HOME/sandboxes/<name>/`). Processes in the
//! guest run over one vsock connection each, straight to the guest agent ([`exec`]);
//! lifecycle requests go to the runtime's control socket ([`control`]).
//!
//! # Finding a runtime
//!
//! A program that only uses this client starts the `msbvm` binary (the CLI, which links the
//! runtime) as each sandbox's runtime; [`runtime_binary`] looks for it: `$MSBVM_BIN`, else
//! `msbvm` next to the current executable (or one directory up, for test binaries), else on
//! `PATH`. Install `msbvm` beside the program or on `PATH`, or set `MSBVM_BIN`.
//!
//! A program that extends the runtime (its own filesystem hooks, for instance) links
//! `msbvm-runtime` as well, calls `msbvm_runtime::run_if_runtime(extensions)` first thing in
//! `main` (it returns the exit status when the process was started as `PROGRAM __runtime`),
//! and sets `MSBVM_BIN` to its own executable so that the SDK starts it as the runtime:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     if let Some(code) = msbvm_runtime::run_if_runtime(my_extensions()) {
//!         return code;
//!     }
//!     std::env::set_var(msbvm_sdk::BIN_ENV, std::env::current_exe().unwrap());
//!     // ... use msbvm_sdk as usual ...
//! #   std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! Environment overrides, for tests and unusual installs: `MSBVM_HOME` (data directory),
//! `MSBVM_BIN` (the `msbvm` binary), `MSBVM_AGENT` (the guest agent), `MSBVM_BUSYBOX` (the
//! guest's busybox), `MSBVM_KERNEL` (the guest kernel image), `MSBVM_READY_TIMEOUT_SECS` (the
//! default boot timeout), `MSBVM_AGENT_REPLY_TIMEOUT_SECS` (the default
//! [`AgentLimits::reply_timeout`], for hosts far slower than hardware), `MSBVM_LOG` (the runtime's log filter).

mod agent;
pub mod control;
mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod fork;
pub mod framing;
pub mod images;
mod launch;
pub mod limits;
pub mod logfile;
pub mod names;
pub mod paths;
pub mod peer;
pub mod report;
pub mod runtime_args;
mod sandbox;
pub mod secrets;
pub mod snapshots;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod volumes;
pub mod vsock;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;

pub use error::{Error, Result, ERROR_KINDS};
pub use events::{Event, EventStream, EventTarget};
pub use exec::{
    shell_exit_code, ExecControl, ExecEvent, ExecOptions, ExecOutput, ExecStream, ExitStatus,
};
pub use files::{DirEntry, FileErrorKind, FileKind, FileReader, FileStat, WriteOptions};
pub use fork::ForkBuilder;
pub use launch::{runtime_binary, BIN_ENV};
pub use limits::AgentLimits;
/// Plugins ([`SandboxBuilder::plugin`]): the hook model, shipped plugins, and the
/// out-of-process protocol.
pub use msbvm_plugins as plugins;
pub use msbvm_protocol::{BootTimes, TtySize};
pub use paths::{msbvm_home, validate_name, SandboxDir};
pub use report::ReadyInfo;
pub use runtime_args::RuntimeArgs;
pub use sandbox::{
    checked_cpus, checked_memory_mib, NetEventStream, Sandbox, SandboxBuilder, SandboxInfo,
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT, MAX_CPUS,
    MAX_MEMORY_MIB, MIN_MEMORY_MIB,
};
pub use secrets::Secret;
pub use state::Status;

#[cfg(test)]
mod tests {
    /// Callers spawn the SDK's futures on multi-threaded runtimes (the Python bindings do),
    /// which needs them `Send`; this fails to build when one stops being.
    #[test]
    fn the_main_futures_are_send() {
        fn send<T: Send>(_: T) {}
        send(crate::Sandbox::builder("x").create());
        send(crate::Sandbox::get("x"));
        send(crate::Sandbox::remove_named("x"));
    }
}
