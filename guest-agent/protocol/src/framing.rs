//! Frames over byte streams: one [`FrameDecoder`] driven by a blocking reader ([`FrameReader`])
//! and, with the `tokio` feature, an async one ([`AsyncFrameReader`]), and the writers that
//! go with them. The guest agent, the SDK and the runtime-control protocol all read through
//! these.
//!
//! End of stream: a reader returns `Ok(None)` when the stream ends between frames (the peer
//! closed cleanly) and [`FrameError::Truncated`] when it ends inside a frame (its length
//! prefix or its body cut short): the message was lost, which the caller must not mistake
//! for a clean close. A frame that does not decode is [`FrameError::Codec`] with
//! [`Error::Malformed`] after it was consumed, so the caller may go on reading
//! ([`FrameError::is_recoverable`]); one that announces more than [`crate::MAX_FRAME_LEN`] is
//! refused before it is buffered and ends the stream (it cannot be resynchronised).

use std::io::{self, Read, Write};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{encode, Error, FrameDecoder};

/// Size of one read from the stream.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A frame was too large or did not decode.
    #[error(transparent)]
    Codec(#[from] Error),
    /// The stream ended in the middle of a frame.
    #[error("the connection ended in the middle of a message: {}", cut_short(.received, .expected))]
    Truncated {
        /// Bytes of the unfinished frame that arrived, its length prefix included.
        received: usize,
        /// The frame's whole length, prefix included, if its prefix arrived.
        expected: Option<usize>,
    },
}

/// How much of a truncated frame arrived, for [`FrameError::Truncated`]'s message.
fn cut_short(received: &usize, expected: &Option<usize>) -> String {
    match expected {
        Some(len) => format!("{received} of the frame's {len} bytes arrived"),
        None => format!("{received} of the 4 bytes of a frame's length arrived"),
    }
}

impl FrameError {
    /// Whether reading can go on after this error (a malformed frame was skipped).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::Codec(Error::Malformed(_)))
    }
}

impl From<FrameError> for io::Error {
    /// For callers that speak `io::Result`: an I/O failure stays itself, a framing failure is
    /// invalid data.
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The state both readers share: the decoder and the buffer reads land in.
#[derive(Debug)]
struct ReadState {
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl ReadState {
    fn new() -> Self {
        ReadState {
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// Takes in a read of `n` bytes into `buf`; `Ok(false)` at a clean end of stream.
    fn filled(&mut self, n: usize) -> Result<bool, FrameError> {
        if n > 0 {
            self.decoder.push(&self.buf[..n]);
            return Ok(true);
        }
        match self.decoder.buffered() {
            0 => Ok(false),
            received => Err(FrameError::Truncated {
                received,
                expected: self.decoder.pending_frame_len(),
            }),
        }
    }
}

/// Reads frames from a blocking stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    state: ReadState,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            state: ReadState::new(),
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(message) = self.state.decoder.next_message()? {
                return Ok(Some(message));
            }
            let n = match self.inner.read(&mut self.state.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if !self.state.filled(n)? {
                return Ok(None);
            }
        }
    }
}

/// Writes one message as a frame to a blocking stream.
pub fn write_blocking<W: Write, T: Serialize>(w: &mut W, message: &T) -> Result<(), FrameError> {
    let frame = encode(message)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Writes whole frames to a blocking stream shared by several threads: each frame is written
/// under the lock, so frames never interleave. Writes block while the peer does not read,
/// which is the backpressure on a process's output.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: Mutex<W>,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner: Mutex::new(inner),
        }
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&self, message: &T) -> Result<(), FrameError> {
        // A thread that panicked mid-write cannot have left half a frame behind a whole one
        // (write_all either finished or the stream is broken anyway): keep going.
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        write_blocking(&mut *w, message)
    }
}

#[cfg(feature = "tokio")]
pub use self::async_io::{write_async, AsyncFrameReader};

#[cfg(feature = "tokio")]
mod async_io {
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{FrameError, ReadState};
    use crate::encode;

    /// Reads frames from an async stream.
    #[derive(Debug)]
    pub struct AsyncFrameReader<R> {
        inner: R,
        state: ReadState,
    }

    impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
        /// Wraps a stream.
        pub fn new(inner: R) -> Self {
            AsyncFrameReader {
                inner,
                state: ReadState::new(),
            }
        }

        /// The next message; `Ok(None)` at a clean end of stream.
        pub async fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
            loop {
                if let Some(message) = self.state.decoder.next_message()? {
                    return Ok(Some(message));
                }
                let n = self.inner.read(&mut self.state.buf).await?;
                if !self.state.filled(n)? {
                    return Ok(None);
                }
            }
        }
    }

    /// Writes one message as a frame to an async stream.
    pub async fn write_async<W: AsyncWrite + Unpin, T: Serialize>(
        w: &mut W,
        message: &T,
    ) -> Result<(), FrameError> {
        let frame = encode(message)?;
        w.write_all(&frame).await?;
        w.flush().await?;
        Ok(())
    }
}

// The tests drive both readers side by side.
#[cfg(all(test, feature = "tokio"))]
mod tests;
