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
//! `trusted.*` ones from a privileged process; [`XattrNs::select`] probes
//! each upper directory once and its [`LayeredFs`](super::LayeredFs) then
//! keeps its metadata in `trusted.msbvm.*`. The choice belongs to the
//! instance, so two layered filesystems of one process may sit on uppers of
//! either kind.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

use crate::host_util::{self as host, err};

/// Host xattr holding the guest-visible mode, owner and device number.
pub(crate) const META_XATTR: &CStr = c"user.msbvm.meta";
/// Prefix of host xattrs that hold guest xattrs.
pub(crate) const GUEST_XATTR_PREFIX: &[u8] = b"user.msbvm.x.";
const TRUSTED_META_XATTR: &CStr = c"trusted.msbvm.meta";
const TRUSTED_GUEST_XATTR_PREFIX: &[u8] = b"trusted.msbvm.x.";

/// The host xattr namespace an upper directory keeps guest metadata in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum XattrNs {
    /// `user.msbvm.*`: any process, most filesystems.
    #[default]
    User,
    /// `trusted.msbvm.*`: a privileged process on a filesystem without
    /// `user.*` xattrs.
    Trusted,
}

impl XattrNs {
    /// Picks the namespace the upper directory behind `fd` supports:
    /// `user.*`, else `trusted.*` (privileged processes only).
    pub(crate) fn select(fd: RawFd) -> io::Result<Self> {
        let user = host::setxattr(fd, c"user.msbvm.probe", b"", 0);
        if user.is_ok() {
            let _ = host::removexattr(fd, c"user.msbvm.probe");
            return Ok(Self::User);
        }
        match host::setxattr(fd, c"trusted.msbvm.probe", b"", 0) {
            Ok(()) => {
                let _ = host::removexattr(fd, c"trusted.msbvm.probe");
                Ok(Self::Trusted)
            }
            Err(e) => Err(user.err().unwrap_or(e)),
        }
    }

    /// The xattr holding guest metadata.
    fn meta_xattr(self) -> &'static CStr {
        match self {
            Self::User => META_XATTR,
            Self::Trusted => TRUSTED_META_XATTR,
        }
    }

    /// The prefix of host xattrs holding guest xattrs.
    pub(crate) fn guest_xattr_prefix(self) -> &'static [u8] {
        match self {
            Self::User => GUEST_XATTR_PREFIX,
            Self::Trusted => TRUSTED_GUEST_XATTR_PREFIX,
        }
    }

    /// The host xattr name holding guest xattr `name`.
    pub(crate) fn host_xattr_name(self, name: &CStr) -> io::Result<CString> {
        let mut v = self.guest_xattr_prefix().to_vec();
        v.extend_from_slice(name.to_bytes());
        if v.len() > 255 {
            return Err(err(libc::ERANGE));
        }
        host::cstring(&v)
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
    pub fn load(ns: XattrNs, fd: RawFd) -> io::Result<Option<Self>> {
        match host::getxattr(fd, ns.meta_xattr()) {
            Ok(v) => Ok(Self::decode(&v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the metadata on the upper entry behind `fd`.
    pub fn store(&self, ns: XattrNs, fd: RawFd) -> io::Result<()> {
        host::setxattr(fd, ns.meta_xattr(), &self.encode(), 0)
    }
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
