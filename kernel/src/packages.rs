//! The distribution packages the kernel build relies on (Debian/Ubuntu names and paths).
//!
//! A leaf module: [`crate::error`] names the install command in its messages, and
//! [`crate::source`] and [`crate::toolchain`] look for what these packages install.

/// The Debian package that ships the kernel source.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// The source tarball installed by [`SOURCE_PACKAGE`]. The build never downloads a source.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// The command that installs everything [`crate::ToolchainProbe::check`] looks for
/// (Debian/Ubuntu).
pub const INSTALL_COMMAND: &str =
    "apt-get install linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev xz-utils";
