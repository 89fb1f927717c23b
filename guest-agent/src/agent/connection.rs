//! What a host connection is to the agent: a [`Stream`] it can serve and the
//! [`ConnectionError`]s that end one. Both the request loop (`server`)
//! and the file operations (`files`) build on it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use msbvm_protocol::framing::FrameError;

/// A bidirectional byte stream the agent can serve.
pub trait Stream: Read + Write + Send + Sized + 'static {
    /// Another handle on the same connection (for the writer side).
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts both directions down, waking a reader blocked on another handle.
    fn shutdown(&self) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, std::net::Shutdown::Both)
    }
}

/// Errors that end a connection early (logged by the caller).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket I/O failed.
    #[error("connection i/o: {0}")]
    Io(#[from] io::Error),
    /// The host broke the framing (or the stream ended inside a frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The host speaks another protocol version.
    #[error(transparent)]
    Protocol(#[from] msbvm_protocol::Error),
    /// The first message was not `Hello`.
    #[error("the host's first message was not Hello")]
    NoHello,
}
