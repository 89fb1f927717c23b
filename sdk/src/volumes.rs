//! Named volumes: directories msbvm manages under `$MSBVM_HOME/volumes/<name>/`.
//!
//! Each volume is `data/` (what the guest sees) and `lock`. A runtime that
//! mounts the volume holds a shared `flock` on `lock` for the sandbox's life,
//! so [`remove`] (which takes it exclusively, without waiting) refuses a
//! volume in use instead of pulling it from under a running guest.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Longest volume name accepted.
pub const MAX_VOLUME_NAME_LEN: usize = 63;

/// Checks a volume name: letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn validate_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VOLUME_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "volume name {name:?} is invalid: use up to {MAX_VOLUME_NAME_LEN} letters, digits, \
             '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// The directory holding all named volumes.
pub fn volumes_dir(home: &Path) -> PathBuf {
    home.join("volumes")
}

/// A named volume on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// The directory the guest sees.
    pub data: PathBuf,
    /// Whether a running sandbox has it mounted.
    pub in_use: bool,
}

fn lock_file(home: &Path, name: &str) -> PathBuf {
    volumes_dir(home).join(name).join("lock")
}

fn data_dir(home: &Path, name: &str) -> PathBuf {
    volumes_dir(home).join(name).join("data")
}

/// Creates volume `name` (no error if it exists) and returns it.
pub fn create(home: &Path, name: &str) -> Result<Volume> {
    validate_volume_name(name)?;
    let data = data_dir(home, name);
    fs::create_dir_all(&data).map_err(Error::io(format!("creating {}", data.display())))?;
    let lock = lock_file(home, name);
    File::options()
        .create(true)
        .append(true)
        .open(&lock)
        .map_err(Error::io(format!("creating {}", lock.display())))?;
    Ok(Volume {
        name: name.to_string(),
        data,
        in_use: is_in_use(home, name),
    })
}

/// All named volumes, sorted by name.
pub fn list(home: &Path) -> Result<Vec<Volume>> {
    let dir = volumes_dir(home);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
    };
    let mut out: Vec<Volume> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| validate_volume_name(name).is_ok() && data_dir(home, name).is_dir())
        .map(|name| Volume {
            data: data_dir(home, &name),
            in_use: is_in_use(home, &name),
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes volume `name` and its data; refused while a sandbox uses it.
pub fn remove(home: &Path, name: &str) -> Result<()> {
    validate_volume_name(name)?;
    let dir = volumes_dir(home).join(name);
    if !dir.is_dir() {
        return Err(Error::InvalidConfig(format!("no volume named {name:?}")));
    }
    let lock = File::options()
        .create(true)
        .append(true)
        .open(lock_file(home, name))
        .map_err(Error::io(format!("opening the lock of volume {name}")))?;
    if !try_flock(&lock, libc::LOCK_EX) {
        return Err(Error::InvalidConfig(format!(
            "volume {name:?} is in use by a running sandbox; stop it first"
        )));
    }
    fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))
}

/// Creates volume `name` if needed and takes a shared lock on it for as long
/// as the returned file lives (the runtime holds it while the sandbox runs).
pub fn acquire(home: &Path, name: &str) -> Result<(PathBuf, File)> {
    let volume = create(home, name)?;
    let lock = File::options()
        .append(true)
        .open(lock_file(home, name))
        .map_err(Error::io(format!("opening the lock of volume {name}")))?;
    // SAFETY: flock on a descriptor we own; blocking only while a removal holds it.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(Error::io(format!("locking volume {name}"))(
            std::io::Error::last_os_error(),
        ));
    }
    if !volume.data.is_dir() {
        // Removed between create and lock.
        return Err(Error::InvalidConfig(format!(
            "volume {name:?} was removed while starting"
        )));
    }
    Ok((volume.data, lock))
}

fn is_in_use(home: &Path, name: &str) -> bool {
    match File::options().append(true).open(lock_file(home, name)) {
        Ok(f) => {
            let free = try_flock(&f, libc::LOCK_EX);
            if free {
                // SAFETY: unlocking our own descriptor.
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            }
            !free
        }
        Err(_) => false,
    }
}

fn try_flock(file: &File, how: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_remove() {
        let home = tempfile::tempdir().unwrap();
        let v = create(home.path(), "cache").unwrap();
        fs::write(v.data.join("f"), b"x").unwrap();
        create(home.path(), "a-1").unwrap();
        let names: Vec<_> = list(home.path())
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["a-1", "cache"]);
        remove(home.path(), "cache").unwrap();
        assert!(!volumes_dir(home.path()).join("cache").exists());
        assert!(remove(home.path(), "cache").is_err());
    }

    #[test]
    fn a_volume_in_use_is_not_removed() {
        let home = tempfile::tempdir().unwrap();
        let (data, lock) = acquire(home.path(), "busy").unwrap();
        assert!(data.is_dir());
        assert!(list(home.path()).unwrap()[0].in_use);
        let err = remove(home.path(), "busy").unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(lock);
        remove(home.path(), "busy").unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
    }
}
