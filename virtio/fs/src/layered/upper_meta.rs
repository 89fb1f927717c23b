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

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

use crate::host_util::{self as host, err};

/// Host xattr holding the guest-visible mode, owner and device number.
pub(crate) const META_XATTR: &CStr = c"user.msbvm.meta";
/// Prefix of host xattrs that hold guest xattrs.
pub(crate) const GUEST_XATTR_PREFIX: &[u8] = b"user.msbvm.x.";

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
        match host::getxattr(fd, META_XATTR) {
            Ok(v) => Ok(Self::decode(&v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the metadata on the upper entry behind `fd`.
    pub fn store(&self, fd: RawFd) -> io::Result<()> {
        host::setxattr(fd, META_XATTR, &self.encode(), 0)
    }
}

/// The host xattr name holding guest xattr `name`.
pub(crate) fn host_xattr_name(name: &CStr) -> io::Result<CString> {
    let mut v = GUEST_XATTR_PREFIX.to_vec();
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
