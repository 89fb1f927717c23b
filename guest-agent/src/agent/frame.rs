//! Protocol frames over blocking streams: a reader for one thread and a
//! writer many threads share.

use std::io::{self, Read, Write};
use std::sync::Mutex;

use msbvm_protocol::{encode, Error as ProtocolError, FrameDecoder};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What arrived.
#[derive(Debug)]
pub enum Incoming<T> {
    /// A message.
    Message(T),
    /// A frame that did not decode (already skipped; the stream goes on).
    Malformed(String),
}

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading failed.
    #[error("reading from the host: {0}")]
    Io(#[from] io::Error),
    /// A frame announced more than the protocol allows; the stream cannot be
    /// resynchronised.
    #[error(transparent)]
    TooLarge(ProtocolError),
}

/// Reads frames from a stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The next message or malformed frame; `Ok(None)` at end of stream
    /// (a partial frame at the end is dropped: the peer is gone anyway).
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<Incoming<T>>, FrameError> {
        loop {
            match self.decoder.next_message::<T>() {
                Ok(Some(m)) => return Ok(Some(Incoming::Message(m))),
                Ok(None) => {}
                Err(e @ ProtocolError::FrameTooLarge(_)) => return Err(FrameError::TooLarge(e)),
                Err(e) => return Ok(Some(Incoming::Malformed(e.to_string()))),
            }
            let n = match self.inner.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// Writes whole frames; shared by the threads of a connection, each frame
/// written under the lock so frames never interleave. Writes block while
/// the peer does not read, which is the backpressure on process output.
pub struct FrameWriter<W> {
    inner: Mutex<W>,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner: Mutex::new(inner),
        }
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&self, message: &T) -> io::Result<()> {
        let frame = encode(message).map_err(io::Error::other)?;
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&frame)?;
        w.flush()
    }
}
