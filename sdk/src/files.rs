//! Files in a sandbox: read, write, list, stat, create, remove and rename guest paths, and
//! copy files or whole trees between the host and the guest.
//!
//! Every operation opens its own connection to the guest agent (like an exec) and follows
//! the exchange described in [`msbvm_protocol::files`]. Data is streamed in chunks both ways,
//! so files of any size pass without being held whole in memory (except by
//! [`Sandbox::read_file`], which returns them). Trees travel as tar streams; unpacking on
//! either side refuses entries that would land outside the destination
//! ([`msbvm_protocol::files::archive`]).
//!
//! A failure in the guest is [`Error::GuestFile`] with a [`FileErrorKind`]
//! ([`Error::file_error_kind`]).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use msbvm_protocol::files::{archive, FileError, FileRequest};
use msbvm_protocol::{GuestMessage, HostMessage, MAX_CHUNK_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use crate::agent::{self, frame_error, AgentConnection};
use crate::error::{Error, Result};
use crate::exec::describe;
use crate::framing::write_async;
use crate::limits::{bounded, wait_end, AgentLimits};
use crate::Sandbox;

pub use msbvm_protocol::files::{DirEntry, FileErrorKind, FileKind, FileStat};

/// Chunks in flight between a connection and a blocking packer or a reader; bounded so a
/// slow consumer holds the producer back instead of filling memory.
const CHANNEL_CHUNKS: usize = 4;
/// A wait with no bound, as an instant tokio can hold.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How [`Sandbox::write_file_with`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits (e.g. `0o755`); default: the replaced file's, or `0o644`.
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Append instead of replacing (a replacement is atomic, an append is not).
    pub append: bool,
}

impl Error {
    /// The kind of a failed file operation in the guest (`None` for other errors).
    pub fn file_error_kind(&self) -> Option<FileErrorKind> {
        match self {
            Error::GuestFile(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// One file operation's connection; every wait on the agent is bounded by the reply
/// timeout and the operation's deadline.
struct FileConnection {
    conn: AgentConnection,
    idle: std::time::Duration,
    deadline: Option<tokio::time::Instant>,
}

fn unexpected(m: &GuestMessage, wanted: &str) -> Error {
    Error::Protocol {
        peer: "the guest agent",
        detail: format!("expected {wanted}, got {}", describe(m)),
    }
}

fn invalid(message: String) -> Error {
    Error::GuestFile(FileError::new(FileErrorKind::InvalidInput, message))
}

impl FileConnection {
    async fn open(
        uds: &Path,
        request: FileRequest,
        limits: &AgentLimits,
    ) -> Result<FileConnection> {
        let deadline = limits.deadline();
        let conn = agent::connect(uds, limits).await?;
        let mut c = FileConnection {
            conn,
            idle: limits.reply_timeout,
            deadline,
        };
        c.send(&HostMessage::File(request)).await?;
        Ok(c)
    }

    /// Sends `message`, bounded like every wait on the agent.
    async fn send(&mut self, message: &HostMessage) -> Result<()> {
        let writer = &mut self.conn.writer;
        let sent = async { write_async(writer, message).await.map_err(frame_error) };
        bounded(
            self.idle,
            self.deadline,
            "the agent to take a message",
            sent,
        )
        .await
    }

    /// The agent's next message; its errors become `Err`.
    async fn recv(&mut self) -> Result<GuestMessage> {
        let reader = &mut self.conn.reader;
        let read = async {
            reader
                .read_message::<GuestMessage>()
                .await
                .map_err(frame_error)
        };
        match bounded(self.idle, self.deadline, "the agent's answer", read).await? {
            Some(GuestMessage::FileError(e)) => Err(Error::GuestFile(e)),
            Some(GuestMessage::Error { message }) => Err(Error::Agent(message)),
            Some(m) => Ok(m),
            None => Err(Error::ConnectionLost),
        }
    }

    async fn expect_done(&mut self) -> Result<()> {
        match self.recv().await? {
            GuestMessage::FileDone => Ok(()),
            m => Err(unexpected(&m, "FileDone")),
        }
    }

    /// The next chunk of a download; `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        match self.recv().await? {
            GuestMessage::FileChunk(data) => Ok(Some(data)),
            GuestMessage::FileEnd => Ok(None),
            m => Err(unexpected(&m, "file data")),
        }
    }

    /// Streams `source` to the agent once it is ready, then waits for `FileDone`. An answer
    /// from the agent during the upload (an error) ends it at once.
    async fn upload(mut self, mut source: impl AsyncRead + Unpin) -> Result<()> {
        match self.recv().await? {
            GuestMessage::FileReady => {}
            m => return Err(unexpected(&m, "FileReady")),
        }
        let mut buf = vec![0u8; MAX_CHUNK_LEN];
        loop {
            let read = async {
                source
                    .read(&mut buf)
                    .await
                    .map_err(Error::io("reading the data to upload"))
            };
            // The caller's source is not the agent: only the deadline bounds it.
            let n = bounded(Duration::MAX, self.deadline, "the data to upload", read).await?;
            let message = if n == 0 {
                HostMessage::FileEnd
            } else {
                HostMessage::FileChunk(buf[..n].to_vec())
            };
            let conn = &mut self.conn;
            let write = async { write_async(&mut conn.writer, &message).await };
            let (end, limit) = wait_end(self.idle, self.deadline)
                .unwrap_or((tokio::time::Instant::now() + FAR_FUTURE, "no limit"));
            tokio::select! {
                biased;
                // Reading is cancel-safe: a frame read in part stays buffered.
                answer = conn.reader.read_message::<GuestMessage>() => {
                    return Err(match answer {
                        Ok(Some(GuestMessage::FileError(e))) => Error::GuestFile(e),
                        Ok(Some(GuestMessage::Error { message })) => Error::Agent(message),
                        Ok(Some(m)) => unexpected(&m, "nothing during the upload"),
                        Ok(None) => Error::ConnectionLost,
                        Err(e) => frame_error(e),
                    });
                }
                () = tokio::time::sleep_until(end) => {
                    return Err(Error::AgentTimeout {
                        waiting_for: "the agent to take the upload".into(),
                        limit,
                    });
                }
                written = write => {
                    if let Err(e) = written {
                        // The agent may have refused and closed: its answer says why.
                        return Err(self.recv().await.err().unwrap_or_else(|| frame_error(e)));
                    }
                }
            }
            if n == 0 {
                return self.expect_done().await;
            }
        }
    }
}

/// The guest path `path` as a parent directory and a name, for archive copies.
fn split_guest_path(path: &str) -> Result<(String, String)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(invalid(format!(
            "{path:?}: name a file or directory in the sandbox, not the root or `.`/`..`"
        )));
    }
    Ok((parent.to_string(), name.to_string()))
}

/// A blocking writer that sends what is written, in chunks, to a channel.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK_LEN));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(MAX_CHUNK_LEN - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK_LEN {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A blocking reader of the chunks a channel delivers; ends when the sender is dropped.
struct ChannelBlockingReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelBlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An async reader of the chunks a channel delivers; ends when the sender is dropped.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pos == self.chunk.len() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(self.chunk.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.chunk[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A file being read from the guest ([`Sandbox::read_file_stream`]): an [`AsyncRead`] of
/// its contents. A failure in the middle of the file is an [`std::io::Error`] wrapping the
/// SDK's [`Error`]; the stream never ends early without one.
pub struct FileReader {
    stat: FileStat,
    inner: ChannelReader,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("stat", &self.stat)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    /// The file's metadata when it was opened (`size` may be 0 for files such as those in
    /// `/proc` whose contents are made as they are read).
    pub fn stat(&self) -> &FileStat {
        &self.stat
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

async fn read_stream(uds: &Path, path: &str, limits: &AgentLimits) -> Result<FileReader> {
    let request = FileRequest::ReadFile { path: path.into() };
    let mut c = FileConnection::open(uds, request, limits).await?;
    let stat = match c.recv().await? {
        GuestMessage::FileMeta(stat) => stat,
        m => return Err(unexpected(&m, "FileMeta")),
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        loop {
            let item = match c.next_chunk().await {
                Ok(Some(data)) => Ok(data),
                Ok(None) => return,
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = item.is_err();
            // A dropped reader stops the download.
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(FileReader {
        stat,
        inner: ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
    })
}

async fn read_all(uds: &Path, path: &str, limits: &AgentLimits) -> Result<Vec<u8>> {
    let request = FileRequest::ReadFile { path: path.into() };
    let mut c = FileConnection::open(uds, request, limits).await?;
    let max = limits.max_read_file;
    let too_large = |what: String| Error::LimitExceeded {
        what: format!("{path:?} {what}"),
        limit: max,
        setting: "max_read_file",
    };
    let mut data = match c.recv().await? {
        GuestMessage::FileMeta(stat) if stat.size > max => {
            return Err(too_large(format!("is {} bytes", stat.size)))
        }
        // The size is a hint from the guest: never trust it for an allocation.
        GuestMessage::FileMeta(stat) => Vec::with_capacity(stat.size.min(1 << 20) as usize),
        m => return Err(unexpected(&m, "FileMeta")),
    };
    while let Some(chunk) = c.next_chunk().await? {
        if (data.len() + chunk.len()) as u64 > max {
            return Err(too_large(format!("has more than {max} bytes")));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

async fn write_from(
    uds: &Path,
    path: &str,
    source: impl AsyncRead + Unpin,
    options: WriteOptions,
    limits: &AgentLimits,
) -> Result<()> {
    let request = FileRequest::WriteFile {
        path: path.into(),
        mode: options.mode,
        create_parents: options.create_parents,
        append: options.append,
    };
    FileConnection::open(uds, request, limits)
        .await?
        .upload(source)
        .await
}

async fn list(uds: &Path, path: &str, limits: &AgentLimits) -> Result<Vec<DirEntry>> {
    let request = FileRequest::ListDir { path: path.into() };
    let mut c = FileConnection::open(uds, request, limits).await?;
    let mut entries = Vec::new();
    loop {
        match c.recv().await? {
            GuestMessage::DirEntries(batch) => {
                if entries.len() + batch.len() > limits.max_list_entries {
                    return Err(Error::LimitExceeded {
                        what: format!("the directory {path:?} has too many entries"),
                        limit: limits.max_list_entries as u64,
                        setting: "max_list_entries",
                    });
                }
                entries.extend(batch)
            }
            GuestMessage::FileEnd => break,
            m => return Err(unexpected(&m, "directory entries")),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

async fn stat_path(
    uds: &Path,
    path: &str,
    follow_symlinks: bool,
    limits: &AgentLimits,
) -> Result<FileStat> {
    let request = FileRequest::Stat {
        path: path.into(),
        follow_symlinks,
    };
    match FileConnection::open(uds, request, limits)
        .await?
        .recv()
        .await?
    {
        GuestMessage::FileMeta(stat) => Ok(stat),
        m => Err(unexpected(&m, "FileMeta")),
    }
}

async fn simple(uds: &Path, request: FileRequest, limits: &AgentLimits) -> Result<()> {
    FileConnection::open(uds, request, limits)
        .await?
        .expect_done()
        .await
}

async fn upload_tar(
    uds: &Path,
    guest_dir: &str,
    source: impl AsyncRead + Unpin,
    limits: &AgentLimits,
) -> Result<()> {
    let request = FileRequest::ArchiveIn {
        dest: guest_dir.into(),
    };
    FileConnection::open(uds, request, limits)
        .await?
        .upload(source)
        .await
}

async fn download_tar(
    uds: &Path,
    guest_path: &str,
    mut sink: impl AsyncWrite + Unpin,
    limits: &AgentLimits,
) -> Result<()> {
    let request = FileRequest::ArchiveOut {
        path: guest_path.into(),
    };
    let mut c = FileConnection::open(uds, request, limits).await?;
    let deadline = c.deadline;
    while let Some(chunk) = c.next_chunk().await? {
        // The caller's sink is not the agent: only the deadline bounds it.
        let written = async {
            sink.write_all(&chunk)
                .await
                .map_err(Error::io("writing the archive"))
        };
        bounded(FAR_FUTURE, deadline, "the archive's writer", written).await?;
    }
    sink.flush().await.map_err(Error::io("writing the archive"))
}

async fn copy_in(
    uds: &Path,
    host_path: &Path,
    guest_path: &str,
    limits: &AgentLimits,
) -> Result<()> {
    let (guest_dir, name) = split_guest_path(guest_path)?;
    // Fail before connecting when the source is not there.
    std::fs::symlink_metadata(host_path)
        .map_err(Error::io(format!("reading {}", host_path.display())))?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let src = host_path.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(MAX_CHUNK_LEN),
        };
        let packed = archive::pack(&src, OsStr::new(&name), writer)
            .and_then(|mut w| w.flush().map_err(|e| FileError::from_io("archiving", &e)));
        if let Err(e) = &packed {
            // The upload must not end as if complete.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.clone())));
        }
        packed.map(drop)
    });
    let reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    };
    let uploaded = upload_tar(uds, &guest_dir, reader, limits).await;
    let packed = packer.await;
    // A packing failure also fails the upload (its reader returns the error), so the
    // upload's error is the one to report.
    match (uploaded, packed) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Err(e))) => Err(Error::Io {
            context: format!("copying {} into the sandbox", host_path.display()),
            source: std::io::Error::other(e),
        }),
        (Ok(()), Ok(Ok(()))) => Ok(()),
        (Ok(()), Err(join)) => Err(Error::io("archiving")(std::io::Error::other(join))),
    }
}

async fn copy_out(
    uds: &Path,
    guest_path: &str,
    host_path: &Path,
    limits: &AgentLimits,
) -> Result<()> {
    let name = host_path
        .file_name()
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "{}: name the file or directory to create on the host",
                host_path.display()
            ))
        })?
        .to_os_string();
    let parent = match host_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let request = FileRequest::ArchiveOut {
        path: guest_path.into(),
    };
    let mut c = FileConnection::open(uds, request, limits).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let unpack_limits = archive::UnpackLimits {
        max_entries: limits.max_copy_entries,
        max_bytes: limits.max_copy_bytes,
    };
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChannelBlockingReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        archive::unpack_with(reader, &parent, Some(&name), &unpack_limits)
    });
    let downloaded = async {
        while let Some(chunk) = c.next_chunk().await? {
            if tx.send(Ok(chunk)).await.is_err() {
                // The unpacker stopped; its error says why.
                break;
            }
        }
        Ok(())
    }
    .await;
    if downloaded.is_err() {
        let _ = tx
            .send(Err(std::io::Error::other("the download failed")))
            .await;
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| Error::io("unpacking")(std::io::Error::other(e)))?;
    // A failed download also fails the unpack (its reader returns an error), so the
    // download's error is the one to report; an unpacker that stops ends the download
    // without one.
    downloaded?;
    unpacked.map_err(|e| unpack_error(e, host_path, limits))
}

/// The SDK error for a failed unpack on the host: a limit of [`AgentLimits`] is typed.
fn unpack_error(e: FileError, host_path: &Path, limits: &AgentLimits) -> Error {
    // The unpacker's messages name the limit; a fixed one (an extension header's size)
    // is not the caller's to raise and stays an I/O error naming the refusal.
    let setting = if e.kind != FileErrorKind::LimitExceeded {
        None
    } else if e.message.contains("entries") {
        Some((limits.max_copy_entries, "max_copy_entries"))
    } else if e.message.contains("for the whole copy") {
        Some((limits.max_copy_bytes, "max_copy_bytes"))
    } else {
        None
    };
    if let Some((limit, setting)) = setting {
        return Error::LimitExceeded {
            what: format!("copying into {}: {}", host_path.display(), e.message),
            limit,
            setting,
        };
    }
    Error::Io {
        context: format!("copying into {}", host_path.display()),
        source: std::io::Error::other(e),
    }
}

impl Sandbox {
    /// The contents of the guest file `path` (symlinks followed); a file larger than
    /// [`AgentLimits::max_read_file`] is [`Error::LimitExceeded`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        read_all(&self.dir().vsock_socket(), path, self.agent_limits()).await
    }

    /// The guest file `path` as a stream, for files too large to hold in memory.
    pub async fn read_file_stream(&self, path: &str) -> Result<FileReader> {
        read_stream(&self.dir().vsock_socket(), path, self.agent_limits()).await
    }

    /// Replaces (or creates) the guest file `path` with `data`, atomically.
    pub async fn write_file(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        self.write_file_with(path, data.as_ref(), WriteOptions::default())
            .await
    }

    /// Replaces (or creates) the guest file `path` with what `source` yields, atomically;
    /// `mode` as in [`WriteOptions::mode`].
    pub async fn write_file_from(
        &self,
        path: &str,
        source: impl AsyncRead + Unpin,
        mode: Option<u32>,
    ) -> Result<()> {
        let options = WriteOptions {
            mode,
            ..WriteOptions::default()
        };
        self.write_file_with(path, source, options).await
    }

    /// Writes the guest file `path` from `source` as `options` say.
    pub async fn write_file_with(
        &self,
        path: &str,
        source: impl AsyncRead + Unpin,
        options: WriteOptions,
    ) -> Result<()> {
        write_from(
            &self.dir().vsock_socket(),
            path,
            source,
            options,
            self.agent_limits(),
        )
        .await
    }

    /// The entries of the guest directory `path`, sorted by name; more than
    /// [`AgentLimits::max_list_entries`] is [`Error::LimitExceeded`].
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        list(&self.dir().vsock_socket(), path, self.agent_limits()).await
    }

    /// What the guest path `path` is, symlinks followed.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        stat_path(&self.dir().vsock_socket(), path, true, self.agent_limits()).await
    }

    /// What the guest path `path` is, a symlink itself described.
    pub async fn lstat(&self, path: &str) -> Result<FileStat> {
        stat_path(&self.dir().vsock_socket(), path, false, self.agent_limits()).await
    }

    /// Creates the guest directory `path` (mode 0755); with `parents`, missing parents too,
    /// and an existing directory is fine.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let request = FileRequest::Mkdir {
            path: path.into(),
            parents,
            mode: None,
        };
        simple(&self.dir().vsock_socket(), request, self.agent_limits()).await
    }

    /// Removes the guest file, symlink or empty directory `path`; with `recursive`, a
    /// directory and everything in it. (Named so because [`Sandbox::remove`] removes the
    /// sandbox.)
    pub async fn remove_path(&self, path: &str, recursive: bool) -> Result<()> {
        let request = FileRequest::Remove {
            path: path.into(),
            recursive,
        };
        simple(&self.dir().vsock_socket(), request, self.agent_limits()).await
    }

    /// Renames the guest path `from` to `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let request = FileRequest::Rename {
            from: from.into(),
            to: to.into(),
        };
        simple(&self.dir().vsock_socket(), request, self.agent_limits()).await
    }

    /// Copies the host file or directory tree `host_path` to `guest_path` (which it
    /// becomes; an existing directory there is merged into, files in it replaced). Symlinks
    /// are copied as links.
    pub async fn copy_in(&self, host_path: impl AsRef<Path>, guest_path: &str) -> Result<()> {
        copy_in(
            &self.dir().vsock_socket(),
            host_path.as_ref(),
            guest_path,
            self.agent_limits(),
        )
        .await
    }

    /// Copies the guest file or directory tree `guest_path` to `host_path` (which it
    /// becomes; its parent must exist).
    ///
    /// The guest is treated as hostile, even when `host_path` is in a directory it shares
    /// (a volume) and changes meanwhile: everything is created relative to the parent's
    /// directory fd, never through a symlink, only beneath `host_path`
    /// ([`msbvm_protocol::files::archive`]). Symlinks are copied as links and never
    /// followed; an existing file or symlink is replaced (a new file renamed over it), an
    /// existing directory is merged into. Modes keep only the permission bits, less the
    /// umask (no set-id bits, no devices or FIFOs). At most
    /// [`AgentLimits::max_copy_entries`] entries and [`AgentLimits::max_copy_bytes`] bytes
    /// are written, else [`Error::LimitExceeded`].
    pub async fn copy_out(&self, guest_path: &str, host_path: impl AsRef<Path>) -> Result<()> {
        copy_out(
            &self.dir().vsock_socket(),
            guest_path,
            host_path.as_ref(),
            self.agent_limits(),
        )
        .await
    }

    /// Writes a tar archive of the guest path `guest_path` (its root entry named like it)
    /// to `sink`.
    pub async fn download_archive(
        &self,
        guest_path: &str,
        sink: impl AsyncWrite + Unpin,
    ) -> Result<()> {
        download_tar(
            &self.dir().vsock_socket(),
            guest_path,
            sink,
            self.agent_limits(),
        )
        .await
    }

    /// Unpacks the tar archive read from `source` into the existing guest directory
    /// `guest_dir`.
    pub async fn upload_archive(
        &self,
        guest_dir: &str,
        source: impl AsyncRead + Unpin,
    ) -> Result<()> {
        upload_tar(
            &self.dir().vsock_socket(),
            guest_dir,
            source,
            self.agent_limits(),
        )
        .await
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
