//! The architectures the L1 machine can emulate, and what differs between them.
//!
//! x86_64 is the default: QEMU's q35 machine with AMD SVM, the distribution's amd64 kernel with
//! `kvm-amd` as a module. aarch64 runs QEMU's `virt` board with EL2 (`virtualization=on`) and a
//! GICv3, the distribution's arm64 kernel (KVM built in), so that an arm64 `msbvm` inside it gets
//! a real arm64 /dev/kvm (PLATFORM.md, "arm64 can be built and run here").

use std::fmt;
use std::path::PathBuf;

use crate::distro;
use crate::error::{Error, Result};

/// The architecture of an L1 machine (and of everything that runs inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L1Arch {
    /// QEMU `q35` with emulated AMD SVM.
    #[default]
    X86_64,
    /// QEMU `virt` with emulated EL2 and GICv3.
    Aarch64,
}

impl fmt::Display for L1Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rust_arch())
    }
}

impl L1Arch {
    /// The architecture as Rust's `target_arch` spells it.
    pub fn rust_arch(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "x86_64",
            L1Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust target triple of the static binaries that run in this L1.
    pub fn target_triple(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "x86_64-unknown-linux-gnu",
            L1Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The Debian architecture name.
    pub fn debian_arch(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "amd64",
            L1Arch::Aarch64 => "arm64",
        }
    }

    /// The QEMU binary that emulates it.
    pub fn qemu(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "qemu-system-x86_64",
            L1Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The distribution package that has that QEMU binary.
    pub fn qemu_package(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "qemu-system-x86",
            L1Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// The machine and CPU arguments. On aarch64 `pauth-impdef=on` picks QEMU's cheap
    /// pointer-authentication algorithm: the architected one made the whole L1 about 4x slower.
    pub fn machine_args(self) -> &'static [&'static str] {
        match self {
            L1Arch::X86_64 => &["-M", "q35", "-cpu", "max,+svm"],
            L1Arch::Aarch64 => &[
                "-M",
                "virt,virtualization=on,gic-version=3",
                "-cpu",
                "max,pauth-impdef=on",
            ],
        }
    }

    /// The console device of the L1 kernel (the virt board's PL011 on aarch64).
    pub fn console(self) -> &'static str {
        match self {
            L1Arch::X86_64 => "ttyS0",
            L1Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// Whether L1 has the second serial port the heartbeat writes to ([`crate::liveness`]).
    /// QEMU's virt board has a single UART, so an aarch64 L1 runs without a heartbeat and
    /// only the run's timeout catches a frozen machine.
    pub fn has_heartbeat_port(self) -> bool {
        self == L1Arch::X86_64
    }

    /// The kernel modules L1 loads by default: kvm-amd for /dev/kvm, vhost_vsock and tun for
    /// the product's devices on x86_64; the arm64 kernel has KVM built in.
    pub fn default_modules(self) -> &'static [&'static str] {
        match self {
            L1Arch::X86_64 => &["kvm-amd", "vhost_vsock", "tun"],
            L1Arch::Aarch64 => &["tun"],
        }
    }

    /// The static busybox L1 runs: the host's own on x86_64, the arm64 build of the
    /// distribution's `busybox-static` (unpacked into the cache, never installed: installing
    /// it would replace the host's) on aarch64.
    pub fn busybox(self) -> Result<PathBuf> {
        match self {
            L1Arch::X86_64 => {
                let path = PathBuf::from(crate::nested::HOST_BUSYBOX);
                if !path.is_file() {
                    return Err(Error::missing(
                        crate::nested::HOST_BUSYBOX,
                        crate::error::INSTALL_HINT,
                    ));
                }
                Ok(path)
            }
            L1Arch::Aarch64 => distro::foreign_file("busybox-static", self, "bin/busybox"),
        }
    }

    /// The architecture of this host.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            L1Arch::Aarch64
        } else {
            L1Arch::X86_64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_runs_the_virt_board_with_el2_and_its_pl011() {
        let a = L1Arch::Aarch64;
        assert_eq!(a.qemu(), "qemu-system-aarch64");
        assert!(a.machine_args().join(" ").contains("virtualization=on"));
        assert_eq!(a.console(), "ttyAMA0");
        assert!(!a.has_heartbeat_port());
        assert!(!a.default_modules().contains(&"kvm-amd"));
        assert_eq!(a.target_triple(), "aarch64-unknown-linux-gnu");
    }

    #[test]
    fn x86_is_the_default_and_unchanged() {
        let x = L1Arch::default();
        assert_eq!(x, L1Arch::X86_64);
        assert_eq!(x.machine_args(), ["-M", "q35", "-cpu", "max,+svm"]);
        assert_eq!(x.default_modules(), ["kvm-amd", "vhost_vsock", "tun"]);
        assert_eq!(x.console(), "ttyS0");
    }
}
