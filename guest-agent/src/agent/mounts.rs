//! The filesystems PID 1 mounts before anything else runs.
//!
//! Only the real PID 1 calls [`mount_all`]; the table itself is plain data
//! and checked by unit tests on the host.

use std::ffi::CString;
use std::io;

/// One mount.
#[derive(Clone, Copy, Debug)]
pub struct Mount {
    /// Source (device or a name for virtual filesystems).
    pub source: &'static str,
    /// Mount point, created if missing.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Filesystem options.
    pub data: &'static str,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NODEV_NOEXEC: libc::c_ulong = NOSUID_NODEV | libc::MS_NOEXEC;

/// What gets mounted, in order (parents before children).
pub const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    // Our own devpts instance, so /dev/ptmx (a link to pts/ptmx) hands out
    // ptys numbered from 0 and anyone may open it.
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mount {fstype} on {target}: {source}")]
pub struct MountError {
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// Why.
    pub source: io::Error,
}

/// Mounts [`MOUNTS`]; returns the failures (the agent goes on without them:
/// a guest without, say, cgroups is still useful).
pub fn mount_all() -> Vec<MountError> {
    MOUNTS.iter().filter_map(|m| mount(m).err()).collect()
}

fn mount(m: &Mount) -> Result<(), MountError> {
    let err = |source| MountError {
        fstype: m.fstype,
        target: m.target,
        source,
    };
    let _ = std::fs::create_dir_all(m.target);
    let cstr = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (source, target, fstype, data) = (
        cstr(m.source)?,
        cstr(m.target)?,
        cstr(m.fstype)?,
        cstr(m.data)?,
    );
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // EBUSY: already mounted (devtmpfs with CONFIG_DEVTMPFS_MOUNT).
    if e.raw_os_error() == Some(libc::EBUSY) {
        Ok(())
    } else {
        Err(err(e))
    }
}

/// The symlinks programs expect in /dev: `ptmx` into our devpts instance
/// (devtmpfs made it a device node of the initial instance) and the
/// `/proc/self/fd` shortcuts. Failures are logged, not fatal.
pub fn link_dev_nodes() {
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::read_link(link).is_ok_and(|t| t.as_os_str() == to) {
            continue;
        }
        let _ = std::fs::remove_file(link);
        if let Err(e) = std::os::unix::fs::symlink(to, link) {
            agent_log!("cannot link {link} -> {to}: {e}");
        }
    }
}

/// Unmounts [`MOUNTS`] in reverse order, best effort (at power-off; busy
/// ones stay, `sync` has already flushed them).
pub fn unmount_all() {
    for m in MOUNTS.iter().rev() {
        if let Ok(target) = CString::new(m.target) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, m) in MOUNTS.iter().enumerate() {
            for later in &MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn devpts_is_a_private_instance_anyone_can_open() {
        let pts = MOUNTS.iter().find(|m| m.fstype == "devpts").unwrap();
        assert!(pts.data.split(',').any(|o| o == "newinstance"));
        assert!(pts.data.split(',').any(|o| o == "ptmxmode=0666"));
    }

    #[test]
    fn the_required_mounts_are_there() {
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/tmp",
            "/sys/fs/cgroup",
        ] {
            assert!(MOUNTS.iter().any(|m| m.target == t), "{t}");
        }
    }
}
