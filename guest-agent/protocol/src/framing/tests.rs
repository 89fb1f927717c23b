use std::io::{self, Read};

use proptest::prelude::*;

use super::*;
use crate::{HostMessage, MAX_FRAME_LEN};

/// Reads everything `bytes` holds with the blocking reader: the messages, then how the stream
/// ended.
fn read_all_blocking(bytes: &[u8]) -> (Vec<HostMessage>, Result<(), FrameError>) {
    read_all_from(FrameReader::new(bytes))
}

fn read_all_from<R: Read>(mut r: FrameReader<R>) -> (Vec<HostMessage>, Result<(), FrameError>) {
    let mut got = Vec::new();
    loop {
        match r.read_message() {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// The same with the async reader.
fn read_all_async(bytes: &[u8]) -> (Vec<HostMessage>, Result<(), FrameError>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = AsyncFrameReader::new(bytes);
        let mut got = Vec::new();
        loop {
            match r.read_message().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, Ok(())),
                Err(e) => return (got, Err(e)),
            }
        }
    })
}

/// Both readers, which must agree.
fn read_all(bytes: &[u8]) -> (Vec<HostMessage>, Result<(), FrameError>) {
    let blocking = read_all_blocking(bytes);
    let asynchronous = read_all_async(bytes);
    assert_eq!(blocking.0, asynchronous.0);
    assert_eq!(format!("{:?}", blocking.1), format!("{:?}", asynchronous.1));
    blocking
}

fn frames(messages: &[HostMessage]) -> Vec<u8> {
    messages.iter().flat_map(|m| encode(m).unwrap()).collect()
}

#[test]
fn clean_eof_between_frames_is_end_of_stream() {
    let messages = [HostMessage::Ping, HostMessage::Stdin(vec![7; 100])];
    let (got, end) = read_all(&frames(&messages));
    assert_eq!(got, messages);
    end.unwrap();
    let (got, end) = read_all(&[]);
    assert!(got.is_empty());
    end.unwrap();
}

#[test]
fn eof_mid_body_is_truncated_and_names_the_frame() {
    let mut bytes = frames(&[HostMessage::Ping]);
    let cut = encode(&HostMessage::Stdin(vec![1; 10])).unwrap();
    bytes.extend(&cut[..cut.len() - 3]);
    let (got, end) = read_all(&bytes);
    assert_eq!(got, [HostMessage::Ping]);
    let e = end.unwrap_err();
    match e {
        FrameError::Truncated { received, expected } => {
            assert_eq!(received, cut.len() - 3);
            assert_eq!(expected, Some(cut.len()));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(!e.is_recoverable());
    let text = e.to_string();
    assert!(text.contains("middle of a message"), "{text}");
    assert!(text.contains(&cut.len().to_string()), "{text}");
}

#[test]
fn eof_mid_length_prefix_is_truncated() {
    let (_, end) = read_all(&[5, 0]);
    assert!(matches!(
        end,
        Err(FrameError::Truncated {
            received: 2,
            expected: None
        })
    ));
}

#[test]
fn malformed_frame_is_skipped_and_oversized_ends_the_stream() {
    let mut bytes = vec![2, 0, 0, 0, 0xff, 0xff];
    bytes.extend(frames(&[HostMessage::Ping]));
    bytes.extend((MAX_FRAME_LEN as u32 + 1).to_le_bytes());
    let mut r = FrameReader::new(&bytes[..]);
    let e = r.read_message::<HostMessage>().unwrap_err();
    assert!(e.is_recoverable(), "{e}");
    assert_eq!(r.read_message().unwrap(), Some(HostMessage::Ping));
    let e = r.read_message::<HostMessage>().unwrap_err();
    assert!(
        matches!(e, FrameError::Codec(Error::FrameTooLarge(_))),
        "{e}"
    );
    assert!(!e.is_recoverable());
}

#[test]
fn writers_write_decodable_frames() {
    let mut out = Vec::new();
    write_blocking(&mut out, &HostMessage::Signal(2)).unwrap();
    let shared = FrameWriter::new(Vec::new());
    shared.send(&HostMessage::CloseStdin).unwrap();
    out.extend(shared.inner.into_inner().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(write_async(&mut out, &HostMessage::Ping))
        .unwrap();
    let (got, end) = read_all(&out);
    assert_eq!(
        got,
        [
            HostMessage::Signal(2),
            HostMessage::CloseStdin,
            HostMessage::Ping
        ]
    );
    end.unwrap();
}

#[test]
fn framing_errors_become_invalid_data_io_errors() {
    let e: io::Error = FrameError::Truncated {
        received: 1,
        expected: None,
    }
    .into();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let e: io::Error = FrameError::Io(io::ErrorKind::BrokenPipe.into()).into();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}

/// A reader that hands out its bytes in pieces of the given sizes, the way a socket splits
/// a stream.
struct Pieces<'a> {
    bytes: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

fn message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        Just(HostMessage::Ping),
        Just(HostMessage::CloseStdin),
        any::<i32>().prop_map(HostMessage::Signal),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(HostMessage::Stdin),
    ]
}

proptest! {
    /// Any prefix of a stream of frames reads as the frames it holds whole, then a clean end
    /// if it stops at a frame boundary and `Truncated` otherwise, whatever pieces the stream
    /// arrives in and with either reader.
    #[test]
    fn any_cut_reads_whole_frames_then_ends_by_where_it_was_cut(
        messages in proptest::collection::vec(message(), 0..6),
        cut in any::<prop::sample::Index>(),
        sizes in proptest::collection::vec(1usize..40, 1..5),
    ) {
        let bytes = frames(&messages);
        let cut = cut.index(bytes.len() + 1);
        let mut boundary = 0;
        let mut whole = 0;
        for m in &messages {
            let len = encode(m).unwrap().len();
            if boundary + len > cut {
                break;
            }
            boundary += len;
            whole += 1;
        }
        let (got, end) = read_all(&bytes[..cut]);
        prop_assert_eq!(&got[..], &messages[..whole]);
        if cut == boundary {
            prop_assert!(end.is_ok(), "{:?}", end);
        } else {
            let truncated = matches!(
                end,
                Err(FrameError::Truncated { received, .. }) if received == cut - boundary
            );
            prop_assert!(truncated, "{:?}", end);
        }
        let pieces = Pieces { bytes: &bytes[..cut], sizes, next: 0 };
        let (by_pieces, end_by_pieces) = read_all_from(FrameReader::new(pieces));
        prop_assert_eq!(by_pieces, got);
        prop_assert_eq!(format!("{end_by_pieces:?}"), format!("{end:?}"));
    }
}
