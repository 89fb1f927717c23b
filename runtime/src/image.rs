//! The guest's initramfs: the agent as `/init`, the distribution's static busybox with a
//! symlink per applet, the usual empty directories and a minimal `/etc`.
//!
//! The guest has no libc, so both binaries must be static; a dynamic one would fail inside
//! the guest with a baffling "not found", so it is refused here with the fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use msbvm_kernel::Initramfs;
use msbvm_protocol::boot::{BootConfig, BOOT_CONFIG_PATH};

use msbvm_sdk::{Error, Result};

/// Environment variable naming the guest agent binary.
pub const AGENT_ENV: &str = "MSBVM_AGENT";
/// Environment variable naming the busybox binary for the guest.
pub const BUSYBOX_ENV: &str = "MSBVM_BUSYBOX";
/// File name of the guest agent, looked for next to the `msbvm` executable.
pub const AGENT_NAME: &str = "msbvm-agent";
/// Where the distribution's busybox-static installs busybox.
const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The guest agent: `$MSBVM_AGENT`, else `msbvm-agent` next to this executable.
pub fn find_agent() -> Result<PathBuf> {
    let (path, origin) = match env_path(AGENT_ENV) {
        Some(p) => (p, format!("${AGENT_ENV}")),
        None => {
            let exe = std::env::current_exe().map_err(Error::io("finding the msbvm executable"))?;
            let dir = exe.parent().unwrap_or(Path::new("/"));
            (dir.join(AGENT_NAME), format!("next to {}", exe.display()))
        }
    };
    if !path.is_file() {
        return Err(Error::AgentMissing(format!(
            "the guest agent `{AGENT_NAME}` was not found ({origin}: {}); build it with \
             `cargo build --release -p msbvm-guest-agent` and put it beside msbvm, or set \
             {AGENT_ENV} to its path",
            path.display()
        )));
    }
    check_static(&path).map_err(|why| {
        Error::AgentMissing(format!(
            "the guest agent {} {why}; the guest has no libc, so build it statically \
             (RUSTFLAGS=\"-C target-feature=+crt-static\")",
            path.display()
        ))
    })?;
    Ok(path)
}

/// The busybox for the guest: `$MSBVM_BUSYBOX`, else the distribution's.
pub fn find_busybox() -> Result<PathBuf> {
    let path = match env_path(BUSYBOX_ENV) {
        Some(p) if p.is_file() => p,
        Some(p) => {
            return Err(Error::BusyboxMissing(format!(
                "{BUSYBOX_ENV} is set to {} but no file is there",
                p.display()
            )))
        }
        None => BUSYBOX_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::BusyboxMissing(format!(
                    "busybox was not found at {}; install the static one \
                     (`sudo apt-get install busybox-static`) or set {BUSYBOX_ENV}",
                    BUSYBOX_PATHS.join(" or ")
                ))
            })?,
    };
    check_static(&path).map_err(|why| {
        Error::BusyboxMissing(format!(
            "{} {why}; the guest has no libc: install busybox-static (`sudo apt-get install \
             busybox-static`) or set {BUSYBOX_ENV} to a static busybox",
            path.display()
        ))
    })?;
    Ok(path)
}

/// The applets `busybox --list` names (only plain names; anything odd is skipped).
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox).arg("--list").output().map_err(|e| {
        Error::BusyboxMissing(format!("cannot run {} --list: {e}", busybox.display()))
    })?;
    if !out.status.success() {
        return Err(Error::BusyboxMissing(format!(
            "{} --list failed ({})",
            busybox.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/') && *a != "." && *a != "..")
        .map(str::to_string)
        .collect())
}

/// Fails with a reason when `path` is a dynamically linked ELF executable.
fn check_static(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    match elf_has_interpreter(&bytes) {
        Some(true) => Err("is dynamically linked".into()),
        // Not an ELF we understand (a script in tests, another arch): let the guest decide.
        Some(false) | None => Ok(()),
    }
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP segment; `None` if it is not one.
fn elf_has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let phoff = usize::try_from(u64::from_le_bytes(elf[32..40].try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(off)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The initramfs of sandbox `hostname`: the agent as `/init` and its boot configuration;
/// with `busybox`, also a busybox userland and the few files in `/etc` a shell expects (for
/// sandboxes whose root stays the initramfs). Without it the root is switched to virtio-fs
/// first thing and the agent frees the initramfs right after, so it holds only what the
/// kernel and the agent need before then: every entry more is unpacked by the kernel and
/// deleted by the agent, syscalls that cost milliseconds in an emulated guest.
pub fn build(
    hostname: &str,
    agent: &Path,
    busybox: Option<&Path>,
    boot: &BootConfig,
) -> Result<Initramfs> {
    let mut image = Initramfs::new();
    // /dev/console: the kernel opens it for init's stdio before anything is mounted.
    for dir in ["/dev", "/msbvm"] {
        image.dir(dir, 0o755);
    }
    image.char_dev("/dev/console", 0o600, 5, 1);
    image
        .host_file("/init", agent)
        .map_err(|e| Error::AgentMissing(format!("cannot add the agent: {e}")))?;
    let boot_bytes = postcard::to_stdvec(boot)
        .map_err(|e| Error::InvalidConfig(format!("cannot encode the boot configuration: {e}")))?;
    image.file(BOOT_CONFIG_PATH, 0o600, boot_bytes);
    let Some(busybox) = busybox else {
        return Ok(image);
    };
    for dir in ["/proc", "/sys", "/run", "/etc", "/bin"] {
        image.dir(dir, 0o755);
    }
    image.dir("/tmp", 0o1777);
    image.dir("/root", 0o700);
    let applets = busybox_applets(busybox)?;
    image
        .host_file("/bin/busybox", busybox)
        .map_err(|e| Error::BusyboxMissing(format!("cannot add busybox: {e}")))?;
    for applet in &applets {
        image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    image.file(
        "/etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    image.file("/etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n");
    image.file(
        "/etc/hosts",
        0o644,
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost\n"),
    );
    image.file("/etc/hostname", 0o644, format!("{hostname}\n"));
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_sdk::test_support::EnvGuard;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn initramfs_has_agent_busybox_applets_and_etc() {
        let tmp = TempDir::new().unwrap();
        let agent = script(tmp.path(), "agent", "exit 0");
        let busybox = script(
            tmp.path(),
            "bb",
            "printf 'sh\\nls\\n[\\nbusybox\\n../evil\\n'",
        );
        let boot = BootConfig {
            root_tag: Some("root".into()),
            ..BootConfig::default()
        };
        let bytes = build("my-box", &agent, Some(&busybox), &boot)
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        for needle in [
            "init\0",
            "bin/busybox\0",
            "bin/sh\0",
            "bin/ls\0",
            "bin/[\0",
            "etc/passwd\0",
            "etc/hosts\0",
            "127.0.1.1\tmy-box",
            "dev/console\0",
            "msbvm/boot.bin\0",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        assert!(!text.contains("evil\0"));
    }

    /// For a root switched to virtio-fs: the agent, its configuration and the console, and
    /// nothing the agent would only have to delete.
    #[test]
    fn initramfs_for_a_switched_root_is_minimal() {
        let tmp = TempDir::new().unwrap();
        let agent = script(tmp.path(), "agent", "exit 0");
        let boot = BootConfig {
            root_tag: Some("root".into()),
            ..BootConfig::default()
        };
        let bytes = build("my-box", &agent, None, &boot).unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["init\0", "dev/console\0", "msbvm/boot.bin\0"] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        for absent in ["etc/passwd", "etc/hosts", "bin/busybox", "tmp\0", "my-box"] {
            assert!(!text.contains(absent), "{absent:?} is there");
        }
    }

    #[test]
    fn elf_interpreter_detection() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked like the host's programs; just check it parses.
        assert!(elf_has_interpreter(&exe).is_some());
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_has_interpreter(&[0x7f, b'E', b'L', b'F', 2, 1]), None);
        // A truncated header with a program-header table pointing past the end.
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        fake[32] = 200;
        fake[54] = 56;
        fake[56] = 1;
        assert_eq!(elf_has_interpreter(&fake), None);
    }

    #[test]
    fn missing_busybox_override_says_so() {
        let _env = EnvGuard::set(&[(BUSYBOX_ENV, Some("/nonexistent/bb"))]);
        let e = find_busybox().unwrap_err();
        assert!(matches!(e, Error::BusyboxMissing(_)), "{e}");
        assert!(e.to_string().contains(BUSYBOX_ENV), "{e}");
    }

    #[test]
    fn missing_agent_names_the_fix() {
        let _env = EnvGuard::set(&[(AGENT_ENV, Some("/nonexistent/agent"))]);
        let e = find_agent().unwrap_err();
        assert!(matches!(e, Error::AgentMissing(_)), "{e}");
        assert!(e.to_string().contains("cargo build"), "{e}");
    }
}
