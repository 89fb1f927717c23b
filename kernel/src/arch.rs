//! [`Arch`]: the guest architectures msbvm builds a kernel for, and what differs between them
//! in the build (kbuild's name, the image the VMM loads, the cross compiler).
//!
//! A guest always has the host's architecture (KVM and Hypervisor.framework do not emulate),
//! so the host's is the default everywhere; building for the other one is for preparing
//! images ahead of time (CI, tests under emulation).

use std::fmt;
use std::str::FromStr;

/// A guest kernel architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86; the image is the ELF `vmlinux` (PVH entry), with a `bzImage` beside it.
    X86_64,
    /// 64-bit Arm; the image is the uncompressed `Image` (arm64 boot protocol, device tree).
    Aarch64,
}

/// The architecture of this host, or `None` where msbvm has no guest kernel for it.
const HOST: Option<Arch> = if cfg!(target_arch = "x86_64") {
    Some(Arch::X86_64)
} else if cfg!(target_arch = "aarch64") {
    Some(Arch::Aarch64)
} else {
    None
};

impl Arch {
    /// Both architectures, x86_64 first.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The host's architecture, or `None` on a host msbvm has no guest kernel for.
    pub fn host() -> Option<Arch> {
        HOST
    }

    /// The name Rust and the GNU toolchain use ("x86_64", "aarch64"); also what [`Display`]
    /// prints.
    ///
    /// [`Display`]: fmt::Display
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// kbuild's `ARCH=` for this architecture ("x86", "arm64").
    pub fn kbuild_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }

    /// File name of the image in the cache entry, the file the VMM loads.
    pub fn image_file_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "vmlinux",
            Arch::Aarch64 => "Image",
        }
    }

    /// The `CROSS_COMPILE=` prefix of the distribution's cross compiler that builds for this
    /// architecture on another one ("aarch64-linux-gnu-").
    pub fn cross_compile_prefix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu-",
            Arch::Aarch64 => "aarch64-linux-gnu-",
        }
    }

    /// The Debian package of that cross compiler (it pulls in the matching binutils).
    pub fn cross_compiler_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc-x86-64-linux-gnu",
            Arch::Aarch64 => "gcc-aarch64-linux-gnu",
        }
    }
}

impl Default for Arch {
    /// The host's architecture; x86_64 on a host msbvm has no guest kernel for, which keeps
    /// the behaviour from before arm64 support there (building then fails with
    /// [`crate::Error::UnsupportedArch`]).
    fn default() -> Self {
        HOST.unwrap_or(Arch::X86_64)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no [`Arch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?}: expected x86_64 (or amd64) or arm64 (or aarch64)")]
pub struct ParseArchError(pub String);

impl FromStr for Arch {
    type Err = ParseArchError;

    /// Accepts both the GNU and the kernel/Debian spellings, since users type either.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(ParseArchError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_and_kernel_spellings() {
        for (text, arch) in [
            ("x86_64", Arch::X86_64),
            ("amd64", Arch::X86_64),
            ("X86-64", Arch::X86_64),
            ("arm64", Arch::Aarch64),
            ("aarch64", Arch::Aarch64),
            ("ARM64", Arch::Aarch64),
        ] {
            assert_eq!(text.parse::<Arch>(), Ok(arch), "{text}");
        }
        let err = "riscv64".parse::<Arch>().unwrap_err();
        assert!(err.to_string().contains("riscv64"), "{err}");
        assert!(err.to_string().contains("arm64"), "{err}");
    }

    #[test]
    fn display_round_trips() {
        for arch in Arch::ALL {
            assert_eq!(arch.to_string().parse::<Arch>(), Ok(arch));
        }
    }

    #[test]
    fn default_is_the_host() {
        match Arch::host() {
            Some(host) => assert_eq!(Arch::default(), host),
            None => assert_eq!(Arch::default(), Arch::X86_64),
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host(), Some(Arch::X86_64));
        }
    }
}
