//! A sandbox's record on disk and who owns its name.
//!
//! Ownership is a `flock` on `<dir>/lock`: the runtime takes it exclusively when it claims the
//! name and holds it until it exits, so the kernel releases it however the runtime dies. That
//! makes liveness exact (no PID reuse races): a sandbox is live exactly when its lock is held.
//! Readers probe with a brief shared lock. `state.json` is written only by the runtime
//! (atomically, by rename) and describes the sandbox for `ls` and for other processes.
//!
//! Privacy: the record holds the sandbox's environment (`-e` values, often secrets), so the
//! data directory, `sandboxes/` and every sandbox directory are 0700 and `state.json` is 0600,
//! created with that mode (never readable by others, not even for a moment). Installs made
//! before this rule are tightened when a sandbox is claimed or its record read.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use msbvm_protocol::BootTimes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::paths::SandboxDir;

/// Lifecycle of a sandbox as recorded in `state.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The runtime is preparing or booting the VM.
    Starting,
    /// The guest agent reported ready.
    Running,
    /// A stop is under way.
    Stopping,
    /// The VM ended normally; the record stays until `rm`.
    Stopped,
    /// The sandbox failed to boot.
    Failed,
    /// The record says active, but its runtime is gone (killed or crashed). Never written to
    /// disk: computed when a record is read.
    Crashed,
}

impl Status {
    /// Whether the runtime should be alive in this state.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Starting | Status::Running | Status::Stopping)
    }

    /// The word used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
            Status::Crashed => "crashed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The sandbox's name.
    pub name: String,
    /// The runtime's process id.
    pub pid: u32,
    /// When it was created, in seconds since the Unix epoch.
    pub created: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Environment every exec in the sandbox starts with.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Lifecycle state (as the runtime last wrote it).
    pub status: Status,
    /// Whether the sandbox outlives its creator.
    pub detached: bool,
    // Records of older runtimes lack the optional fields below: serde reads a missing
    // `Option` as `None`.
    /// How the VM ended, once it has.
    pub exit: Option<String>,
    /// The guest's boot timestamps, once ready.
    pub boot: Option<BootTimes>,
    /// Default working directory of execs (from the image or the user).
    pub workdir: Option<String>,
    /// Default user id of execs (from the image or the user).
    pub uid: Option<u32>,
    /// Default group id of execs.
    pub gid: Option<u32>,
    /// The image the root filesystem comes from, if any.
    pub image: Option<String>,
    /// The image's default command (entrypoint and command).
    #[serde(default)]
    pub command: Vec<String>,
    /// The sandbox that created this one from inside ([`crate::spawn`]).
    #[serde(default)]
    pub parent: Option<String>,
}

impl StateRecord {
    /// Reads `dir`'s record; `Ok(None)` when there is none (yet).
    pub fn read(dir: &SandboxDir) -> Result<Option<StateRecord>> {
        use std::io::Read;
        let path = dir.state_file();
        let mut text = Vec::new();
        let read = File::open(&path).and_then(|mut f| {
            // An install from before the privacy rule: tighten what we own.
            tighten(&f, PRIVATE_FILE);
            f.read_to_end(&mut text)
        });
        match read {
            Ok(_) => tighten_path(dir.path(), PRIVATE_DIR),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| Error::CorruptState { path, source })
    }

    /// Writes the record atomically (a reader sees the old or the new one, never half).
    pub fn write(&self, dir: &SandboxDir) -> Result<()> {
        let path = dir.state_file();
        let tmp = dir.path().join("state.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|source| Error::CorruptState {
            path: path.clone(),
            source,
        })?;
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)
            .and_then(|mut f| {
                // A leftover temporary file keeps its old mode on open: set it.
                f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
                io::Write::write_all(&mut f, &text)
            });
        written
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(Error::io(format!("writing {}", path.display())))
    }
}

/// Mode of the data directory, `sandboxes/` and each sandbox directory.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of `state.json`.
pub const PRIVATE_FILE: u32 = 0o600;

/// Narrows an open file or directory we own to `mode` when others may read it.
fn tighten(f: &File, mode: u32) {
    let Ok(meta) = f.metadata() else { return };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me && meta.mode() & 0o077 != 0 {
        if let Err(e) = f.set_permissions(fs::Permissions::from_mode(mode)) {
            tracing::warn!("cannot make a private msbvm file private: {e}");
        }
    }
}

fn tighten_path(path: &Path, mode: u32) {
    if let Ok(f) = File::open(path) {
        tighten(&f, mode);
    }
}

/// Creates `dir` and missing parents as private directories; an existing one is tightened
/// when `tighten_existing` (only for directories that are msbvm's alone).
fn private_dir(dir: &Path, tighten_existing: bool) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(Error::io(format!("creating {}", dir.display())))?;
    if tighten_existing {
        tighten_path(dir, PRIVATE_DIR);
    }
    Ok(())
}

/// Makes the data directory holding `sandboxes` and `sandboxes` itself private. A missing
/// data directory is created 0700; an existing one is tightened only at the default location
/// ([`crate::paths::default_home`]), since one named by `MSBVM_HOME` may be a shared
/// directory. `sandboxes/` is always msbvm's and always made 0700, which keeps every record
/// private whatever the data directory's mode.
fn private_home(sandboxes: &Path) -> Result<()> {
    if let Some(home) = sandboxes.parent().filter(|h| !h.as_os_str().is_empty()) {
        let default = crate::paths::default_home().ok();
        private_dir(home, default.as_deref() == Some(home))?;
    }
    private_dir(sandboxes, true)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The runtime's hold on a sandbox name; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
}

/// How often and how long `claim` retries a lock held for a moment by a reader's probe.
const CLAIM_RETRIES: u32 = 25;
const CLAIM_RETRY_DELAY: Duration = Duration::from_millis(2);

/// Claims `dir`'s name for a new sandbox: creates the directory, takes the lock, and clears
/// whatever a dead previous owner left. Fails with [`Error::NameInUse`] when a live sandbox
/// has the name.
pub fn claim(dir: &SandboxDir) -> Result<Claim> {
    let parent = dir.path().parent().unwrap_or(Path::new("/"));
    private_home(parent)?;
    // A remover can delete the directory between our open and our lock; then try again.
    for _ in 0..3 {
        let fresh = match fs::DirBuilder::new().mode(PRIVATE_DIR).create(dir.path()) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tighten_path(dir.path(), PRIVATE_DIR);
                false
            }
            Err(e) => return Err(Error::io(format!("creating {}", dir.path().display()))(e)),
        };
        let lock_path = dir.lock_file();
        let lock = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("opening {}", lock_path.display()))(e)),
        };
        if !lock_with_retries(&lock, libc::LOCK_EX)? {
            return Err(Error::NameInUse {
                name: dir.name().to_string(),
            });
        }
        if !same_file(&lock, &lock_path) {
            continue;
        }
        if !fresh {
            clear_except_lock(dir)?;
        }
        return Ok(Claim { _lock: lock });
    }
    Err(Error::NameInUse {
        name: dir.name().to_string(),
    })
}

/// Whether a runtime holds `dir`'s lock (the sandbox is alive).
pub fn is_live(dir: &SandboxDir) -> bool {
    let Ok(lock) = File::open(dir.lock_file()) else {
        return false;
    };
    match try_flock(&lock, libc::LOCK_SH) {
        Ok(true) => {
            // SAFETY: unlocking our own descriptor.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            false
        }
        Ok(false) => true,
        // A lock we cannot even probe: assume alive rather than delete someone's sandbox.
        Err(_) => true,
    }
}

/// Removes `dir` entirely unless a live runtime holds it. Returns `Ok(false)` when it is live
/// (nothing removed), `Ok(true)` when removed or already gone.
pub fn remove_if_dead(dir: &SandboxDir) -> Result<bool> {
    let lock_path = dir.lock_file();
    let lock = match OpenOptions::new().read(true).write(true).open(&lock_path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("opening {}", lock_path.display()))(e)),
    };
    if let Some(lock) = &lock {
        if !lock_with_retries(lock, libc::LOCK_EX)? {
            return Ok(false);
        }
    }
    // Holding the lock (or there being none), nobody owns the name: removing is safe. A
    // runtime that opened the old lock file meanwhile finds it unlinked and starts over.
    match fs::remove_dir_all(dir.path()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(format!("removing {}", dir.path().display()))(e)),
    }
}

fn lock_with_retries(file: &File, op: libc::c_int) -> Result<bool> {
    for attempt in 0..CLAIM_RETRIES {
        match try_flock(file, op) {
            Ok(true) => return Ok(true),
            Ok(false) if attempt + 1 < CLAIM_RETRIES => std::thread::sleep(CLAIM_RETRY_DELAY),
            Ok(false) => return Ok(false),
            Err(e) => return Err(Error::io("locking a sandbox directory")(e)),
        }
    }
    Ok(false)
}

/// `flock(op | LOCK_NB)`: `Ok(false)` when someone else holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn clear_except_lock(dir: &SandboxDir) -> Result<()> {
    let entries =
        fs::read_dir(dir.path()).map_err(Error::io(format!("reading {}", dir.path().display())))?;
    for entry in entries.flatten() {
        if entry.file_name() == "lock" {
            continue;
        }
        let path = entry.path();
        let result = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(Error::io(format!("removing stale {}", path.display()))(e));
            }
        }
    }
    Ok(())
}

/// Lines of the guest console put into boot-failure errors.
pub const CONSOLE_TAIL_LINES: usize = 30;

/// The last `max_lines` lines of a text file (lossy UTF-8), reading at most its last 64 KiB
/// and that of its rotated part ([`crate::logfile`]).
pub fn tail_lines(path: &Path, max_lines: usize) -> String {
    let mut lines = last_lines(path, max_lines);
    if lines.len() < max_lines {
        // Just after a rotation the live log is short: the rest is in its rotated part.
        let rotated = crate::logfile::rotated_path(path);
        let mut older = last_lines(&rotated, max_lines - lines.len());
        older.append(&mut lines);
        lines = older;
    }
    lines.join("\n")
}

/// The last `max_lines` non-blank lines of the last 64 KiB of `path`.
fn last_lines(path: &Path, max_lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX_READ: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_READ);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    // Serial consoles end lines with "\r\n"; drop the carriage returns.
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(max_lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Before: the directories took the umask's 0755 and `state.json` 0644, so every local
    /// user could read a sandbox's `-e` secrets.
    #[test]
    fn state_is_private_from_creation_and_old_installs_are_tightened() {
        let tmp = TempDir::new().unwrap();
        let home = tmp.path().join("home");
        let dir = SandboxDir::in_home(&home, "p").unwrap();
        let claim = claim(&dir).unwrap();
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&home.join("sandboxes")), 0o700);
        assert_eq!(mode(dir.path()), 0o700);
        // A leftover temporary file with a wide mode does not widen the record.
        let tmp_file = dir.path().join("state.json.tmp");
        fs::write(&tmp_file, b"").unwrap();
        fs::set_permissions(&tmp_file, fs::Permissions::from_mode(0o666)).unwrap();
        record("p").write(&dir).unwrap();
        assert_eq!(mode(&dir.state_file()), 0o600);
        drop(claim);

        // An install from before: everything world-readable.
        for p in [&home, &home.join("sandboxes"), &dir.path().to_path_buf()] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(dir.state_file(), fs::Permissions::from_mode(0o644)).unwrap();
        StateRecord::read(&dir).unwrap().unwrap();
        assert_eq!(mode(&dir.state_file()), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
        let _claim = super::claim(&dir).unwrap();
        assert_eq!(mode(&home.join("sandboxes")), 0o700);
    }

    #[test]
    fn the_default_home_is_tightened() {
        let tmp = TempDir::new().unwrap();
        let _env = crate::test_support::EnvGuard::set(&[
            ("MSBVM_HOME", None),
            ("XDG_DATA_HOME", Some(tmp.path())),
        ]);
        let home = crate::paths::msbvm_home().unwrap();
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        let _claim = claim(&SandboxDir::in_home(&home, "p").unwrap()).unwrap();
        assert_eq!(mode(&home), 0o700);
    }

    #[test]
    fn a_shared_home_that_is_not_msbvm_s_is_left_alone() {
        let tmp = TempDir::new().unwrap();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = SandboxDir::in_home(&shared, "p").unwrap();
        let _claim = claim(&dir).unwrap();
        assert_eq!(mode(&shared), 0o755);
        assert_eq!(mode(&shared.join("sandboxes")), 0o700);
    }

    fn record(name: &str) -> StateRecord {
        crate::test_support::state_record(name, Status::Running, false)
    }

    #[test]
    fn record_roundtrips_and_missing_is_none() {
        let tmp = TempDir::new().unwrap();
        let dir = SandboxDir::in_home(tmp.path(), "box").unwrap();
        assert_eq!(StateRecord::read(&dir).unwrap(), None);
        let _claim = claim(&dir).unwrap();
        record("box").write(&dir).unwrap();
        assert_eq!(StateRecord::read(&dir).unwrap(), Some(record("box")));
        fs::write(dir.state_file(), b"{nope").unwrap();
        let e = StateRecord::read(&dir).unwrap_err();
        assert!(matches!(e, Error::CorruptState { .. }), "{e}");
    }

    #[test]
    fn a_held_name_is_in_use_and_live() {
        let tmp = TempDir::new().unwrap();
        let dir = SandboxDir::in_home(tmp.path(), "box").unwrap();
        assert!(!is_live(&dir));
        let held = claim(&dir).unwrap();
        assert!(is_live(&dir));
        let e = claim(&dir).unwrap_err();
        assert!(matches!(e, Error::NameInUse { .. }), "{e}");
        assert!(!remove_if_dead(&dir).unwrap());
        assert!(dir.path().exists());
        drop(held);
        assert!(!is_live(&dir));
    }

    #[test]
    fn stale_state_is_cleared_on_claim() {
        let tmp = TempDir::new().unwrap();
        let dir = SandboxDir::in_home(tmp.path(), "box").unwrap();
        drop(claim(&dir).unwrap());
        record("box").write(&dir).unwrap();
        fs::write(dir.console_log(), b"old").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let _again = claim(&dir).unwrap();
        assert!(!dir.console_log().exists());
        assert!(!dir.path().join("sub").exists());
        assert_eq!(StateRecord::read(&dir).unwrap(), None);
    }

    #[test]
    fn dead_sandbox_is_removed() {
        let tmp = TempDir::new().unwrap();
        let dir = SandboxDir::in_home(tmp.path(), "box").unwrap();
        drop(claim(&dir).unwrap());
        assert!(remove_if_dead(&dir).unwrap());
        assert!(!dir.path().exists());
        // Idempotent.
        assert!(remove_if_dead(&dir).unwrap());
    }

    #[test]
    fn status_words() {
        assert!(Status::Running.is_active());
        assert!(!Status::Crashed.is_active());
        assert_eq!(
            serde_json::to_string(&Status::Stopped).unwrap(),
            "\"stopped\""
        );
    }

    #[test]
    fn tail_reaches_into_the_rotated_part() {
        let tmp = TempDir::new().unwrap();
        let p = tmp.path().join("console.log");
        fs::write(crate::logfile::rotated_path(&p), "a\nb\nc\n").unwrap();
        fs::write(&p, "d\n").unwrap();
        assert_eq!(tail_lines(&p, 3), "b\nc\nd");
    }

    #[test]
    fn tail_keeps_last_nonblank_lines_without_cr() {
        let tmp = TempDir::new().unwrap();
        let p = tmp.path().join("log");
        fs::write(&p, "a\r\nb\r\n\r\nc\r\nd\r\n").unwrap();
        assert_eq!(tail_lines(&p, 2), "c\nd");
        assert_eq!(tail_lines(&p, 10), "a\nb\nc\nd");
        assert_eq!(tail_lines(&tmp.path().join("none"), 3), "");
    }
}
