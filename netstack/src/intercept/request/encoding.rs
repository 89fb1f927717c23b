//! Content codings on connections where masking matters.
//!
//! A secret's value goes only to its bound hosts, so only their responses can echo it. Masking
//! works on plain bytes: a response compressed with `Content-Encoding: gzip` would carry the
//! value past the masker untouched. So on a connection where a secret is eligible:
//!
//! - the request's `Accept-Encoding` offers only what the engine can decode (gzip, deflate,
//!   identity; [`restrict_accept_encoding`]), so a well-behaved upstream never sends anything
//!   else;
//! - a response in gzip or deflate (also stacked, up to [`MAX_CODINGS`]) is decoded as it
//!   streams ([`Decoder`]), masked, and reaches the guest decoded, without `Content-Encoding`;
//! - a response in any other coding (br, zstd, compress, unknown) is refused with a `502`
//!   rather than passed through ([`Codings::Unsupported`]).
//!
//! Decoding is bounded: the decoder makes at most [`CHUNK`] bytes per step, so memory never
//! follows the output, and the output may exceed [`RATIO_FLOOR`] only while it stays within
//! [`MAX_RATIO`] times the compressed bytes read; past that the response is cut with an error
//! (a decompression bomb costs the host a few MiB of CPU work, not memory or unbounded work).
//! Buffered responses additionally count their decoded bytes against the engine's buffering
//! limits (`request.rs`).
//!
//! Other connections of a sandbox with secrets (no secret eligible) keep their codings: their
//! upstreams never received a value, and decoding all their traffic would cost every download.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read};
use std::rc::Rc;

use bytes::{Buf, Bytes};
use flate2::bufread::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use hyper::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, ETAG};
use hyper::HeaderMap;

/// Most decoded bytes one decoding step makes (and the buffer between stacked codings).
pub(crate) const CHUNK: usize = 32 * 1024;
/// Decoded output up to this size is never cut for its ratio (small, very repetitive bodies).
pub(crate) const RATIO_FLOOR: u64 = 4 * 1024 * 1024;
/// Past [`RATIO_FLOOR`], decoded bytes may be at most this many times the compressed bytes
/// read. Text and JSON compress 5 to 20 times; deflate tops out near 1032.
pub(crate) const MAX_RATIO: u64 = 100;
/// Most codings stacked in one `Content-Encoding` (each holds a window and a buffer).
pub(crate) const MAX_CODINGS: usize = 3;

/// A content coding the engine decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    /// `gzip` / `x-gzip` (RFC 1952, members concatenated allowed).
    Gzip,
    /// `deflate`: zlib (RFC 1950) as the RFC says, or raw deflate as some servers send it.
    Deflate,
}

/// What a response's `Content-Encoding` asks of the engine.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Codings {
    /// No coding (absent, or only `identity`).
    Identity,
    /// Decodable codings in the order they were applied.
    Decode(Vec<Coding>),
    /// A coding the engine cannot decode, or too many stacked; the text names it.
    Unsupported(String),
}

/// Reads the `Content-Encoding` of `headers` (every line, in order).
pub(crate) fn response_codings(headers: &HeaderMap) -> Codings {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Codings::Unsupported("a Content-Encoding that is not text".into());
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let coding = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                _ => return Codings::Unsupported(format!("Content-Encoding {token}")),
            };
            codings.push(coding);
        }
    }
    match codings.len() {
        0 => Codings::Identity,
        n if n > MAX_CODINGS => Codings::Unsupported(format!("{n} stacked content codings")),
        _ => Codings::Decode(codings),
    }
}

/// Rewrites `Accept-Encoding` so that it offers only codings the engine decodes, keeping the
/// guest's preferences (q-values) among them. `*` goes (it would let the upstream pick br or
/// zstd); an absent header becomes `identity` (RFC 9110 lets a server send any coding to a
/// request without one). When nothing acceptable is left, `identity` is asked for.
pub(crate) fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let mut out = String::new();
    let mut acceptable = false;
    let offered = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for entry in offered {
        let mut params = entry.split(';').map(str::trim);
        let coding = params.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(coding.as_str(), "gzip" | "x-gzip" | "deflate" | "identity") {
            continue;
        }
        let mut q = Some(1.0);
        for param in params {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("q") {
                    q = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q));
                }
            }
        }
        // A malformed weight drops the entry rather than guessing what the guest meant.
        let Some(q) = q else { continue };
        acceptable |= q > 0.0;
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&coding);
        if q < 1.0 {
            // RFC 9110 weights have at most three decimals.
            let _ = write!(out, ";q={}", (q * 1000.0).round() / 1000.0);
        }
    }
    if !acceptable {
        out = "identity".into();
    }
    headers.remove(ACCEPT_ENCODING);
    if let Ok(value) = HeaderValue::from_str(&out) {
        headers.insert(ACCEPT_ENCODING, value);
    }
}

/// Headers of a response the guest gets decoded: the coding is gone, and what described the
/// coded bytes goes with it.
///
/// A strong `ETag` becomes weak: a strong validator promises these exact bytes, and the guest
/// gets other bytes of the same meaning, which is what a weak one states (nginx does the same
/// when it compresses). Revalidation keeps working, since `If-None-Match` compares weakly and
/// the upstream matches `W/"x"` against its `"x"`; `If-Match` / `If-Range`, which compare
/// strongly, fail as they should. Digests of the coded content are dropped.
pub(crate) fn decoded_headers(headers: &mut HeaderMap) {
    headers.remove(CONTENT_ENCODING);
    for name in ["content-md5", "digest", "content-digest", "repr-digest"] {
        headers.remove(name);
    }
    if let Some(etag) = headers.get(ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(weak) => headers.insert(ETAG, weak),
                Err(_) => headers.remove(ETAG),
            };
        }
    }
}

/// Why decoding stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The body is not what its `Content-Encoding` says (or is cut short).
    #[error("corrupt compressed response body: {0}")]
    Corrupt(io::Error),
    /// The output went over the bound ([`RATIO_FLOOR`], [`MAX_RATIO`]).
    #[error("compressed response body expands more than {MAX_RATIO} times (decompression bomb?)")]
    TooLarge,
    /// Bytes followed the end of the compressed stream.
    #[error("data after the end of the compressed response body")]
    Trailing,
}

/// What one decoding step gave.
#[derive(Debug)]
pub(crate) enum Step {
    /// Decoded bytes (at most [`CHUNK`]).
    Data(Bytes),
    /// Nothing until more compressed input is pushed (or its end announced).
    NeedInput,
    /// The compressed stream ended, complete and checked.
    End,
}

/// Compressed bytes waiting for the decoder, and whether more can come.
#[derive(Default)]
struct Input {
    queue: VecDeque<Bytes>,
    ended: bool,
    /// Compressed bytes pushed so far.
    pushed: u64,
    /// Compressed bytes the decoder has read.
    consumed: u64,
}

/// The decoder's view of [`Input`]: blocks (`WouldBlock`) while empty and more may come.
struct Feed {
    input: Rc<RefCell<Input>>,
    current: Bytes,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Feed {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.current.is_empty() {
            let mut input = self.input.borrow_mut();
            match input.queue.pop_front() {
                Some(next) => self.current = next,
                None if input.ended => return Ok(&[]),
                None => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.current.len());
        self.current.advance(n);
        self.input.borrow_mut().consumed += n as u64;
    }
}

/// `deflate` as found in the wild: zlib when the first two bytes are a zlib header (as
/// browsers decide), raw deflate otherwise.
enum Deflate {
    Sniff {
        src: Box<dyn BufRead>,
        head: Vec<u8>,
    },
    Decoding(Box<dyn Read>),
}

/// The first two bytes of a stream already read, then the rest.
type Resumed = Chain<Cursor<Vec<u8>>, Box<dyn BufRead>>;

impl Read for Deflate {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self {
                Deflate::Decoding(inner) => return inner.read(buf),
                Deflate::Sniff { src, head } => {
                    let mut byte = [0u8];
                    let eof = head.len() == 2 || src.read(&mut byte)? == 0;
                    if !eof {
                        head.push(byte[0]);
                        continue;
                    }
                    let zlib = matches!(head[..], [cmf, flg]
                        if cmf & 0x0f == 8 && cmf >> 4 <= 7
                            && u16::from_be_bytes([cmf, flg]) % 31 == 0);
                    let src = std::mem::replace(src, Box::new(io::empty()));
                    let resumed: Resumed = Read::chain(Cursor::new(std::mem::take(head)), src);
                    *self = Deflate::Decoding(if zlib {
                        Box::new(ZlibDecoder::new(resumed))
                    } else {
                        Box::new(DeflateDecoder::new(resumed))
                    });
                }
            }
        }
    }
}

/// A streaming decoder of stacked content codings, fed compressed chunks and pulled for
/// decoded ones of at most [`CHUNK`] bytes.
pub(crate) struct Decoder {
    input: Rc<RefCell<Input>>,
    reader: Box<dyn Read>,
    scratch: Box<[u8]>,
    produced: u64,
    /// The stream ended; only the check for trailing bytes is left.
    finished: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("produced", &self.produced)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for `codings` in the order they were applied (the last is undone first).
    pub(crate) fn new(codings: &[Coding]) -> Decoder {
        let input = Rc::new(RefCell::new(Input::default()));
        let mut src: Box<dyn BufRead> = Box::new(Feed {
            input: input.clone(),
            current: Bytes::new(),
        });
        let mut reader: Box<dyn Read> = Box::new(io::empty());
        for (i, coding) in codings.iter().rev().enumerate() {
            if i > 0 {
                src = Box::new(BufReader::with_capacity(CHUNK, reader));
            }
            reader = match coding {
                Coding::Gzip => Box::new(MultiGzDecoder::new(src)),
                Coding::Deflate => Box::new(Deflate::Sniff {
                    src,
                    head: Vec::with_capacity(2),
                }),
            };
            src = Box::new(io::empty());
        }
        Decoder {
            input,
            reader,
            scratch: vec![0; CHUNK].into_boxed_slice(),
            produced: 0,
            finished: false,
        }
    }

    /// Queues compressed bytes (call after [`Step::NeedInput`]).
    pub(crate) fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            let mut input = self.input.borrow_mut();
            input.pushed += data.len() as u64;
            input.queue.push_back(data);
        }
    }

    /// Announces the end of the compressed bytes.
    pub(crate) fn end_input(&mut self) {
        self.input.borrow_mut().ended = true;
    }

    /// Decodes the next piece.
    pub(crate) fn step(&mut self) -> Result<Step, DecodeError> {
        if !self.finished {
            match self.reader.read(&mut self.scratch) {
                Ok(0) => self.finished = true,
                Ok(n) => {
                    self.produced += n as u64;
                    let consumed = self.input.borrow().consumed;
                    if self.produced > RATIO_FLOOR.max(consumed.saturating_mul(MAX_RATIO)) {
                        return Err(DecodeError::TooLarge);
                    }
                    return Ok(Step::Data(Bytes::copy_from_slice(&self.scratch[..n])));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::NeedInput),
                Err(e) => return Err(DecodeError::Corrupt(e)),
            }
        }
        // A coding that ended may have left bytes it did not read (zlib and raw deflate stop
        // at their end marker); they would go nowhere, so they are an error.
        let input = self.input.borrow();
        if input.pushed > input.consumed {
            return Err(DecodeError::Trailing);
        }
        Ok(if input.ended {
            Step::End
        } else {
            Step::NeedInput
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `coded` fed in `chunks`, asserting every step's bound; the output, or the error.
    fn decode(codings: &[Coding], coded: &[u8], cuts: &[usize]) -> Result<Vec<u8>, DecodeError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(coded.len())).collect();
        cuts.sort_unstable();
        cuts.push(coded.len());
        let mut chunks = cuts.into_iter().scan(0, |from, cut| {
            let chunk = Bytes::copy_from_slice(&coded[*from..cut]);
            *from = cut;
            Some(chunk)
        });
        let mut d = Decoder::new(codings);
        let mut out = Vec::new();
        loop {
            match d.step()? {
                Step::Data(data) => {
                    assert!(data.len() <= CHUNK);
                    out.extend_from_slice(&data);
                }
                Step::NeedInput => match chunks.next() {
                    Some(chunk) => d.push(chunk),
                    None => d.end_input(),
                },
                Step::End => return Ok(out),
            }
        }
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i} ").into_bytes())
            .collect()
    }

    #[test]
    fn codings_are_read_in_order_and_unknown_ones_named() {
        let mut h = HeaderMap::new();
        assert_eq!(response_codings(&h), Codings::Identity);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("Identity"));
        assert_eq!(response_codings(&h), Codings::Identity);
        h.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static("deflate, X-Gzip"),
        );
        assert_eq!(
            response_codings(&h),
            Codings::Decode(vec![Coding::Deflate, Coding::Gzip])
        );
        h.append(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            response_codings(&h),
            Codings::Unsupported("Content-Encoding br".into())
        );
        h.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static("gzip,gzip,gzip,gzip"),
        );
        assert!(matches!(response_codings(&h), Codings::Unsupported(_)));
    }

    #[test]
    fn accept_encoding_offers_only_decodable_codings() {
        let cases = [
            (Some("gzip, deflate, br, zstd"), "gzip, deflate"),
            (Some("br;q=1.0, gzip;q=0.8, *;q=0.1"), "gzip;q=0.8"),
            (
                Some("GZIP;Q=0.5, identity;q=0.1234"),
                "gzip;q=0.5, identity;q=0.123",
            ),
            (Some("br, zstd"), "identity"),
            (Some("gzip;q=2, deflate;q=x"), "identity"),
            (Some("gzip;q=0"), "identity"),
            (None, "identity"),
        ];
        for (offered, expected) in cases {
            let mut h = HeaderMap::new();
            if let Some(offered) = offered {
                h.insert(ACCEPT_ENCODING, HeaderValue::from_static(offered));
            }
            restrict_accept_encoding(&mut h);
            assert_eq!(h.get(ACCEPT_ENCODING).unwrap(), expected, "{offered:?}");
        }
    }

    #[test]
    fn decoded_headers_drop_the_coding_and_weaken_the_etag() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        h.insert("content-digest", HeaderValue::from_static("sha-256=:x:"));
        decoded_headers(&mut h);
        assert_eq!(h.get(ETAG).unwrap(), "W/\"v1\"");
        assert!(!h.contains_key(CONTENT_ENCODING) && !h.contains_key("content-digest"));
        decoded_headers(&mut h);
        assert_eq!(h.get(ETAG).unwrap(), "W/\"v1\"");
    }

    #[test]
    fn every_coding_and_stack_decodes() {
        let data = text(20_000);
        let two_members = [gzip(&data[..1000]), gzip(&data[1000..])].concat();
        let cases: Vec<(Vec<Coding>, Vec<u8>)> = vec![
            (vec![Coding::Gzip], gzip(&data)),
            (vec![Coding::Gzip], two_members),
            (vec![Coding::Deflate], zlib(&data)),
            (vec![Coding::Deflate], raw_deflate(&data)),
            (vec![Coding::Deflate, Coding::Gzip], gzip(&zlib(&data))),
            (
                vec![Coding::Gzip, Coding::Deflate],
                raw_deflate(&gzip(&data)),
            ),
        ];
        for (codings, coded) in cases {
            let out = decode(&codings, &coded, &[1, 2, 3, 500]).unwrap();
            assert!(out == data, "{codings:?}");
        }
    }

    #[test]
    fn corrupt_cut_and_trailing_input_are_errors() {
        let data = text(5000);
        let good = gzip(&data);
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        let cases: Vec<(Coding, Vec<u8>)> = vec![
            (Coding::Gzip, b"this is not gzip at all".to_vec()),
            (Coding::Gzip, good[..good.len() / 2].to_vec()),
            (Coding::Gzip, good[..good.len() - 3].to_vec()),
            (Coding::Gzip, bad_crc),
            (Coding::Gzip, [good.as_slice(), b"junk"].concat()),
            (Coding::Gzip, Vec::new()),
            (Coding::Deflate, [zlib(&data).as_slice(), b"junk"].concat()),
            (Coding::Deflate, zlib(&data)[..100].to_vec()),
            (Coding::Deflate, vec![0xff; 64]),
        ];
        for (i, (coding, coded)) in cases.into_iter().enumerate() {
            assert!(decode(&[coding], &coded, &[7]).is_err(), "case {i}");
        }
    }

    #[test]
    fn a_bomb_is_cut_at_the_ratio_bound() {
        let coded = gzip(&vec![0u8; 16 * 1024 * 1024]);
        let mut d = Decoder::new(&[Coding::Gzip]);
        d.push(Bytes::from(coded));
        d.end_input();
        let mut produced = 0u64;
        let err = loop {
            match d.step() {
                Ok(Step::Data(data)) => produced += data.len() as u64,
                Ok(step) => panic!("{step:?} after {produced}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, DecodeError::TooLarge), "{err}");
        assert!(produced <= RATIO_FLOOR, "{produced}");
        assert!(produced > RATIO_FLOOR - CHUNK as u64, "{produced}");
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            cuts in proptest::collection::vec(0usize..3000, 0..12),
            deflate in any::<bool>(),
        ) {
            let data = text(400);
            let (coding, coded) = if deflate {
                (Coding::Deflate, zlib(&data))
            } else {
                (Coding::Gzip, gzip(&data))
            };
            prop_assert_eq!(decode(&[coding], &coded, &cuts).unwrap(), data);
        }

        #[test]
        fn random_bytes_never_panic(
            coded in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..4),
        ) {
            for coding in [Coding::Gzip, Coding::Deflate] {
                let _ = decode(&[coding], &coded, &cuts);
            }
        }
    }
}
