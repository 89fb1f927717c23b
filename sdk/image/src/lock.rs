//! Advisory file locks (`flock` through `std::fs::File::lock*`) that coordinate processes
//! sharing one store.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{io_err, Result};

/// A held lock; released when dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(format!("opening lock file {}", path.display())))
}

/// Waits for an exclusive lock on `path`.
pub(crate) fn exclusive(path: &Path) -> Result<Lock> {
    let file = open(path)?;
    file.lock()
        .map_err(io_err(format!("locking {}", path.display())))?;
    Ok(Lock { _file: file })
}

/// Waits for a shared lock on `path`.
pub(crate) fn shared(path: &Path) -> Result<Lock> {
    let file = open(path)?;
    file.lock_shared()
        .map_err(io_err(format!("locking {}", path.display())))?;
    Ok(Lock { _file: file })
}

/// Takes an exclusive lock on `path` if nobody holds any lock on it; `None` when busy.
pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_err(format!("locking {}", path.display()))(e))
        }
    }
}
