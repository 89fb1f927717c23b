//! What the guest asked for that the host file must not carry.
//!
//! A set-user-ID or set-group-ID file, or a block or character device, in
//! a host directory is a local root for anyone on the host who can reach
//! it. So the passthrough backend never gives a host object those bits or
//! types: set-id bits are stripped from every host mode (create, mkdir,
//! mknod, chmod) and a device node is created as an empty regular file.
//! What the guest asked for is kept in one host xattr, [`KEPT_XATTR`], on
//! the object (it moves with renames and is shared by hard links), and
//! merged back into the attributes the guest sees. Guest xattr calls never
//! reach names under `user.msbvm.`, so the guest cannot forge or remove it
//! except through chmod/mknod themselves.
//!
//! A host filesystem without `user.*` xattrs (tmpfs before Linux 6.6)
//! keeps it in `trusted.msbvm.mode` when the process is privileged (only
//! privileged host processes can read or change `trusted.*`); otherwise
//! asking for a set-id bit or a device there fails with `EPERM`, and
//! nothing is created.
//!
//! Reading the xattr costs two syscalls per looked-up object on a host
//! without `user.*` xattrs (each a path walk through `/proc/self/fd`, since
//! the object is held by an `O_PATH` fd), and almost no share has anything
//! kept. So the share root carries [`ShareMark::Modes`] from the first kept
//! mode on (set before that mode is stored, and never removed), and only in
//! a share that carries it does LOOKUP read what is kept. A share written by
//! a version without this mark shows its kept set-id bits again once the
//! guest keeps any mode there (a share that kept a device was marked already,
//! see below).
//!
//! Plain READDIR gives each entry the type of its host object, so a kept
//! device would list as a regular file while LOOKUP says device. The share
//! root carries [`ShareMark::Devices`] from the first kept device on (set
//! before that device is created, and never removed); only in a share that
//! carries it does READDIR look for what is kept, and only on its regular
//! files (see [`KeptMode::device_at`]). Other shares list without a syscall
//! per entry.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::filesystem::Attr;
use crate::host_util::{self as host, err};

/// Host xattr holding the kept guest mode bits and device number.
pub(crate) const KEPT_XATTR: &CStr = c"user.msbvm.mode";
/// Where it goes on a host filesystem without `user.*` xattrs.
const TRUSTED_KEPT_XATTR: &CStr = c"trusted.msbvm.mode";
/// Share-root xattr: a device may be kept somewhere in this share.
pub(crate) const DEVICES_XATTR: &CStr = c"user.msbvm.devices";
/// Where it goes on a host filesystem without `user.*` xattrs.
const TRUSTED_DEVICES_XATTR: &CStr = c"trusted.msbvm.devices";
/// Share-root xattr: a mode may be kept somewhere in this share.
pub(crate) const MODES_XATTR: &CStr = c"user.msbvm.kept";
/// Where it goes on a host filesystem without `user.*` xattrs.
const TRUSTED_MODES_XATTR: &CStr = c"trusted.msbvm.kept";
/// Prefix of the host xattrs this backend owns; hidden from the guest.
pub(crate) const RESERVED_PREFIX: &[u8] = b"user.msbvm.";
/// The mode bits a host object never gets from the guest.
pub(crate) const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

const VERSION: u8 = 1;
const LEN: usize = 16;

/// What a share root may be marked as holding somewhere below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShareMark {
    /// A kept mode of any kind: LOOKUP reads what is kept.
    Modes,
    /// A kept device: READDIR looks for kept device types too.
    Devices,
}

impl ShareMark {
    /// The root xattr that carries the mark, and its `trusted` stand-in.
    fn names(self) -> (&'static CStr, &'static CStr) {
        match self {
            ShareMark::Modes => (MODES_XATTR, TRUSTED_MODES_XATTR),
            ShareMark::Devices => (DEVICES_XATTR, TRUSTED_DEVICES_XATTR),
        }
    }

    /// Whether the share whose root is `root` carries the mark.
    pub fn on(self, root: RawFd) -> bool {
        let (user, trusted) = self.names();
        get(root, user, trusted).is_ok()
    }

    /// Marks the share whose root is `root`.
    pub fn set(self, root: RawFd) -> io::Result<()> {
        let (user, trusted) = self.names();
        match host::setxattr(root, user, b"1", 0) {
            Err(e) if no_user_xattrs(&e) => host::setxattr(root, trusted, b"1", 0),
            other => other,
        }
    }
}

/// Guest-requested mode the host object does not carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeptMode {
    /// `S_ISUID`/`S_ISGID` bits the guest set.
    pub setid: u32,
    /// `S_IFCHR` or `S_IFBLK` for a device kept as a regular file, else 0.
    pub device: u32,
    /// Device number of a kept device.
    pub rdev: u64,
}

impl KeptMode {
    /// What to keep for a guest `mode` (type bits included) and `rdev`;
    /// `None` when the host object can carry all of it.
    pub fn for_request(mode: u32, rdev: u64) -> Option<Self> {
        let kind = mode & libc::S_IFMT;
        let device = if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            kind
        } else {
            0
        };
        let kept = KeptMode {
            setid: mode & SETID,
            device,
            rdev: if device != 0 { rdev } else { 0 },
        };
        (kept != KeptMode::default()).then_some(kept)
    }

    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[4..8].copy_from_slice(&(self.setid | self.device).to_le_bytes());
        b[8..16].copy_from_slice(&self.rdev.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || b[0] != VERSION {
            return None;
        }
        let mode = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        let kind = mode & libc::S_IFMT;
        let device = if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            kind
        } else {
            0
        };
        Some(KeptMode {
            setid: mode & SETID,
            device,
            rdev: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        })
    }

    /// Reads what is kept on the host object behind `fd` (regular files and
    /// directories only; other kinds cannot hold `user.*` xattrs).
    pub fn load(fd: RawFd, host_kind: u32) -> Option<Self> {
        if host_kind != libc::S_IFREG && host_kind != libc::S_IFDIR {
            return None;
        }
        get(fd, KEPT_XATTR, TRUSTED_KEPT_XATTR)
            .ok()
            .and_then(|v| Self::decode(&v))
    }

    /// The kept device type (`S_IFCHR`/`S_IFBLK`) of the entry `name` of
    /// the directory `dirfd`, if it is a regular file keeping one. Costs an
    /// open, a stat, an xattr read and a close; any failure (the entry
    /// went away or changed kind) answers `None`.
    pub fn device_at(dirfd: RawFd, name: &[u8]) -> Option<u32> {
        let name = host::cstring(name).ok()?;
        let fd = host::open_child(dirfd, &name).ok()?;
        let kind = host::fstat(fd.as_raw_fd()).ok()?.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG {
            return None;
        }
        Self::load(fd.as_raw_fd(), kind)
            .map(|k| k.device)
            .filter(|&d| d != 0)
    }

    /// Stores `kept` on the host object behind `fd`, or removes the xattr
    /// for `None`. A host that cannot keep it answers `EPERM`.
    pub fn store(fd: RawFd, kept: Option<Self>) -> io::Result<()> {
        match kept {
            Some(k) => {
                let stored = match host::setxattr(fd, KEPT_XATTR, &k.encode(), 0) {
                    Err(e) if no_user_xattrs(&e) => {
                        host::setxattr(fd, TRUSTED_KEPT_XATTR, &k.encode(), 0)
                    }
                    other => other,
                };
                stored.map_err(|e| {
                    tracing::warn!("cannot keep a set-id bit or device node as an xattr: {e}");
                    err(libc::EPERM)
                })
            }
            None => {
                for name in [KEPT_XATTR, TRUSTED_KEPT_XATTR] {
                    match host::removexattr(fd, name) {
                        Err(e)
                            if e.raw_os_error() != Some(libc::ENODATA) && !no_user_xattrs(&e) =>
                        {
                            return Err(e)
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Merges what is kept into the attributes the host object gave.
    pub fn apply(kept: Option<&Self>, attr: &mut Attr) {
        let Some(k) = kept else { return };
        attr.mode |= k.setid;
        if k.device != 0 {
            attr.mode = k.device | (attr.mode & 0o7777);
            attr.rdev = k.rdev as u32;
            attr.size = 0;
        }
    }
}

/// The value of the `user` xattr, or of the `trusted` one where the host
/// filesystem has no `user.*` xattrs.
fn get(fd: RawFd, user: &CStr, trusted: &CStr) -> io::Result<Vec<u8>> {
    match host::getxattr(fd, user) {
        Err(e) if no_user_xattrs(&e) => host::getxattr(fd, trusted),
        other => other,
    }
}

/// Whether an xattr call failed because the filesystem has no `user.*`
/// xattrs (or refuses them to this process).
fn no_user_xattrs(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM))
}

/// Whether the guest names an xattr this backend reserves for itself.
pub(crate) fn is_reserved_xattr(name: &CStr) -> bool {
    name.to_bytes().starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mode_round_trips_and_only_keeps_what_the_host_must_not_carry() {
        assert_eq!(KeptMode::for_request(libc::S_IFREG | 0o755, 0), None);
        assert_eq!(KeptMode::for_request(libc::S_IFIFO | 0o1777, 7), None);
        let k = KeptMode::for_request(libc::S_IFBLK | 0o4660, 0x0801).unwrap();
        assert_eq!(
            k,
            KeptMode {
                setid: libc::S_ISUID,
                device: libc::S_IFBLK,
                rdev: 0x0801
            }
        );
        assert_eq!(KeptMode::decode(&k.encode()), Some(k));
        assert_eq!(KeptMode::decode(&k.encode()[..8]), None);
        let mut attr = Attr {
            mode: libc::S_IFREG | 0o660,
            size: 9,
            ..Default::default()
        };
        KeptMode::apply(Some(&k), &mut attr);
        assert_eq!(attr.mode, libc::S_IFBLK | 0o4660);
        assert_eq!((attr.rdev, attr.size), (0x0801, 0));
    }
}
