//! Where sandboxes live on disk, and what a sandbox may be called.
//!
//! Each sandbox has a state directory `$MSBVM_HOME/sandboxes/<name>/` holding its record
//! (`state.json`), the lock its runtime holds while alive (`lock`), its logs (`console.log`,
//! `runtime.log`), the guest's initramfs and the Unix sockets (`vsock.sock`, `vsock.sock_<port>`,
//! `control.sock`). `MSBVM_HOME` defaults to `$XDG_DATA_HOME/msbvm`, else
//! `~/.local/share/msbvm`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable overriding the msbvm data directory.
pub const HOME_ENV: &str = "MSBVM_HOME";

/// Longest sandbox name.
pub const MAX_NAME_LEN: usize = 63;

/// The msbvm data directory (`$MSBVM_HOME`, else `$XDG_DATA_HOME/msbvm`, else
/// `~/.local/share/msbvm`).
pub fn msbvm_home() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var(HOME_ENV) {
        return Ok(home);
    }
    default_home()
}

/// Where the data directory is when `MSBVM_HOME` does not say: a directory that is msbvm's
/// alone (one named by `MSBVM_HOME` may be shared, and its mode is the user's business).
pub(crate) fn default_home() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = var("XDG_DATA_HOME") {
        return Ok(xdg.join("msbvm"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".local/share/msbvm")),
        None => Err(Error::Io {
            context: "finding the msbvm data directory".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "none of MSBVM_HOME, XDG_DATA_HOME and HOME is set; set MSBVM_HOME",
            ),
        }),
    }
}

/// Checks a sandbox name: `[a-z0-9][a-z0-9_.-]{0,62}`. Names become directory names and the
/// guest's hostname, hence the narrow alphabet.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c)))
    {
        return bad(&format!(
            "{c:?} is not allowed (use lowercase letters, digits, '_', '.' and '-')"
        ));
    }
    Ok(())
}

/// The files of one sandbox's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxDir {
    name: String,
    dir: PathBuf,
}

impl SandboxDir {
    /// The directory of sandbox `name` under the msbvm data directory (name checked).
    pub fn for_name(name: &str) -> Result<Self> {
        Self::in_home(&msbvm_home()?, name)
    }

    /// The directory of sandbox `name` under data directory `home` (name checked).
    pub fn in_home(home: &Path, name: &str) -> Result<Self> {
        validate_name(name)?;
        Ok(SandboxDir {
            name: name.to_string(),
            dir: sandboxes_dir(home).join(name),
        })
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The same sandbox's files reached through `dir` instead (the runtime uses `.`, its
    /// working directory, once it may no longer traverse the data directory's parents).
    pub fn reached_through(&self, dir: PathBuf) -> SandboxDir {
        SandboxDir {
            name: self.name.clone(),
            dir,
        }
    }
    /// The record (`state.json`).
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The lock file the runtime holds for its whole life.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The guest console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The runtime's own log.
    pub fn runtime_log(&self) -> PathBuf {
        self.dir.join("runtime.log")
    }
    /// The guest's initramfs (removed when the VM ends).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }
    /// The host side of the VM's vsock device.
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join(VSOCK_SOCKET)
    }
    /// Where guest connections to host vsock port `port` arrive.
    pub fn vsock_port_socket(&self, port: u32) -> PathBuf {
        self.dir.join(format!("{VSOCK_SOCKET}_{port}"))
    }
    /// The runtime's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }
}

/// File name of the vsock device's host socket.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// File name of the runtime control socket.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Network events, one JSON object per line, in the state directory.
pub const NET_EVENTS_FILE: &str = "net-events.jsonl";
/// Where the runtime writes a guest memory dump (`msbvm debug dump-memory`) before the
/// client moves it away.
pub const MEMORY_DUMP_FILE: &str = "memory.dump";

/// The directory holding every sandbox's state directory.
pub fn sandboxes_dir(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in ["a", "0", "web-1", "a.b_c-d", &"x".repeat(63)] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases = [
            ("", "empty"),
            ("-a", "start"),
            (".a", "start"),
            ("A", "start"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("aB", "'B'"),
            (&"x".repeat(64), "63"),
        ];
        for (n, why) in cases {
            let e = validate_name(n).unwrap_err().to_string();
            assert!(e.contains(why), "{n:?}: {e}");
        }
    }

    #[test]
    fn dir_layout() {
        let d = SandboxDir::in_home(Path::new("/h"), "box").unwrap();
        assert_eq!(d.path(), Path::new("/h/sandboxes/box"));
        assert_eq!(
            d.vsock_port_socket(1025),
            Path::new("/h/sandboxes/box/vsock.sock_1025")
        );
        assert!(SandboxDir::in_home(Path::new("/h"), "../x").is_err());
    }
}
