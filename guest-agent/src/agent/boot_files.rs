//! Files the agent puts into the guest's root at boot (`/etc/resolv.conf`, `/etc/hosts`, CA
//! bundles), written so that a root shared with the host (`--rootfs DIR`) is never changed.
//!
//! On the sandbox's own root (an image's writable layer) the file is replaced in place, which
//! tools that later rewrite it (`update-ca-certificates`, a DHCP client) expect. On a shared
//! root the new content goes to a file on `/run` (the agent's tmpfs) that is bind-mounted over
//! the path, in the guest's mount table only: the host directory keeps its own file. A path
//! that does not exist there gets an empty file to mount over (the only trace left on the host,
//! and only when the directory lacked that file).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the copies mounted over a shared root's files live (on the agent's `/run` tmpfs).
const SHADOW_DIR: &str = "run/msbvm/boot-files";

/// How boot files reach the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The root is the sandbox's own: files are replaced in place.
    InPlace,
    /// The root is a host directory: files are shadowed by bind mounts.
    Shadowed,
}

impl Placement {
    /// The placement for a root that is (`true`) or is not a host directory.
    pub fn for_root(shared_with_host: bool) -> Placement {
        if shared_with_host {
            Placement::Shadowed
        } else {
            Placement::InPlace
        }
    }
}

/// Gives `root/rel` the content `content` the way `placement` says. In place, the write goes
/// through a rename so readers never see half a file, and a symlink at the path (images often
/// point resolv.conf at a resolver daemon's runtime file) is replaced, not followed.
pub fn place(root: &Path, rel: &str, content: &[u8], placement: Placement) -> io::Result<()> {
    let path = root.join(rel);
    match placement {
        Placement::InPlace => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".msbvm-tmp");
            std::fs::write(&tmp, content)?;
            std::fs::rename(&tmp, &path)
        }
        Placement::Shadowed => {
            let shadow = shadow_path(root, rel);
            if let Some(parent) = shadow.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&shadow, content)?;
            if std::fs::metadata(&path).is_err() {
                // Missing, or a dangling symlink: there must be a file to mount over.
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(io::Error::other(format!(
                        "{} is a dangling symlink on a root shared with the host",
                        path.display()
                    )));
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(&path)?;
            }
            bind(&shadow, &path)
        }
    }
}

/// Where the shadow of `rel` lives (one flat directory; `/` in the path becomes `_`).
fn shadow_path(root: &Path, rel: &str) -> PathBuf {
    root.join(SHADOW_DIR)
        .join(rel.trim_start_matches('/').replace('/', "_"))
}

/// Bind-mounts the file `source` over `target`.
fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (source, target) = (c(source)?, c(target)?);
    // SAFETY: valid C strings that outlive the call; a bind mount takes no type or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("target"), "outside").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("target"),
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        place(dir.path(), "etc/resolv.conf", b"new", Placement::InPlace).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/resolv.conf")).unwrap(),
            b"new"
        );
        assert_eq!(
            std::fs::read(dir.path().join("target")).unwrap(),
            b"outside"
        );
    }

    #[test]
    fn shadows_are_flat_under_run() {
        assert_eq!(
            shadow_path(Path::new("/"), "etc/ssl/certs/ca-certificates.crt"),
            Path::new("/run/msbvm/boot-files/etc_ssl_certs_ca-certificates.crt")
        );
    }

    #[test]
    fn a_dangling_symlink_on_a_shared_root_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.path().join("etc/resolv.conf")).unwrap();
        let err = place(dir.path(), "etc/resolv.conf", b"x", Placement::Shadowed).unwrap_err();
        assert!(err.to_string().contains("dangling"), "{err}");
        // The shadow was written; the host directory's link is untouched.
        assert!(
            std::fs::symlink_metadata(dir.path().join("etc/resolv.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
