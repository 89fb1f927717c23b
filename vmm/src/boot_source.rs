//! What the VM starts executing: plain data the architectures' boot code takes, on every
//! host (the configuration that carries it, `config`, is Linux's).

use std::path::PathBuf;

/// Largest kernel command line accepted, with its NUL (the kernel's own
/// COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// What the VM starts executing.
#[derive(Clone, Debug)]
pub enum BootSource {
    /// A Linux kernel image: an uncompressed ELF `vmlinux` with a PVH entry note
    /// (preferred), or a `bzImage` booted through the 64-bit boot protocol.
    Linux {
        /// Path of the image.
        kernel: PathBuf,
        /// Optional initial ramdisk (cpio archive, possibly compressed).
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// Raw machine code copied to `load_addr` and entered in 64-bit long mode at
    /// CPL0 with identity-mapped paging (first 4 GiB), flat segments and a stack
    /// at `arch::layout::BOOT_STACK_POINTER`. Used by tests with hand-made guests.
    RawLongMode {
        /// The code.
        code: Vec<u8>,
        /// Guest-physical (= virtual) address to load and enter it at.
        load_addr: u64,
    },
}
