//! A bounded ring buffer holding guest data its host socket has not taken yet.
//!
//! Its capacity equals the buf_alloc we advertise to the guest, so a guest
//! that honours credit can never overflow it, and one that does not gets its
//! connection reset instead of growing host memory. The storage is allocated
//! on first use and released when drained, so idle connections cost nothing.

use std::io::{self, Write};

use thiserror::Error;

use crate::vsock::defs::TX_BUF_SIZE;

/// The buffer would exceed its capacity.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("connection TX buffer full ({len} buffered, {incoming} more)")]
pub struct TxBufFull {
    /// Bytes already buffered.
    pub len: usize,
    /// Bytes that did not fit.
    pub incoming: usize,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct TxBuf {
    data: Vec<u8>,
    head: usize,
    len: usize,
}

impl TxBuf {
    /// Most bytes the buffer holds.
    pub const CAPACITY: usize = TX_BUF_SIZE as usize;

    /// An empty buffer (no storage yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends all of `src`, or nothing if it does not fit.
    pub fn push(&mut self, src: &[u8]) -> Result<(), TxBufFull> {
        if src.len() > Self::CAPACITY - self.len {
            return Err(TxBufFull {
                len: self.len,
                incoming: src.len(),
            });
        }
        if self.data.is_empty() {
            self.data = vec![0; Self::CAPACITY];
        }
        let tail = (self.head + self.len) % Self::CAPACITY;
        let first = src.len().min(Self::CAPACITY - tail);
        self.data[tail..tail + first].copy_from_slice(&src[..first]);
        self.data[..src.len() - first].copy_from_slice(&src[first..]);
        self.len += src.len();
        Ok(())
    }

    /// Writes buffered bytes to `sink` until it would block or the buffer is
    /// empty; returns how many left the buffer. An error is returned only if
    /// nothing could be written (the next flush reports a later one).
    pub fn flush_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while self.len > 0 {
            let end = (self.head + self.len).min(Self::CAPACITY);
            match sink.write(&self.data[self.head..end]) {
                Ok(0) => break,
                Ok(n) => {
                    written += n;
                    self.head = (self.head + n) % Self::CAPACITY;
                    self.len -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if self.len == 0 {
            // Give the memory back; most connections rarely buffer.
            self.data = Vec::new();
            self.head = 0;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes, then would block.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        fail: bool,
    }

    impl Sink {
        fn with_room(room: usize) -> Self {
            Sink {
                got: Vec::new(),
                room,
                fail: false,
            }
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            if self.room == 0 {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            let n = buf.len().min(self.room).min(1000);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn push_beyond_capacity_is_refused_whole() {
        let mut b = TxBuf::new();
        b.push(&vec![1; TxBuf::CAPACITY - 10]).unwrap();
        assert_eq!(
            b.push(&[0; 11]),
            Err(TxBufFull {
                len: TxBuf::CAPACITY - 10,
                incoming: 11
            })
        );
        b.push(&[2; 10]).unwrap();
        assert_eq!(b.len, TxBuf::CAPACITY);
        assert!(b.push(&[3]).is_err());
    }

    #[test]
    fn data_survives_wraparound_in_order() {
        let mut b = TxBuf::new();
        let mut sink = Sink::with_room(0);
        let mut expected = Vec::new();
        let mut next = 0u8;
        for round in 0..20 {
            let chunk: Vec<u8> = (0..50_000)
                .map(|_| {
                    next = next.wrapping_add(7);
                    next
                })
                .collect();
            if b.push(&chunk).is_ok() {
                expected.extend_from_slice(&chunk);
            }
            sink.room = 30_000 + round * 1000;
            b.flush_to(&mut sink).unwrap();
        }
        sink.room = usize::MAX;
        b.flush_to(&mut sink).unwrap();
        assert!(b.is_empty());
        assert_eq!(sink.got, expected);
    }

    #[test]
    fn flush_stops_when_sink_would_block_and_reports_errors() {
        let mut b = TxBuf::new();
        b.push(&[9; 5000]).unwrap();
        let mut sink = Sink::with_room(1200);
        assert_eq!(b.flush_to(&mut sink).unwrap(), 1200);
        assert_eq!(b.len, 3800);
        assert_eq!(b.flush_to(&mut sink).unwrap(), 0);
        sink.fail = true;
        assert!(b.flush_to(&mut sink).is_err());
        assert_eq!(b.len, 3800);
    }

    #[test]
    fn drained_buffer_releases_its_storage() {
        let mut b = TxBuf::new();
        b.push(&[1; 10]).unwrap();
        let mut sink = Sink::with_room(100);
        b.flush_to(&mut sink).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.data.capacity(), 0);
    }
}
