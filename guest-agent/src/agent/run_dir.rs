//! `/run/msbvm`: the agent's directory in every guest.
//!
//! It lives on the `/run` tmpfs the agent mounts itself (so it is the
//! sandbox's own on image roots, `--rootfs` shared roots and initramfs roots
//! alike) and holds the events socket (bound by the events hub) and
//! `bin/msbvm`, the in-guest command, which is the agent's own binary: run
//! under that name it is the guest CLI ([`crate::guest_cli`]).
//!
//! The binary is bind-mounted from `/proc/self/exe` onto an empty file,
//! which costs no memory: the agent's pages are pinned in RAM for its whole
//! life anyway (it runs from the initramfs, a RAM filesystem), whereas a copy
//! would add the binary's size again to the tmpfs. Linux refuses to bind an
//! unlinked file (ENOENT, measured), so the root switch keeps the agent's
//! file when it frees the initramfs ([`super::rootfs`]). If the bind still
//! fails, the binary is copied. Every failure is logged, none is fatal.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use msbvm_protocol::events::GUEST_BIN_DIR;

/// The agent's directory.
pub const RUN_DIR: &str = "/run/msbvm";
/// The in-guest command's name (the guest CLI answers to it).
pub const COMMAND: &str = "msbvm";

/// How the command got into place.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// A bind mount of the agent's binary.
    Bound,
    /// A copy (the bind mount failed, for the reason given).
    Copied(String),
}

/// Creates `/run/msbvm` and `/run/msbvm/bin/msbvm`; returns the problems met.
pub fn set_up() -> Vec<String> {
    let mut problems = Vec::new();
    for dir in [RUN_DIR, GUEST_BIN_DIR] {
        if let Err(e) = make_dir(Path::new(dir)) {
            problems.push(format!("cannot create {dir}: {e}"));
            return problems;
        }
    }
    let target = Path::new(GUEST_BIN_DIR).join(COMMAND);
    match install_command(Path::new("/proc/self/exe"), &target) {
        Ok(Installed::Bound) => {}
        Ok(Installed::Copied(why)) => {
            problems.push(format!("copied the agent to {} ({why})", target.display()))
        }
        Err(e) => problems.push(format!("cannot install {}: {e}", target.display())),
    }
    problems
}

fn make_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Readable and searchable by everyone: any user's programs use the socket.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Puts the binary `exe` at `target`: bound over an empty file, or copied.
pub fn install_command(exe: &Path, target: &Path) -> io::Result<Installed> {
    std::fs::write(target, b"")?;
    let bound = super::rootfs::mount(
        &exe.to_string_lossy(),
        &target.to_string_lossy(),
        "",
        libc::MS_BIND,
        "",
    );
    match bound {
        Ok(()) => {
            // Read-only: nobody may change the command under other users.
            // (The running agent's text cannot be written anyway: ETXTBSY.)
            let _ = super::rootfs::mount(
                "",
                &target.to_string_lossy(),
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                "",
            );
            Ok(Installed::Bound)
        }
        Err(why) => {
            std::fs::copy(exe, target)?;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
            Ok(Installed::Copied(format!("bind mount: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_installed_one_way_or_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("agent");
        std::fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = dir.path().join(COMMAND);
        let how = install_command(&exe, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"#!/bin/sh\necho hi\n");
        if how == Installed::Bound {
            let path = std::ffi::CString::new(target.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: a valid C string naming our own mount.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
