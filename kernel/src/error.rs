//! The one error type of this crate.
//!
//! Every variant names the cause and, where there is one, the fix: these messages reach users
//! of the CLI unchanged, so they must be readable without this crate's source at hand.

use std::io;
use std::path::PathBuf;

use crate::options::Mismatch;
use crate::packages::INSTALL_COMMAND;

/// Everything that can go wrong while locating or building the guest kernel or writing an
/// initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Programs, headers or the kernel source needed by the build are not installed.
    #[error(
        "cannot build the msbvm guest kernel, missing: {}\ninstall them with:\n    {install}",
        .missing.join(", ")
    )]
    ToolchainMissing {
        /// One human-readable item per missing piece, e.g. "program `flex`".
        missing: Vec<String>,
        /// The command that installs all of them ([`INSTALL_COMMAND`], plus the cross
        /// compiler's package when building for another architecture).
        install: String,
    },

    /// The kernel source package is not installed, so the cache key (which includes the
    /// source version) cannot be computed.
    #[error(
        "the kernel source {} is not installed (package linux-source-6.12); install it with:\n    {}",
        .tarball.display(),
        INSTALL_COMMAND
    )]
    SourceMissing {
        /// Where the source tarball was expected.
        tarball: PathBuf,
    },

    /// After `make olddefconfig`, some options requested by the config fragments did not keep
    /// the requested value. This almost always means a dependency of the option is missing
    /// from the fragments.
    #[error(
        "the kernel configuration did not take {} requested option(s) (usually a dependency \
         missing from kernel/config/*.config):\n{}",
        .mismatches.len(),
        .mismatches.iter().map(|m| format!("    {m}")).collect::<Vec<_>>().join("\n")
    )]
    ConfigMismatch {
        /// Each option whose final value differs from the requested one.
        mismatches: Vec<Mismatch>,
    },

    /// A config fragment has a line that is neither an option, a comment nor blank.
    #[error("{fragment}:{line}: not a kernel config line: {text:?}")]
    BadFragmentLine {
        /// File name of the fragment.
        fragment: String,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },

    /// A build command exited unsuccessfully.
    #[error(
        "kernel build failed at `{step}` ({status}); full log: {}\nlast lines of the log:\n{tail}",
        .log.display()
    )]
    BuildFailed {
        /// The command that failed, as shown in the log.
        step: String,
        /// How it ended ("exit status: 2", "signal: 9").
        status: String,
        /// The kept build log.
        log: PathBuf,
        /// The last lines of the log (about 20).
        tail: String,
    },

    /// A program could not be started at all.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program name.
        program: String,
        /// Why starting it failed.
        #[source]
        source: io::Error,
    },

    /// `MSBVM_KERNEL` points at something that is not a file.
    #[error(
        "MSBVM_KERNEL is set to {} but no kernel image file is there; point it at a vmlinux \
         or unset it to use the cached build",
        .path.display()
    )]
    KernelOverrideMissing {
        /// The value of `MSBVM_KERNEL`.
        path: PathBuf,
    },

    /// The host is neither x86_64 nor aarch64, the architectures the build knows compilers for.
    #[error(
        "the msbvm guest kernel can only be built on x86_64 or aarch64 hosts (this host is \
         {arch}); set MSBVM_KERNEL to a prebuilt kernel image instead"
    )]
    UnsupportedArch {
        /// The host architecture.
        arch: &'static str,
    },

    /// A host file given to the initramfs writer has a type an archive entry cannot represent.
    #[error("cannot put {} into an initramfs: it is a {kind}", .path.display())]
    UnsupportedFileType {
        /// The host path.
        path: PathBuf,
        /// What it is ("socket", "fifo", ...).
        kind: &'static str,
    },

    /// A host file name is not valid UTF-8, which archive paths must be.
    #[error("cannot put {} into an initramfs: its name is not valid UTF-8", .path.display())]
    NonUtf8Name {
        /// The host path.
        path: PathBuf,
    },

    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path ("reading /x/y").
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `io::Result`s, turning them into this crate's [`Error`].
pub(crate) trait IoContext<T> {
    /// Describes what was being done when the error happened; evaluated only on error.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::io(what(), e))
    }
}
