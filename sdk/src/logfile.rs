//! Size-capped log files, and reading them as streams.
//!
//! A sandbox's logs (`console.log`, `runtime.log`, `net-events.jsonl`) are
//! written from what the guest does, so a guest could otherwise fill the host's disk. Each is
//! a [`CappedLog`]: when a write would take the file past its cap, the file is renamed to
//! `<name>.1` (replacing the previous one) and a new one is started, so a log never takes more
//! than twice its cap ([`DEFAULT_MAX_BYTES`], or `MSBVM_LOG_MAX_BYTES`). One write never
//! straddles two files, so a JSON line is whole in one of them.
//!
//! [`LogTail`] reads a log as a stream, the rotated part first, in bounded memory, and
//! follows it across rotations.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default cap of one log file: 8 MiB (so at most 16 MiB with its rotated part).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
/// Environment variable that overrides [`DEFAULT_MAX_BYTES`] (bytes, at least 4096).
pub const MAX_BYTES_ENV: &str = "MSBVM_LOG_MAX_BYTES";

/// The cap for new logs: `MSBVM_LOG_MAX_BYTES` when set and sane, else the default.
pub fn max_bytes_from_env() -> u64 {
    std::env::var(MAX_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_MAX_BYTES, |n| n.max(4096))
}

/// Where a log's rotated part is: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Called with the new file after each rotation (the runtime log points stderr at it).
pub type ReopenHook = Box<dyn Fn(&File) + Send>;

/// An append-only log file of at most `max_bytes`, rotated to `<path>.1` when full.
pub struct CappedLog {
    path: PathBuf,
    /// The log's directory, held open: rotation works relative to it, so it still works once
    /// the runtime has switched to a user who may not traverse the path's ancestors.
    dir: File,
    /// The log's file name in `dir`.
    name: CString,
    max_bytes: u64,
    file: File,
    len: u64,
    on_reopen: Option<ReopenHook>,
}

impl std::fmt::Debug for CappedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CappedLog")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl CappedLog {
    /// Opens (appending to) or creates the log at `path`, capped at `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a log path names a file")
        })?;
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a log path"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)?;
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            dir,
            name,
            max_bytes: max_bytes.max(1),
            file,
            len,
            on_reopen: None,
        })
    }

    /// Calls `hook` with the new file after every rotation.
    pub fn on_reopen(mut self, hook: ReopenHook) -> Self {
        self.on_reopen = Some(hook);
        self
    }

    /// The file written now.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Shares this log between writers (each write is one locked append).
    pub fn shared(self) -> SharedLog {
        SharedLog(Arc::new(Mutex::new(self)))
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut rotated = self.name.as_bytes().to_vec();
        rotated.extend_from_slice(b".1");
        let rotated = CString::new(rotated).expect("no NUL: built from a CString");
        let dir = self.dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated C strings that outlive the call; `dir` is an
        // open directory descriptor owned by `self`.
        if unsafe { libc::renameat(dir, self.name.as_ptr(), dir, rotated.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; the returned descriptor is owned by the File made from it.
        let fd = unsafe {
            libc::openat(
                dir,
                self.name.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        self.file = unsafe { File::from_raw_fd(fd) };
        self.len = 0;
        if let Some(hook) = &self.on_reopen {
            hook(&self.file);
        }
        Ok(())
    }
}

impl Write for CappedLog {
    /// Appends `buf` whole (cut to the cap when it alone is larger), rotating first when it
    /// would not fit.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.max_bytes as usize);
        if self.len > 0 && self.len + n as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&buf[..n])?;
        self.len += n as u64;
        // What was cut off is dropped, not retried: report it written.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A [`CappedLog`] shared by several writers; cloning shares it.
#[derive(Clone, Debug)]
pub struct SharedLog(Arc<Mutex<CappedLog>>);

impl SharedLog {
    /// The log itself, for writers that take a mutex (the VMM's console).
    pub fn inner(&self) -> Arc<Mutex<CappedLog>> {
        self.0.clone()
    }
}

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.flush()
    }
}

/// Reads a log as a stream: its rotated part, then the live file, then what is appended
/// later (across rotations) with [`LogTail::read_new`].
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    /// The rotated part still to read, then the live file.
    queue: Vec<File>,
    current: Option<File>,
}

fn inode(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl LogTail {
    /// Starts at the beginning of the log at `path` (of its rotated part when there is
    /// one); a missing log reads as empty until it appears.
    pub fn open(path: &Path) -> LogTail {
        let mut queue: Vec<File> = [path.to_path_buf(), rotated_path(path)]
            .iter()
            .filter_map(|p| File::open(p).ok())
            .collect();
        let current = queue.pop();
        LogTail {
            path: path.to_path_buf(),
            queue,
            current,
        }
    }

    /// Passes everything available now to `out`, in pieces of at most 64 KiB.
    pub fn read_new(&mut self, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(file) = &mut self.current {
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out(&buf[..n])?;
                }
            }
            if let Some(next) = self.queue.pop() {
                self.current = Some(next);
                continue;
            }
            // At the end of the live file: if it was rotated meanwhile, what was appended
            // to it before the rotation has been read; go on with the new one.
            let live = File::open(&self.path).ok();
            let rotated = match (&self.current, &live) {
                (Some(cur), Some(new)) => inode(cur) != inode(new),
                (None, Some(_)) => true,
                _ => false,
            };
            if !rotated {
                return Ok(());
            }
            self.current = live;
        }
    }

    /// Passes each complete line available now (without its newline) to `out`; a line
    /// longer than `max_line` is skipped. `partial` carries an unfinished line between calls.
    pub fn read_lines(
        &mut self,
        partial: &mut Vec<u8>,
        max_line: usize,
        out: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut skipping = partial.len() > max_line;
        self.read_new(&mut |chunk| {
            for piece in chunk.split_inclusive(|b| *b == b'\n') {
                let (body, ended) = match piece.strip_suffix(b"\n") {
                    Some(body) => (body, true),
                    None => (piece, false),
                };
                if !skipping {
                    partial.extend_from_slice(body);
                    if partial.len() > max_line {
                        skipping = true;
                        partial.clear();
                    }
                }
                if ended {
                    if !skipping {
                        out(partial);
                    }
                    partial.clear();
                    skipping = false;
                }
            }
            Ok(())
        })?;
        if skipping {
            // Remembered as "too long" for the next call.
            partial.resize(max_line + 1, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
