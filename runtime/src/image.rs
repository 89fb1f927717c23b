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
    use std::io::Read;
    let unreadable = |e: std::io::Error| format!("cannot be read ({e})");
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // The program headers follow the ELF header in any linker's output: the head of the
    // file answers without reading all of it (the agent is megabytes, read per sandbox).
    let mut bytes = Vec::new();
    file.take(ELF_HEAD_LEN)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if elf_headers_end(&bytes).is_some_and(|end| end > bytes.len()) {
        bytes = std::fs::read(path).map_err(unreadable)?;
    }
    match elf_has_interpreter(&bytes) {
        Some(true) => Err("is dynamically linked".into()),
        // Not an ELF we understand (a script in tests, another arch): let the guest decide.
        Some(false) | None => Ok(()),
    }
}

/// How much of a binary [`check_static`] reads first.
const ELF_HEAD_LEN: u64 = 64 * 1024;

/// Where the program header table of a 64-bit little-endian ELF ends; `None` if `elf` does
/// not start like one.
fn elf_headers_end(elf: &[u8]) -> Option<usize> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let phoff = usize::try_from(u64::from_le_bytes(elf[32..40].try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16::from_le_bytes([elf[54], elf[55]]));
    let phnum = usize::from(u16::from_le_bytes([elf[56], elf[57]]));
    phoff.checked_add(phentsize.checked_mul(phnum)?)
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
///
/// Two newc archives back to back, which the kernel unpacks in turn: [`build_shared`]'s,
/// the same for every sandbox (and kept in [`SharedArchive`]'s cache), then
/// [`build_own`]'s.
pub fn build(
    hostname: &str,
    agent: &Path,
    busybox: Option<&Path>,
    boot: &BootConfig,
) -> Result<Vec<u8>> {
    let mut bytes = build_shared(agent, busybox)?.to_bytes();
    bytes.extend(build_own(hostname, boot, busybox.is_some())?.to_bytes());
    Ok(bytes)
}

/// The part of the initramfs that depends only on the agent and busybox binaries: the
/// directories, `/dev/console`, the agent as `/init`, and with `busybox` its userland and
/// the `/etc` files every sandbox gets.
pub fn build_shared(agent: &Path, busybox: Option<&Path>) -> Result<Initramfs> {
    let mut image = Initramfs::new();
    // /dev/console: the kernel opens it for init's stdio before anything is mounted.
    for dir in ["/dev", "/msbvm"] {
        image.dir(dir, 0o755);
    }
    image.char_dev("/dev/console", 0o600, 5, 1);
    image
        .host_file("/init", agent)
        .map_err(|e| Error::AgentMissing(format!("cannot add the agent: {e}")))?;
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
    Ok(image)
}

/// The part of sandbox `hostname`'s initramfs that is its own: its boot configuration, and
/// for a root that stays the initramfs (`with_busybox`) `/etc/hosts` and `/etc/hostname`.
/// Its directories come from [`build_shared`]'s archive, unpacked first.
pub fn build_own(hostname: &str, boot: &BootConfig, with_busybox: bool) -> Result<Initramfs> {
    let mut image = Initramfs::new();
    let boot_bytes = postcard::to_stdvec(boot)
        .map_err(|e| Error::InvalidConfig(format!("cannot encode the boot configuration: {e}")))?;
    image.file(BOOT_CONFIG_PATH, 0o600, boot_bytes);
    if with_busybox {
        image.file(
            "/etc/hosts",
            0o644,
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost\n"),
        );
        image.file("/etc/hostname", 0o644, format!("{hostname}\n"));
    }
    Ok(image)
}

/// Bumped whenever [`build_shared`] changes what it puts in the archive, so that no cache
/// made by an older msbvm is used.
const SHARED_FORMAT: u32 = 1;

/// [`build_shared`]'s archive for one agent (and busybox), built once and kept in a cache
/// directory for every later sandbox: building it copies the 2.7 MB agent three times
/// (tens of milliseconds of a sandbox's start in an emulated machine), copying the cached
/// file into a sandbox's initramfs is one copy inside the kernel.
///
/// The cache entry is named by the binaries' identity (device, inode, size, change and
/// modification times), so a rebuilt agent gets a new one, and the entries of other
/// binaries are removed when one is added. Opened before the runtime confines itself (the
/// cache is outside what it may reach later); where the cache cannot be written, the
/// archive is kept in memory for this sandbox only.
pub enum SharedArchive {
    /// The cache entry, open for reading.
    Cached(std::fs::File),
    /// Built for this sandbox alone.
    Built(Vec<u8>),
}

impl SharedArchive {
    /// The archive for `agent` and `busybox`, from `cache_dir` or built (and stored there).
    pub fn open(cache_dir: &Path, agent: &Path, busybox: Option<&Path>) -> Result<Self> {
        let key = match shared_key(agent, busybox) {
            Ok(key) => key,
            Err(e) => {
                tracing::debug!("initramfs cache: cannot identify the binaries: {e}");
                return Ok(SharedArchive::Built(
                    build_shared(agent, busybox)?.to_bytes(),
                ));
            }
        };
        let name = format!("{key}.cpio");
        let path = cache_dir.join(&name);
        if let Ok(file) = std::fs::File::open(&path) {
            return Ok(SharedArchive::Cached(file));
        }
        let bytes = build_shared(agent, busybox)?.to_bytes();
        match store(cache_dir, &name, &bytes) {
            Ok(file) => Ok(SharedArchive::Cached(file)),
            Err(e) => {
                tracing::debug!(
                    "initramfs cache: cannot store {}: {e}; building per sandbox",
                    path.display()
                );
                Ok(SharedArchive::Built(bytes))
            }
        }
    }

    /// Writes the sandbox's initramfs to `path`: this archive, then `own` ([`build_own`]).
    pub fn write_initrd(&self, path: &Path, own: &Initramfs) -> Result<()> {
        self.write_to(path, own)
            .map_err(Error::io(format!("writing {}", path.display())))
    }

    fn write_to(&self, path: &Path, own: &Initramfs) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let mut out = std::fs::File::create(path)?;
        match self {
            SharedArchive::Cached(file) => {
                let mut file = file;
                file.seek(SeekFrom::Start(0))?;
                // File to file: copy_file_range, the bytes never leave the kernel.
                std::io::copy(&mut file, &mut out)?;
            }
            SharedArchive::Built(bytes) => out.write_all(bytes)?,
        }
        own.write_to(&mut out)
    }
}

/// The cache key of `agent` and `busybox`: a hash of the format and the files' identities.
fn shared_key(agent: &Path, busybox: Option<&Path>) -> std::io::Result<String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SHARED_FORMAT.hash(&mut h);
    for path in std::iter::once(agent).chain(busybox) {
        let m = std::fs::metadata(path)?;
        path.hash(&mut h);
        (m.dev(), m.ino(), m.size()).hash(&mut h);
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()).hash(&mut h);
    }
    busybox.is_some().hash(&mut h);
    Ok(format!("shared-{:016x}", h.finish()))
}

/// Stores `bytes` as `cache_dir/name` (whole or not at all: written aside, then renamed),
/// removes the other entries, and opens it.
fn store(cache_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(cache_dir)?;
    let tmp = cache_dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    let path = cache_dir.join(name);
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Entries of binaries replaced since: a runtime still copying one holds it open.
    for entry in std::fs::read_dir(cache_dir)?.flatten() {
        let other = entry.file_name();
        let other = other.to_string_lossy();
        if other != name && other.starts_with("shared-") && other.ends_with(".cpio") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    std::fs::File::open(&path)
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
        let bytes = build("my-box", &agent, Some(&busybox), &boot).unwrap();
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
        let bytes = build("my-box", &agent, None, &boot).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["init\0", "dev/console\0", "msbvm/boot.bin\0"] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        for absent in ["etc/passwd", "etc/hosts", "bin/busybox", "tmp\0", "my-box"] {
            assert!(!text.contains(absent), "{absent:?} is there");
        }
    }

    /// The cached shared archive and the sandbox's own one make the same initramfs as
    /// building it whole; a changed agent gets a new entry and the old one goes; a cache that
    /// cannot be written still gives the same initramfs.
    #[test]
    fn the_shared_archive_is_cached_per_agent_and_the_initramfs_is_the_same() {
        let tmp = TempDir::new().unwrap();
        let agent = script(tmp.path(), "agent", "exit 0");
        let cache = tmp.path().join("cache/initramfs");
        let boot = BootConfig {
            root_tag: Some("root".into()),
            ..BootConfig::default()
        };
        let own = build_own("my-box", &boot, false).unwrap();
        let initrd = tmp.path().join("initrd.cpio");
        let entries = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };

        let first = SharedArchive::open(&cache, &agent, None).unwrap();
        assert!(matches!(first, SharedArchive::Cached(_)));
        first.write_initrd(&initrd, &own).unwrap();
        let whole = build("my-box", &agent, None, &boot).unwrap();
        assert_eq!(std::fs::read(&initrd).unwrap(), whole);
        let shared_len = build_shared(&agent, None).unwrap().to_bytes().len();
        // The kernel takes the second archive where it starts 4-byte aligned.
        assert_eq!(shared_len % 4, 0);
        assert_eq!(&whole[shared_len..shared_len + 6], b"070701");
        let cached = entries(&cache);
        assert_eq!(cached.len(), 1, "{cached:?}");

        // Served from the cache: the same entry, the same bytes (written twice over the
        // same file handle's offset too).
        let again = SharedArchive::open(&cache, &agent, None).unwrap();
        for _ in 0..2 {
            again.write_initrd(&initrd, &own).unwrap();
            assert_eq!(std::fs::read(&initrd).unwrap(), whole);
        }
        assert_eq!(entries(&cache), cached);

        // A rebuilt agent: a new entry, the old one gone.
        std::fs::write(&agent, "#!/bin/sh\nexit 10\n").unwrap();
        let rebuilt = SharedArchive::open(&cache, &agent, None).unwrap();
        rebuilt.write_initrd(&initrd, &own).unwrap();
        assert_eq!(
            std::fs::read(&initrd).unwrap(),
            build("my-box", &agent, None, &boot).unwrap()
        );
        let now = entries(&cache);
        assert_eq!(now.len(), 1);
        assert_ne!(now, cached);

        // No cache to be had: built for this sandbox, same initramfs.
        let not_a_dir = tmp.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let built = SharedArchive::open(&not_a_dir.join("initramfs"), &agent, None).unwrap();
        assert!(matches!(built, SharedArchive::Built(_)));
        built.write_initrd(&initrd, &own).unwrap();
        assert_eq!(
            std::fs::read(&initrd).unwrap(),
            build("my-box", &agent, None, &boot).unwrap()
        );
    }

    /// The check reads the head of a binary, and all of it only where the program headers
    /// lie further in.
    #[test]
    fn a_dynamic_binary_is_found_from_its_head_or_its_far_program_headers() {
        let tmp = TempDir::new().unwrap();
        let host_exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let near = tmp.path().join("near");
        std::fs::write(&near, &host_exe).unwrap();
        assert_eq!(check_static(&near), Err("is dynamically linked".into()));
        // The same headers moved past the head: found all the same.
        let mut far = host_exe.clone();
        let phoff = u64::from_le_bytes(far[32..40].try_into().unwrap()) as usize;
        let end = elf_headers_end(&far).unwrap();
        let table = far[phoff..end].to_vec();
        let new_off = (ELF_HEAD_LEN as usize + 4096).max(far.len());
        far.resize(new_off, 0);
        far.extend_from_slice(&table);
        far[32..40].copy_from_slice(&(new_off as u64).to_le_bytes());
        let far_path = tmp.path().join("far");
        std::fs::write(&far_path, &far).unwrap();
        assert!(elf_headers_end(&far).unwrap() > ELF_HEAD_LEN as usize);
        assert_eq!(check_static(&far_path), Err("is dynamically linked".into()));
        let script = script(tmp.path(), "agent", "exit 0");
        assert_eq!(check_static(&script), Ok(()));
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
