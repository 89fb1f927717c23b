//! The file API's guest side: one [`FileRequest`] per connection, carried
//! out with plain `std::fs` calls on guest paths.
//!
//! The exchanges are described in [`msbvm_protocol::files`]. Everything
//! here works on ordinary paths, so the tests run it on the host against a
//! temporary directory. Failures of the operation become
//! [`GuestMessage::FileError`]; only a broken connection is an `Err`.
//!
//! Uploads never damage what they replace: the bytes go to a temporary file
//! beside the target that is renamed over it only when the host's
//! `FileEnd` arrives; a connection that breaks first leaves the old file
//! and no temporary behind.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use msbvm_protocol::files::{
    archive, DirEntry, FileError, FileErrorKind, FileKind, FileRequest, FileStat,
    MAX_DIR_ENTRIES_PER_MESSAGE,
};
use msbvm_protocol::{GuestMessage, HostMessage, MAX_CHUNK_LEN};

use msbvm_protocol::framing::{FrameReader, FrameWriter};

use super::connection::ConnectionError;

/// Permission bits of a new file when the host names none.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Permission bits of a new directory when the host names none.
const DEFAULT_DIR_MODE: u32 = 0o755;

/// Carries out `request`, reading any upload from `input` and answering on
/// `out`.
pub fn serve<R: Read, W: Write>(
    request: FileRequest,
    input: &mut FrameReader<R>,
    out: &FrameWriter<W>,
) -> Result<(), ConnectionError> {
    let reply = match dispatch(request, input, out) {
        Ok(Reply::Done) => GuestMessage::FileDone,
        Ok(Reply::Send(m)) => m,
        Ok(Reply::Gone(e)) => return Err(e),
        Err(e) => GuestMessage::FileError(e),
    };
    out.send(&reply)?;
    Ok(())
}

fn dispatch<R: Read, W: Write>(
    request: FileRequest,
    input: &mut FrameReader<R>,
    out: &FrameWriter<W>,
) -> Result<Reply, FileError> {
    match request {
        FileRequest::ReadFile { path } => read_file(&resolve(&path)?, out),
        FileRequest::WriteFile {
            path,
            mode,
            create_parents,
            append,
        } => {
            let options = WriteOptions {
                mode,
                create_parents,
                append,
            };
            write_file(&resolve(&path)?, options, input, out)
        }
        FileRequest::ListDir { path } => list_dir(&resolve(&path)?, out),
        FileRequest::Stat {
            path,
            follow_symlinks,
        } => {
            stat(&resolve(&path)?, follow_symlinks).map(|s| Reply::Send(GuestMessage::FileMeta(s)))
        }
        FileRequest::Mkdir {
            path,
            parents,
            mode,
        } => mkdir(&resolve(&path)?, parents, mode).map(|()| Reply::Done),
        FileRequest::Remove { path, recursive } => {
            remove(&resolve(&path)?, recursive).map(|()| Reply::Done)
        }
        FileRequest::Rename { from, to } => {
            rename(&resolve(&from)?, &resolve(&to)?).map(|()| Reply::Done)
        }
        FileRequest::ArchiveOut { path } => archive_out(&resolve(&path)?, out),
        FileRequest::ArchiveIn { dest } => archive_in(&resolve(&dest)?, input, out),
    }
}

/// How an operation ended, when it did not fail.
enum Reply {
    /// Answer `FileDone`.
    Done,
    /// Answer with this message.
    Send(GuestMessage),
    /// The connection broke; nothing more can be sent.
    Gone(ConnectionError),
}

/// A guest path from the host: relative paths are taken from `/` (the
/// agent's working directory, but said explicitly so it never depends on
/// it).
fn resolve(path: &str) -> Result<PathBuf, FileError> {
    if path.is_empty() || path.contains('\0') {
        return Err(FileError::new(
            FileErrorKind::InvalidInput,
            format!("{path:?} is not a path"),
        ));
    }
    Ok(Path::new("/").join(path))
}

/// What a path is.
pub fn stat(path: &Path, follow_symlinks: bool) -> Result<FileStat, FileError> {
    let meta = if follow_symlinks {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .map_err(|e| FileError::from_io(path.display(), &e))?;
    Ok(file_stat(path, &meta))
}

fn file_stat(path: &Path, meta: &fs::Metadata) -> FileStat {
    let t = meta.file_type();
    let kind = if t.is_file() {
        FileKind::File
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let symlink_target = (kind == FileKind::Symlink)
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    FileStat {
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        symlink_target,
    }
}

/// Sends a file's metadata, its contents in chunks, then `FileEnd`.
fn read_file<W: Write>(path: &Path, out: &FrameWriter<W>) -> Result<Reply, FileError> {
    let fail = |e: io::Error| FileError::from_io(path.display(), &e);
    // Checked before opening: opening a FIFO would block until a writer comes, and a
    // device such as /dev/zero never ends.
    let meta = fs::metadata(path).map_err(fail)?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(FileError::new(
            FileErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    let mut file = File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(FileError::new(
            FileErrorKind::IsADirectory,
            format!(
                "{}: is a directory (copy directories as archives)",
                path.display()
            ),
        ));
    }
    if let Err(e) = out.send(&GuestMessage::FileMeta(file_stat(path, &meta))) {
        return Ok(Reply::Gone(e.into()));
    }
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(Reply::Send(GuestMessage::FileEnd)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        };
        if let Err(e) = out.send(&GuestMessage::FileChunk(buf[..n].to_vec())) {
            return Ok(Reply::Gone(e.into()));
        }
    }
}

/// Sends a directory's entries in batches, then `FileEnd`.
fn list_dir<W: Write>(path: &Path, out: &FrameWriter<W>) -> Result<Reply, FileError> {
    let fail = |e: io::Error| FileError::from_io(path.display(), &e);
    let mut batch = Vec::new();
    for entry in fs::read_dir(path).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let meta = match fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            // Removed since read_dir saw it: it is simply not listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e)),
        };
        batch.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            stat: file_stat(&entry.path(), &meta),
        });
        if batch.len() == MAX_DIR_ENTRIES_PER_MESSAGE {
            if let Err(e) = out.send(&GuestMessage::DirEntries(std::mem::take(&mut batch))) {
                return Ok(Reply::Gone(e.into()));
            }
        }
    }
    if !batch.is_empty() {
        if let Err(e) = out.send(&GuestMessage::DirEntries(batch)) {
            return Ok(Reply::Gone(e.into()));
        }
    }
    Ok(Reply::Send(GuestMessage::FileEnd))
}

/// Creates a directory.
pub fn mkdir(path: &Path, parents: bool, mode: Option<u32>) -> Result<(), FileError> {
    let existed = fs::symlink_metadata(path).is_ok();
    let mut builder = fs::DirBuilder::new();
    builder.recursive(parents);
    builder
        .create(path)
        .map_err(|e| FileError::from_io(format!("creating {}", path.display()), &e))?;
    if !existed {
        // Explicitly, because the mode given at creation is cut by the umask.
        fs::set_permissions(
            path,
            fs::Permissions::from_mode(mode.unwrap_or(DEFAULT_DIR_MODE) & 0o7777),
        )
        .map_err(|e| FileError::from_io(format!("setting the mode of {}", path.display()), &e))?;
    }
    Ok(())
}

/// Removes a file, a symlink or a directory (with `recursive`, a whole tree;
/// symlinks in it are removed, never followed).
pub fn remove(path: &Path, recursive: bool) -> Result<(), FileError> {
    let fail = |e: io::Error| FileError::from_io(format!("removing {}", path.display()), &e);
    if path.parent().is_none() {
        return Err(FileError::new(
            FileErrorKind::InvalidInput,
            "refusing to remove the guest's root directory",
        ));
    }
    let meta = fs::symlink_metadata(path).map_err(fail)?;
    if !meta.is_dir() {
        fs::remove_file(path).map_err(fail)
    } else if recursive {
        fs::remove_dir_all(path).map_err(fail)
    } else {
        fs::remove_dir(path).map_err(fail)
    }
}

/// Renames `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).map_err(|e| {
        FileError::from_io(
            format!("renaming {} to {}", from.display(), to.display()),
            &e,
        )
    })
}

/// How to write a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Permission bits; default: the replaced file's, or 0644.
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Append instead of replacing.
    pub append: bool,
}

/// A file being written; a replacement's temporary file is removed unless
/// it was committed.
struct Upload {
    file: File,
    /// The temporary file to rename over the target (not for appends).
    temp: Option<PathBuf>,
    target: PathBuf,
    /// Mode and owner to give the result.
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
}

impl Upload {
    fn open(path: &Path, options: WriteOptions) -> Result<Upload, FileError> {
        let fail = |e: io::Error| FileError::from_io(format!("writing {}", path.display()), &e);
        // Writing to a symlink writes to what it points at, as a shell
        // redirection would; a dangling link is replaced.
        let target = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
            }
            _ => path.to_path_buf(),
        };
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(FileError::new(
                FileErrorKind::InvalidInput,
                format!("{}: not a file path", path.display()),
            ));
        };
        if options.create_parents {
            fs::create_dir_all(parent).map_err(fail)?;
        }
        let existing = fs::metadata(&target).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(FileError::new(
                FileErrorKind::IsADirectory,
                format!("writing {}: is a directory", path.display()),
            ));
        }
        if options.append {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(DEFAULT_FILE_MODE)
                .open(&target)
                .map_err(fail)?;
            return Ok(Upload {
                file,
                temp: None,
                target,
                mode: options
                    .mode
                    .or(existing.is_none().then_some(DEFAULT_FILE_MODE)),
                owner: None,
            });
        }
        let temp = parent.join(temp_name(name));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(fail)?;
        Ok(Upload {
            file,
            temp: Some(temp),
            target,
            mode: Some(
                options
                    .mode
                    .or(existing.as_ref().map(|m| m.mode()))
                    .unwrap_or(DEFAULT_FILE_MODE),
            ),
            owner: existing.map(|m| (m.uid(), m.gid())),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        self.file
            .write_all(data)
            .map_err(|e| FileError::from_io(format!("writing {}", self.target.display()), &e))
    }

    /// Sets the mode and owner, and renames a temporary file over the
    /// target.
    fn commit(mut self) -> Result<(), FileError> {
        let fail =
            |e: io::Error| FileError::from_io(format!("writing {}", self.target.display()), &e);
        if let Some(mode) = self.mode {
            self.file
                .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(fail)?;
        }
        if let Some((uid, gid)) = self.owner {
            // Best effort: keeping the owner matters for files of other
            // users, and an agent not running as root cannot do it anyway.
            let _ = std::os::unix::fs::fchown(&self.file, Some(uid), Some(gid));
        }
        if let Some(temp) = self.temp.take() {
            if let Err(e) = fs::rename(&temp, &self.target) {
                let _ = fs::remove_file(&temp);
                return Err(fail(e));
            }
        }
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = fs::remove_file(temp);
        }
    }
}

/// A hidden name beside the target, unique among concurrent uploads.
fn temp_name(name: &OsStr) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".msbvm-upload-{}-{n}", std::process::id()));
    temp.into()
}

/// The next upload message: `Some(data)`, `None` at `FileEnd`; an error
/// when the upload cannot go on (`Gone`: the connection broke).
fn next_chunk<R: Read>(input: &mut FrameReader<R>) -> Result<Option<Vec<u8>>, UploadError> {
    match input.read_message::<HostMessage>() {
        Ok(Some(HostMessage::FileChunk(data))) => Ok(Some(data)),
        Ok(Some(HostMessage::FileEnd)) => Ok(None),
        Ok(Some(other)) => Err(UploadError::Refused(FileError::new(
            FileErrorKind::InvalidInput,
            format!("expected file data or its end, got {}", describe(&other)),
        ))),
        Err(why) if why.is_recoverable() => Err(UploadError::Refused(FileError::new(
            FileErrorKind::InvalidInput,
            format!("cannot decode the message: {why}"),
        ))),
        Ok(None) => Err(UploadError::Gone(ConnectionError::Io(
            io::ErrorKind::UnexpectedEof.into(),
        ))),
        Err(e) => Err(UploadError::Gone(e.into())),
    }
}

/// A host message's name, for errors (never its data).
fn describe(m: &HostMessage) -> &'static str {
    match m {
        HostMessage::Hello { .. } => "Hello",
        HostMessage::Exec(_) => "Exec",
        HostMessage::Stdin(_) => "Stdin",
        HostMessage::CloseStdin => "CloseStdin",
        HostMessage::Signal(_) => "Signal",
        HostMessage::Resize(_) => "Resize",
        HostMessage::Shutdown { .. } => "Shutdown",
        HostMessage::Ping => "Ping",
        HostMessage::File(_) => "a second file request",
        HostMessage::FileChunk(_) => "FileChunk",
        HostMessage::FileEnd => "FileEnd",
        HostMessage::Event(_) => "Event",
        HostMessage::Identity(_) => "Identity",
    }
}

/// Why an upload stopped before its end.
enum UploadError {
    /// The host sent something else; answered with this error.
    Refused(FileError),
    /// The connection broke.
    Gone(ConnectionError),
}

/// Receives a file and puts it in place.
fn write_file<R: Read, W: Write>(
    path: &Path,
    options: WriteOptions,
    input: &mut FrameReader<R>,
    out: &FrameWriter<W>,
) -> Result<Reply, FileError> {
    let mut upload = Upload::open(path, options)?;
    if let Err(e) = out.send(&GuestMessage::FileReady) {
        return Ok(Reply::Gone(e.into()));
    }
    loop {
        match next_chunk(input) {
            Ok(Some(data)) => upload.write(&data)?,
            Ok(None) => break,
            Err(UploadError::Refused(e)) => return Err(e),
            // Dropping the upload removes the temporary file.
            Err(UploadError::Gone(e)) => return Ok(Reply::Gone(e)),
        }
    }
    upload.commit()?;
    Ok(Reply::Done)
}

/// Buffers writes into `FileChunk` messages.
struct ChunkWriter<'a, W: Write> {
    out: &'a FrameWriter<W>,
    buf: Vec<u8>,
}

impl<W: Write> ChunkWriter<'_, W> {
    fn send(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK_LEN));
            self.out.send(&GuestMessage::FileChunk(chunk))?;
        }
        Ok(())
    }
}

impl<W: Write> Write for ChunkWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_CHUNK_LEN - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK_LEN {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Streams a tar archive of `path`.
fn archive_out<W: Write>(path: &Path, out: &FrameWriter<W>) -> Result<Reply, FileError> {
    let Some(name) = path.file_name() else {
        return Err(FileError::new(
            FileErrorKind::InvalidInput,
            format!(
                "{}: name a file or directory, not the root or a `..`",
                path.display()
            ),
        ));
    };
    let writer = ChunkWriter {
        out,
        buf: Vec::with_capacity(MAX_CHUNK_LEN),
    };
    let mut writer = archive::pack(path, name, writer)?;
    if let Err(e) = writer.flush() {
        return Ok(Reply::Gone(e.into()));
    }
    Ok(Reply::Send(GuestMessage::FileEnd))
}

/// Reads the upload's chunks as one byte stream; ends at `FileEnd`.
struct ChunkReader<'a, R: Read> {
    input: &'a mut FrameReader<R>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
    /// Why the upload stopped early, kept for the reply.
    failure: Option<UploadError>,
}

impl<R: Read> Read for ChunkReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match next_chunk(self.input) {
                Ok(Some(data)) => {
                    self.chunk = data;
                    self.pos = 0;
                }
                Ok(None) => self.ended = true,
                Err(e) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("the upload stopped"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Receives a tar archive and unpacks it into the directory `dest`.
fn archive_in<R: Read, W: Write>(
    dest: &Path,
    input: &mut FrameReader<R>,
    out: &FrameWriter<W>,
) -> Result<Reply, FileError> {
    let meta = fs::metadata(dest)
        .map_err(|e| FileError::from_io(format!("unpacking into {}", dest.display()), &e))?;
    if !meta.is_dir() {
        return Err(FileError::new(
            FileErrorKind::NotADirectory,
            format!("unpacking into {}: not a directory", dest.display()),
        ));
    }
    if let Err(e) = out.send(&GuestMessage::FileReady) {
        return Ok(Reply::Gone(e.into()));
    }
    let mut reader = ChunkReader {
        input,
        chunk: Vec::new(),
        pos: 0,
        ended: false,
        failure: None,
    };
    let unpacked = archive::unpack(&mut reader, dest, None);
    if let Some(failure) = reader.failure.take() {
        return match failure {
            UploadError::Refused(e) => Err(e),
            UploadError::Gone(e) => Ok(Reply::Gone(e)),
        };
    }
    unpacked?;
    // The archive's end marker may come before the end of the upload
    // (padding to a record size): read on to FileEnd.
    match io::copy(&mut reader, &mut io::sink()) {
        Ok(_) => Ok(Reply::Done),
        Err(_) => match reader.failure.take() {
            Some(UploadError::Refused(e)) => Err(e),
            Some(UploadError::Gone(e)) => Ok(Reply::Gone(e)),
            None => Ok(Reply::Done),
        },
    }
}

#[cfg(test)]
mod tests;
