//! `msbvm_protocol` frames over byte streams: async (tokio) readers and writers for the SDK,
//! blocking ones for the runtime. The runtime-control protocol reuses the same framing.
//!
//! A reader returns `Ok(None)` on a clean end of stream (between frames) and
//! [`FrameError::Truncated`] when the stream ends inside a frame. A malformed frame is
//! reported as [`FrameError::Codec`] after it was consumed, so the caller may go on reading.

use std::io::{self, Read, Write};

use msbvm_protocol::FrameDecoder;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    Codec(#[from] msbvm_protocol::Error),
    /// The stream ended in the middle of a frame.
    #[error("the connection ended in the middle of a message")]
    Truncated,
}

impl FrameError {
    /// Whether reading can go on after this error (a malformed frame was skipped).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::Codec(msbvm_protocol::Error::Malformed(_)))
    }
}

/// Reads frames from an async stream.
#[derive(Debug)]
pub struct AsyncFrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        AsyncFrameReader {
            inner,
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                return if self.decoder.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// Writes one message as a frame to an async stream.
pub async fn write_async<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let frame = msbvm_protocol::encode(message)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads frames from a blocking stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            let n = match self.inner.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.decoder.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// Writes one message as a frame to a blocking stream.
pub fn write_blocking<W: Write, T: Serialize>(w: &mut W, message: &T) -> Result<(), FrameError> {
    let frame = msbvm_protocol::encode(message)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::HostMessage;

    #[tokio::test]
    async fn async_reader_splits_frames_and_sees_clean_eof() {
        let (a, mut b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            write_async(&mut b, &HostMessage::Ping).await.unwrap();
            write_async(&mut b, &HostMessage::Stdin(vec![7; 100]))
                .await
                .unwrap();
        });
        let mut r = AsyncFrameReader::new(a);
        assert_eq!(r.read_message().await.unwrap(), Some(HostMessage::Ping));
        assert_eq!(
            r.read_message().await.unwrap(),
            Some(HostMessage::Stdin(vec![7; 100]))
        );
        writer.await.unwrap();
        assert!(r.read_message::<HostMessage>().await.unwrap().is_none());
    }

    #[test]
    fn blocking_reader_reports_truncation_and_skips_malformed() {
        let mut bytes = vec![2, 0, 0, 0, 0xff, 0xff];
        bytes.extend(msbvm_protocol::encode(&HostMessage::Ping).unwrap());
        bytes.extend([9, 0, 0, 0, 1]);
        let mut r = FrameReader::new(&bytes[..]);
        let e = r.read_message::<HostMessage>().unwrap_err();
        assert!(e.is_recoverable(), "{e}");
        assert_eq!(r.read_message().unwrap(), Some(HostMessage::Ping));
        assert!(matches!(
            r.read_message::<HostMessage>(),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn blocking_writer_writes_decodable_frames() {
        let mut out = Vec::new();
        write_blocking(&mut out, &HostMessage::Signal(2)).unwrap();
        let mut r = FrameReader::new(&out[..]);
        assert_eq!(r.read_message().unwrap(), Some(HostMessage::Signal(2)));
    }
}
