//! The runtime's Landlock ruleset: the filesystem a confined runtime thread can still reach.
//!
//! Set-up (image unpacking, the kernel and initramfs, `/dev/kvm`, the host's
//! `/etc/resolv.conf`) happens before the threads confine themselves and opens whatever it
//! needs; afterwards the threads reach only:
//! - the sandbox's state directory, read-write (records, logs, sockets, the image root's
//!   copy-on-write `upper/`);
//! - the image store, read-only (the layers under an image root);
//! - each `-v` volume and a `--rootfs` directory, read-write or read-only as configured;
//! - `/proc/self`, read-only (the VM thread's memory figures, the FUSE backends' reopening
//!   through `/proc/self/fd/N`), and `/dev/kvm`, `/dev/null`, `/dev/urandom`, `/dev/random`.
//!
//! Landlock restricts one thread and the threads it starts, so each thread restricts itself
//! with a duplicate of the one ruleset (see the module above).

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, ABI,
};

/// The newest Landlock ABI whose filesystem rights we use (truncate, device ioctls); older
/// kernels get the subset they know (best effort).
const ABI_USED: ABI = ABI::V5;

/// The paths a confined runtime may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paths {
    /// Read-write trees.
    pub read_write: Vec<PathBuf>,
    /// Read-only trees (or files).
    pub read_only: Vec<PathBuf>,
}

impl Paths {
    /// Adds the host paths every runtime needs after set-up.
    pub fn with_system_paths(mut self) -> Self {
        self.read_only.push("/proc/self".into());
        self.read_only.push("/dev/urandom".into());
        // A static build's OS random source (no getrandom symbol to find) polls /dev/random
        // before reading /dev/urandom; without it every random draw failed with EACCES (seen
        // as the netstack's DNS forwarding panicking in the nested tests).
        self.read_only.push("/dev/random".into());
        self.read_write.push("/dev/kvm".into());
        self.read_write.push("/dev/null".into());
        self
    }
}

/// Creates the ruleset for `paths`. Paths that do not exist are left out (nothing there to
/// reach). On a kernel without Landlock the ruleset is a no-op; [`supported`] says which.
pub fn ruleset(paths: &Paths) -> Result<RulesetCreated, RulesetError> {
    let all = AccessFs::from_all(ABI_USED);
    let read = AccessFs::from_read(ABI_USED);
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(&paths.read_write, all))?
        .add_rules(path_beneath_rules(&paths.read_only, read))
}

/// The Landlock ABI this kernel offers (0: none, or disabled at boot).
pub fn supported() -> i64 {
    // SAFETY: the version query takes no attribute (NULL, size 0) and only returns a number.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    }
    .max(0)
}
