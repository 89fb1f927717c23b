//! Switching from the initramfs to the sandbox's real root, and the mounts
//! the host asked for.
//!
//! The runtime boots every sandbox with a small initramfs holding the agent
//! and its [`BootConfig`]. When the config names a virtiofs root, the agent
//! mounts it, frees the initramfs files (they would otherwise pin memory for
//! the sandbox's whole life), moves the new root over `/` and chroots into it
//! — what `switch_root` does, done here because the guest has no userland
//! of its own at that point. Volumes and tmpfs mounts come after the kernel
//! filesystems so a volume under `/tmp` is not hidden by the `/tmp` tmpfs.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use msbvm_protocol::boot::{BootConfig, GuestMount, MountSource, BOOT_CONFIG_PATH};

/// Mount options of every virtiofs share. None: Linux's virtiofs always
/// checks permissions in the guest kernel (`default_permissions` is implied
/// and refused as an option), which the host backends rely on — they report
/// owners and modes and leave the checks to the guest.
const VIRTIOFS_OPTIONS: &str = "";

/// Where the new root is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// Reads the host's boot configuration; a missing file means "no root
/// switch, no mounts, no network" (boot tests and old runtimes).
pub fn read_boot_config() -> BootConfig {
    read_boot_config_from(Path::new(BOOT_CONFIG_PATH))
}

fn read_boot_config_from(path: &Path) -> BootConfig {
    match std::fs::read(path) {
        Ok(bytes) => match postcard::from_bytes(&bytes) {
            Ok(config) => config,
            Err(e) => {
                agent_log!("ignoring unreadable {}: {e}", path.display());
                BootConfig::default()
            }
        },
        Err(_) => BootConfig::default(),
    }
}

/// Why the root could not be switched.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct RootError {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    pub source: io::Error,
}

fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> RootError {
    let step = step.into();
    move |source| RootError { step, source }
}

/// Mounts virtiofs `tag` as the new root and makes it `/`.
pub fn switch_to_virtiofs(tag: &str, read_only: bool) -> Result<(), RootError> {
    std::fs::create_dir_all(NEW_ROOT).map_err(step(format!("create {NEW_ROOT}")))?;
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    mount(tag, NEW_ROOT, "virtiofs", flags, VIRTIOFS_OPTIONS)
        .map_err(step(format!("mount virtiofs {tag:?} on {NEW_ROOT}")))?;
    free_initramfs();
    std::env::set_current_dir(NEW_ROOT).map_err(step("chdir to the new root"))?;
    mount(".", "/", "", libc::MS_MOVE, "").map_err(step("move the new root onto /"))?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: a valid C string.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(step("chroot into the new root")(io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(step("chdir to /"))?;
    Ok(())
}

/// Mounts the host-requested filesystems in order; failures are returned so
/// the agent can report them, the rest still get mounted.
pub fn mount_requested(mounts: &[GuestMount]) -> Vec<RootError> {
    mounts.iter().filter_map(|m| mount_one(m).err()).collect()
}

fn mount_one(m: &GuestMount) -> Result<(), RootError> {
    if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
        return Err(step(format!("mount on {:?}", m.target))(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the target must be an absolute path without ..",
        )));
    }
    std::fs::create_dir_all(&m.target).map_err(step(format!("create {}", m.target)))?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if m.read_only {
        flags |= libc::MS_RDONLY;
    }
    match &m.source {
        MountSource::Virtiofs { tag } => mount(tag, &m.target, "virtiofs", flags, VIRTIOFS_OPTIONS)
            .map_err(step(format!("mount virtiofs {tag:?} on {}", m.target))),
        MountSource::Tmpfs { size_bytes } => {
            let data = match size_bytes {
                Some(n) => format!("mode=1777,size={n}"),
                None => "mode=1777".to_string(),
            };
            mount("tmpfs", &m.target, "tmpfs", flags, &data)
                .map_err(step(format!("mount tmpfs on {}", m.target)))
        }
    }
}

/// `mount(2)` with Rust strings (an empty `fstype` is passed as NULL, as a
/// move or bind wants).
pub(super) fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let cstr = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let fstype_ptr = if fstype.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        fstype.as_ptr()
    };
    // SAFETY: valid C strings (or null for the type of a move) that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype_ptr,
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Deletes the initramfs's files (it is a RAM filesystem: its pages stay
/// allocated until the files go), staying on the initramfs's own device so
/// nothing mounted on it is touched. The agent's own binary is kept: its
/// pages stay pinned while it runs anyway, and `/run/msbvm/bin/msbvm` is a
/// bind mount of it, which Linux refuses for an unlinked file.
fn free_initramfs() {
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_tree_on_device(Path::new("/"), root.dev(), own_binary_inode());
}

/// The inode of the agent's binary on the initramfs. `/proc` is not mounted yet, so not
/// through `/proc/self/exe` (which made this `None`, deleted the binary, failed the bind
/// mount and copied 2.7 MB into `/run` on every boot): through the path the kernel ran,
/// `argv[0]` (`/init`).
fn own_binary_inode() -> Option<u64> {
    let path = std::env::args_os()
        .next()
        .filter(|p| Path::new(p).is_absolute())
        .unwrap_or_else(|| "/init".into());
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn remove_tree_on_device(dir: &Path, dev: u64, keep: Option<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_device(&path, dev, keep);
            if path != Path::new(NEW_ROOT) {
                let _ = std::fs::remove_dir(&path);
            }
        } else if keep != Some(meta.ino()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_boot_config_from` makes of a config file holding
    /// `contents` (`None`: no file at all).
    fn read_back(contents: Option<&[u8]>) -> BootConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.bin");
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        read_boot_config_from(&path)
    }

    #[test]
    fn a_missing_or_garbled_config_means_defaults() {
        assert_eq!(read_back(None), BootConfig::default());
        assert_eq!(read_back(Some(&[0xff; 7])), BootConfig::default());
    }

    #[test]
    fn a_written_config_is_read_back() {
        let config = BootConfig {
            root_tag: Some("root".into()),
            ..BootConfig::default()
        };
        let bytes = postcard::to_stdvec(&config).unwrap();
        assert_eq!(read_back(Some(&bytes)), config);
    }

    #[test]
    fn relative_or_dotdot_targets_are_refused() {
        for target in ["relative", "/a/../b"] {
            let m = GuestMount {
                source: MountSource::Tmpfs { size_bytes: None },
                target: target.into(),
                read_only: false,
            };
            let err = mount_one(&m).unwrap_err();
            assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput, "{target}");
        }
    }

    #[test]
    fn removal_stays_on_one_device_and_keeps_the_new_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::fs::write(dir.path().join("g"), b"y").unwrap();
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        remove_tree_on_device(dir.path(), dev, None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Another device id: nothing is removed.
        std::fs::write(dir.path().join("h"), b"z").unwrap();
        remove_tree_on_device(dir.path(), dev.wrapping_add(1), None);
        assert!(dir.path().join("h").exists());
        // The kept inode (the agent's binary) survives.
        let keep = std::fs::metadata(dir.path().join("h")).unwrap().ino();
        std::fs::write(dir.path().join("i"), b"w").unwrap();
        remove_tree_on_device(dir.path(), dev, Some(keep));
        assert!(dir.path().join("h").exists());
        assert!(!dir.path().join("i").exists());
    }
}
