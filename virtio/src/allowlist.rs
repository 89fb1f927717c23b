//! What a seccomp allowlist is made of, shared by [`crate::confine`] (which
//! compiles the lists) and the device folders' `seccomp.rs` (which hold
//! them), so neither imports the other.

/// One allowlist entry: a system call number (`libc::SYS_*`).
pub type Syscall = libc::c_long;

/// `FIONBIO` (`set_nonblocking` on sockets), the same number on every Linux architecture we
/// build for (libc's type for it differs between targets).
pub const FIONBIO: u64 = 0x5421;
