//! The one error type of the test harness.
//!
//! Messages name the cause and the fix, because they are what a developer sees when an
//! end-to-end test or `msbvm-nested` fails. [`Error::is_environment`] separates "this machine
//! cannot run the nested machine at all" (which `MSBVM_SKIP_NESTED=1` may turn into a skip) from
//! real failures of the product or the harness (which never skip).

use std::io;
use std::path::PathBuf;

/// The packages that provide the tools the nested machine needs on the host.
pub const INSTALL_HINT: &str = "apt-get install qemu-system-x86 busybox-static";

/// Everything that can go wrong while preparing or running a nested (L1) machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host program the harness needs is not installed.
    #[error("`{tool}` is not installed on this host; install it with `{install}`")]
    MissingTool {
        /// The program (or file) that was looked for.
        tool: String,
        /// The command that installs it.
        install: String,
    },

    /// The distribution kernel for the L1 machine could not be resolved, downloaded or unpacked.
    #[error("cannot get the distribution kernel for the nested machine: {0}")]
    DistroKernel(String),

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Writing an initramfs failed.
    #[error("cannot build the initramfs: {0}")]
    Initramfs(String),

    /// QEMU could not start the L1 machine, or L1 died before its init script ran.
    #[error("QEMU could not run the nested machine: {reason}\n{console_tail}")]
    QemuStart {
        /// What went wrong, including QEMU's own error output.
        reason: String,
        /// The last lines of the console, for context.
        console_tail: String,
    },

    /// The L1 kernel did not reach its init script in time (a stalled emulated boot).
    #[error("the nested machine did not reach its init script within {secs} s and was killed; last console lines:\n{console_tail}")]
    L1Boot {
        /// The time limit.
        secs: u64,
        /// The last lines of the console.
        console_tail: String,
    },

    /// The L1 kernel reported a soft lockup: the emulated machine is wedged.
    #[error("the nested machine's kernel locked up (a fault of the emulated machine, not of the command under test) and was killed; last console lines:\n{console_tail}")]
    L1Lockup {
        /// The last lines of the console.
        console_tail: String,
    },

    /// The L1 kernel panicked while its command ran (seen once: a kernel stack overflow in
    /// page-fault handling on a thread running KVM_RUN, under QEMU's emulated SVM).
    #[error("the nested machine's kernel panicked (a fault of the emulated machine, not of the command under test); last console lines:\n{console_tail}")]
    L1Panic {
        /// The last lines of the console.
        console_tail: String,
    },

    /// L1's heartbeat stopped while its command ran: the emulated machine froze.
    #[error("the nested machine stopped making progress (no heartbeat for {secs} s; a fault of the emulated machine, not of the command under test) and was killed\nits vCPUs:\n{registers}\nlast console lines:\n{console_tail}")]
    L1Frozen {
        /// How long the heartbeat was silent.
        secs: u64,
        /// Where the vCPUs were, from the QEMU monitor.
        registers: String,
        /// The last lines of the console.
        console_tail: String,
    },

    /// The L1 machine did not finish in time and was killed.
    #[error("the nested machine did not finish within {secs} s and was killed; last console lines:\n{console_tail}")]
    Timeout {
        /// The time limit.
        secs: u64,
        /// The last lines of the console.
        console_tail: String,
    },

    /// L1 ended without printing the exit status of the inner command.
    #[error("the nested machine ended ({qemu_status}) without reporting the exit status of its command; last console lines:\n{console_tail}")]
    NoExitStatus {
        /// How QEMU ended.
        qemu_status: String,
        /// The last lines of the console.
        console_tail: String,
    },

    /// `cargo build` of the static binaries failed.
    #[error("building the static binaries failed ({status}); command: {command}")]
    Build {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
    },

    /// A binary meant to run inside L1 is missing or dynamically linked.
    #[error("{}: {reason}", .path.display())]
    BadArtifact {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it and how to fix it.
        reason: String,
    },

    /// The guest kernel could not be located or built.
    #[error("cannot get the msbvm guest kernel: {0}")]
    GuestKernel(String),
    /// A test fixture (registry, image) could not be prepared.
    #[error("cannot prepare a test fixture: {0}")]
    Harness(String),
}

impl Error {
    /// Whether the error means this host cannot run the nested machine at all (tool missing,
    /// distribution kernel unavailable, QEMU unable to start), as opposed to a failure of the
    /// product or the harness.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            Error::MissingTool { .. } | Error::DistroKernel(_) | Error::QemuStart { .. }
        )
    }

    /// Builds an [`Error::Io`] with a context, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Builds an [`Error::MissingTool`].
    pub(crate) fn missing(tool: impl Into<String>, install: impl Into<String>) -> Error {
        Error::MissingTool {
            tool: tool.into(),
            install: install.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
