//! The on-disk cache of built kernels, and its publish protocol.
//!
//! Layout under [`cache_dir`]:
//!
//! ```text
//! kernel/<key>/vmlinux               the image (x86_64; with bzImage beside it)
//! kernel/<key>/Image                 the image (aarch64)
//! kernel/<key>/config                the expanded .config it was built with
//! kernel/<key>/build.log             the output of the build
//! kernel/<key>.lock                  flock held while <key> is being built
//! kernel/<key>.tmp-<pid>/            a build in progress
//! kernel/<key>.build-failed.log      the log of the last failed build of <key>
//! kernel/last-build-steps            number of compile steps of the last x86_64 build
//! kernel/last-build-steps-aarch64    the same for aarch64 (progress bars)
//! ```
//!
//! The architecture is part of `<key>`, so the two architectures' entries never collide.
//!
//! A build happens in the `.tmp-<pid>` directory and becomes visible by one `rename`, so an
//! interrupted build never leaves a half-written image under `<key>/`. Builders of the same key
//! serialise on the lock file; the second one waits and then finds the finished image.

use std::env;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::error::{Error, IoContext};

/// The msbvm cache directory: `$MSBVM_CACHE_DIR` if set, else `$XDG_CACHE_HOME/msbvm`, else
/// `$HOME/.cache/msbvm`. Without any of these (a stripped service environment) it falls back
/// to `<tmp>/msbvm-cache-<uid>`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        env::var_os("MSBVM_CACHE_DIR"),
        env::var_os("XDG_CACHE_HOME"),
        env::var_os("HOME"),
    )
}

fn cache_dir_from(
    msbvm: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    // Empty values count as unset, as the XDG base directory spec asks; a relative
    // XDG_CACHE_HOME is invalid by that spec and ignored too.
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(msbvm) {
        return dir;
    }
    if let Some(dir) = set(xdg).filter(|d| d.is_absolute()) {
        return dir.join("msbvm");
    }
    if let Some(home) = set(home) {
        return home.join(".cache").join("msbvm");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    env::temp_dir().join(format!("msbvm-cache-{uid}"))
}

/// The kernel part of the cache (`<cache>/kernel`), seen from one architecture: its image
/// file name and its progress record.
#[derive(Debug, Clone)]
pub(crate) struct KernelCache {
    root: PathBuf,
    arch: Arch,
}

impl KernelCache {
    /// The kernel cache for `arch` inside msbvm cache directory `cache_dir`.
    pub(crate) fn new(cache_dir: &Path, arch: Arch) -> Self {
        KernelCache {
            root: cache_dir.join("kernel"),
            arch,
        }
    }

    /// `<cache>/kernel/<key>`: the published build.
    pub(crate) fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// `<cache>/kernel/<key>/vmlinux` (x86_64) or `.../Image` (aarch64).
    pub(crate) fn image_path(&self, key: &str) -> PathBuf {
        self.entry_dir(key).join(self.arch.image_file_name())
    }

    /// The lock builders of `key` hold.
    pub(crate) fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.lock"))
    }

    /// Where the log of a failed build of `key` is kept (the build directory itself is
    /// deleted, it holds a whole source tree).
    pub(crate) fn failed_log_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.build-failed.log"))
    }

    fn tmp_prefix(key: &str) -> String {
        format!("{key}.tmp-")
    }

    fn last_steps_path(&self) -> PathBuf {
        // The x86_64 name predates arm64 support; the step counts differ per architecture.
        match self.arch {
            Arch::X86_64 => self.root.join("last-build-steps"),
            arch => self.root.join(format!("last-build-steps-{arch}")),
        }
    }

    /// The image of `key`, if it has been published.
    pub(crate) fn find(&self, key: &str) -> Option<PathBuf> {
        let image = self.image_path(key);
        image.is_file().then_some(image)
    }

    /// The number of compile steps the last build took, if recorded.
    pub(crate) fn last_build_steps(&self) -> Option<u64> {
        fs::read_to_string(self.last_steps_path())
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
    }

    /// Records the number of compile steps of a finished build, for the next progress bar.
    pub(crate) fn record_build_steps(&self, steps: u64) -> Result<(), Error> {
        let path = self.last_steps_path();
        fs::write(&path, format!("{steps}\n")).context(|| format!("writing {}", path.display()))
    }

    /// Returns the image of `key`, building it first if needed.
    ///
    /// `build` gets an empty private directory and must leave at least the image in it; the
    /// directory is then published as `<key>/` in one rename. On error it is removed. While
    /// another process (or thread) builds the same key, `on_wait` is called once with the lock
    /// path and this call blocks until that build ends.
    pub(crate) fn get_or_build(
        &self,
        key: &str,
        on_wait: impl FnOnce(&Path),
        build: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<PathBuf, Error> {
        if let Some(image) = self.find(key) {
            return Ok(image);
        }
        fs::create_dir_all(&self.root)
            .context(|| format!("creating the kernel cache {}", self.root.display()))?;
        let _lock = Lock::acquire(&self.lock_path(key), on_wait)?;
        if let Some(image) = self.find(key) {
            return Ok(image);
        }
        self.remove_leftovers(key)?;

        let tmp = self
            .root
            .join(format!("{}{}", Self::tmp_prefix(key), std::process::id()));
        fs::create_dir(&tmp).context(|| format!("creating {}", tmp.display()))?;
        if let Err(e) = build(&tmp).and_then(|()| self.publish(key, &tmp)) {
            // Best effort: the error that stopped the build matters more than a failed cleanup,
            // and the next builder removes leftovers anyway.
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(self.image_path(key))
    }

    fn publish(&self, key: &str, tmp: &Path) -> Result<(), Error> {
        let image = tmp.join(self.arch.image_file_name());
        // Flush the image before the rename makes it visible, so a crash right after cannot
        // publish an empty file.
        File::open(&image)
            .and_then(|f| f.sync_all())
            .context(|| format!("the build did not produce {}", image.display()))?;
        let entry = self.entry_dir(key);
        fs::rename(tmp, &entry)
            .context(|| format!("moving {} to {}", tmp.display(), entry.display()))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .context(|| format!("syncing {}", self.root.display()))
    }

    /// Removes what interrupted builds of `key` left behind. Only called under the key's lock,
    /// so nothing found here can belong to a running build.
    fn remove_leftovers(&self, key: &str) -> Result<(), Error> {
        let prefix = Self::tmp_prefix(key);
        let entries =
            fs::read_dir(&self.root).context(|| format!("listing {}", self.root.display()))?;
        for entry in entries {
            let entry = entry.context(|| format!("listing {}", self.root.display()))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                fs::remove_dir_all(&path).context(|| format!("removing {}", path.display()))?;
            }
        }
        // An entry directory without an image was damaged outside msbvm; rebuild it.
        let entry = self.entry_dir(key);
        if entry.exists() {
            fs::remove_dir_all(&entry).context(|| format!("removing {}", entry.display()))?;
        }
        Ok(())
    }
}

/// An exclusive `flock` on a lock file, released when dropped (the file is closed). The file
/// itself is never deleted: deleting lock files lets two processes lock different inodes.
struct Lock {
    _file: File,
}

impl Lock {
    fn acquire(path: &Path, on_wait: impl FnOnce(&Path)) -> Result<Lock, Error> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .context(|| format!("opening lock file {}", path.display()))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)
            .context(|| format!("locking {}", path.display()))?
        {
            on_wait(path);
            flock(&file, libc::LOCK_EX).context(|| format!("locking {}", path.display()))?;
        }
        Ok(Lock { _file: file })
    }
}

/// `flock(2)`; `Ok(false)` when a non-blocking request would block.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: the descriptor is valid for as long as `file` is borrowed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;
    use tempfile::TempDir;

    fn fake_build(dir: &Path) -> Result<(), Error> {
        fs::write(dir.join("vmlinux"), b"\x7fELF fake").unwrap();
        fs::write(dir.join("config"), b"CONFIG_A=y\n").unwrap();
        fs::write(dir.join("build.log"), b"ok\n").unwrap();
        Ok(())
    }

    #[test]
    fn cache_dir_precedence() {
        let d = |m: Option<&str>, x: Option<&str>, h: Option<&str>| {
            cache_dir_from(m.map(Into::into), x.map(Into::into), h.map(Into::into))
        };
        assert_eq!(d(Some("/m"), Some("/x"), Some("/h")), PathBuf::from("/m"));
        assert_eq!(d(None, Some("/x"), Some("/h")), PathBuf::from("/x/msbvm"));
        assert_eq!(
            d(Some(""), Some(""), Some("/h")),
            PathBuf::from("/h/.cache/msbvm")
        );
        assert_eq!(
            d(None, Some("rel"), Some("/h")),
            PathBuf::from("/h/.cache/msbvm")
        );
        assert!(d(None, None, None)
            .to_string_lossy()
            .contains("msbvm-cache-"));
    }

    #[test]
    fn publishes_complete_build_atomically() {
        let tmp = TempDir::new().unwrap();
        let cache = KernelCache::new(tmp.path(), Arch::X86_64);
        assert_eq!(cache.find("k1"), None);
        let image = cache.get_or_build("k1", |_| {}, fake_build).unwrap();
        assert_eq!(image, tmp.path().join("kernel/k1/vmlinux"));
        assert_eq!(fs::read(&image).unwrap(), b"\x7fELF fake");
        assert!(tmp.path().join("kernel/k1/config").is_file());
        assert!(tmp.path().join("kernel/k1/build.log").is_file());
        assert_eq!(cache.find("k1"), Some(image.clone()));
        // Only the entry and its lock file remain: no temporary directory.
        let mut names: Vec<_> = fs::read_dir(tmp.path().join("kernel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["k1", "k1.lock"]);
        // Second call returns at once without building.
        let again = cache
            .get_or_build("k1", |_| {}, |_| panic!("rebuilt a cached kernel"))
            .unwrap();
        assert_eq!(again, image);
    }

    #[test]
    fn failed_build_leaves_nothing_published() {
        let tmp = TempDir::new().unwrap();
        let cache = KernelCache::new(tmp.path(), Arch::X86_64);
        let err = cache
            .get_or_build(
                "k",
                |_| {},
                |dir| {
                    fs::write(dir.join("vmlinux"), b"half").unwrap();
                    Err(Error::io("compiling", io::Error::other("boom")))
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(cache.find("k"), None);
        assert!(!cache.entry_dir("k").exists());
        let leftovers = fs::read_dir(tmp.path().join("kernel"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn build_without_image_is_an_error() {
        let tmp = TempDir::new().unwrap();
        let cache = KernelCache::new(tmp.path(), Arch::X86_64);
        let err = cache.get_or_build("k", |_| {}, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("did not produce"), "{err}");
        assert_eq!(cache.find("k"), None);
    }

    #[test]
    fn interrupted_build_leftovers_are_cleaned() {
        let tmp = TempDir::new().unwrap();
        let cache = KernelCache::new(tmp.path(), Arch::X86_64);
        let stale = tmp.path().join("kernel/k.tmp-999999");
        fs::create_dir_all(stale.join("src")).unwrap();
        fs::write(stale.join("vmlinux"), b"half").unwrap();
        // A damaged entry (no image) is rebuilt rather than trusted.
        fs::create_dir_all(cache.entry_dir("k")).unwrap();
        let other_key = tmp.path().join("kernel/other.tmp-1");
        fs::create_dir_all(&other_key).unwrap();
        cache.get_or_build("k", |_| {}, fake_build).unwrap();
        assert!(!stale.exists());
        assert!(
            other_key.exists(),
            "leftovers of another key belong to its own lock"
        );
        assert_eq!(fs::read(cache.image_path("k")).unwrap(), b"\x7fELF fake");
    }

    #[test]
    fn concurrent_builders_build_once() {
        let tmp = TempDir::new().unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let waits = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (root, builds, waits, start) = (
                    tmp.path().to_path_buf(),
                    builds.clone(),
                    waits.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    let cache = KernelCache::new(&root, Arch::X86_64);
                    start.wait();
                    cache
                        .get_or_build(
                            "k",
                            |_| {
                                waits.fetch_add(1, Ordering::SeqCst);
                            },
                            |dir| {
                                builds.fetch_add(1, Ordering::SeqCst);
                                // Long enough that the other threads find the lock taken.
                                std::thread::sleep(Duration::from_millis(200));
                                fake_build(dir)
                            },
                        )
                        .unwrap()
                })
            })
            .collect();
        let images: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(images.iter().all(|i| i == &images[0]));
        assert!(waits.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn build_steps_round_trip() {
        let tmp = TempDir::new().unwrap();
        let cache = KernelCache::new(tmp.path(), Arch::X86_64);
        assert_eq!(cache.last_build_steps(), None);
        fs::create_dir_all(tmp.path().join("kernel")).unwrap();
        cache.record_build_steps(1234).unwrap();
        assert_eq!(cache.last_build_steps(), Some(1234));
    }

    #[test]
    fn aarch64_entries_hold_an_image_and_keep_their_own_step_count() {
        let tmp = TempDir::new().unwrap();
        let x86 = KernelCache::new(tmp.path(), Arch::X86_64);
        let arm = KernelCache::new(tmp.path(), Arch::Aarch64);
        // A build that leaves only a vmlinux is not an arm64 build.
        let err = arm.get_or_build("a", |_| {}, fake_build).unwrap_err();
        assert!(err.to_string().contains("Image"), "{err}");
        let image = arm
            .get_or_build(
                "a",
                |_| {},
                |dir| fs::write(dir.join("Image"), b"arm64").map_err(|e| Error::io("w", e)),
            )
            .unwrap();
        assert_eq!(image, tmp.path().join("kernel/a/Image"));
        assert_eq!(arm.find("a"), Some(image));
        assert_eq!(x86.find("a"), None);
        x86.record_build_steps(1700).unwrap();
        arm.record_build_steps(900).unwrap();
        assert_eq!(x86.last_build_steps(), Some(1700));
        assert_eq!(arm.last_build_steps(), Some(900));
        assert!(tmp.path().join("kernel/last-build-steps").is_file());
        assert!(tmp.path().join("kernel/last-build-steps-aarch64").is_file());
    }
}
