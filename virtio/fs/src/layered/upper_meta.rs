//! Guest-visible metadata of upper-directory entries.
//!
//! The host process may be unprivileged, so it cannot give upper files the
//! owners, set-id bits or types the guest asks for. Every upper entry is a
//! host regular file or directory (guest symlinks are regular files holding
//! the target, guest devices, FIFOs and sockets are empty regular files);
//! both kinds accept `user.*` xattrs on every common filesystem, so the
//! guest's view is stored in one xattr, [`META_XATTR`], that moves with the
//! file on rename and is shared by hard links. Guest xattrs live beside it
//! as `user.msbvm.x.<guest name>`, so `security.*` or `trusted.*` names set
//! by the guest never act on the host.
//!
//! Filesystems without `user.*` xattrs (tmpfs before Linux 6.6) still take
//! `trusted.*` ones from a privileged process; [`select_namespace`] probes
//! once and the whole process then uses `trusted.msbvm.*`. The choice is
//! process-wide, so uppers of one process must not mix filesystems of both
//! kinds (the runtime has one upper per process).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::host_util::{self as host, err};

/// Host xattr holding the guest-visible mode, owner and device number.
pub(crate) const META_XATTR: &CStr = c"user.msbvm.meta";
/// Prefix of host xattrs that hold guest xattrs.
pub(crate) const GUEST_XATTR_PREFIX: &[u8] = b"user.msbvm.x.";
const TRUSTED_META_XATTR: &CStr = c"trusted.msbvm.meta";
const TRUSTED_GUEST_XATTR_PREFIX: &[u8] = b"trusted.msbvm.x.";

/// Whether this process keeps upper metadata in `trusted.*` xattrs.
static TRUSTED: AtomicBool = AtomicBool::new(false);

/// The xattr holding guest metadata, in the namespace this process uses.
pub(crate) fn meta_xattr() -> &'static CStr {
    if TRUSTED.load(Ordering::Relaxed) {
        TRUSTED_META_XATTR
    } else {
        META_XATTR
    }
}

/// The prefix of host xattrs holding guest xattrs, in this process's namespace.
pub(crate) fn guest_xattr_prefix() -> &'static [u8] {
    if TRUSTED.load(Ordering::Relaxed) {
        TRUSTED_GUEST_XATTR_PREFIX
    } else {
        GUEST_XATTR_PREFIX
    }
}

/// Picks the xattr namespace the upper directory behind `fd` supports:
/// `user.*`, else `trusted.*` (privileged processes only).
pub(crate) fn select_namespace(fd: RawFd) -> io::Result<()> {
    let user = host::setxattr(fd, c"user.msbvm.probe", b"", 0);
    if user.is_ok() {
        let _ = host::removexattr(fd, c"user.msbvm.probe");
        TRUSTED.store(false, Ordering::Relaxed);
        return Ok(());
    }
    match host::setxattr(fd, c"trusted.msbvm.probe", b"", 0) {
        Ok(()) => {
            let _ = host::removexattr(fd, c"trusted.msbvm.probe");
            TRUSTED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(_) => user,
    }
}

const VERSION: u8 = 1;
const LEN: usize = 24;

/// What the guest sees of an upper entry's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestMeta {
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for character and block devices.
    pub rdev: u64,
}

impl GuestMeta {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..12].copy_from_slice(&self.uid.to_le_bytes());
        b[12..16].copy_from_slice(&self.gid.to_le_bytes());
        b[16..24].copy_from_slice(&self.rdev.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || b[0] != VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(GuestMeta {
            mode: u32_at(4),
            uid: u32_at(8),
            gid: u32_at(12),
            rdev: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        })
    }

    /// Reads the metadata of the upper entry behind `fd`; `None` when it has
    /// none (the upper root before the guest changed it) or it is damaged.
    pub fn load(fd: RawFd) -> io::Result<Option<Self>> {
        match host::getxattr(fd, meta_xattr()) {
            Ok(v) => Ok(Self::decode(&v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the metadata on the upper entry behind `fd`.
    pub fn store(&self, fd: RawFd) -> io::Result<()> {
        host::setxattr(fd, meta_xattr(), &self.encode(), 0)
    }
}

/// The host xattr name holding guest xattr `name`.
pub(crate) fn host_xattr_name(name: &CStr) -> io::Result<CString> {
    let mut v = guest_xattr_prefix().to_vec();
    v.extend_from_slice(name.to_bytes());
    if v.len() > 255 {
        return Err(err(libc::ERANGE));
    }
    host::cstring(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_damaged_values() {
        let m = GuestMeta {
            mode: libc::S_IFCHR | 0o4755,
            uid: 0,
            gid: 42,
            rdev: 0x0501,
        };
        assert_eq!(GuestMeta::decode(&m.encode()), Some(m));
        assert_eq!(GuestMeta::decode(&m.encode()[..10]), None);
        let mut bad = m.encode();
        bad[0] = 9;
        assert_eq!(GuestMeta::decode(&bad), None);
    }
}
