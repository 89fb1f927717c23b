//! HTTP request-head parsing for HTTP policy.
//!
//! The proxy feeds everything a guest sends on an inspected plain-HTTP flow
//! through a [`RequestStream`], which cuts it into request heads and bodies
//! (following `Content-Length` and chunked framing), so that **every** request
//! of a keep-alive or pipelined connection is checked, not only the first.
//! [`parse_request_head`] answers `Complete` (the head is checked against the
//! policy and forwarded as is), `Invalid` (the request is refused) or
//! `Incomplete`; a head that reaches [`MAX_HEAD_LEN`] is `Invalid`, so a guest
//! cannot make the proxy buffer without bound.
//!
//! Framing is strict, as a request-smuggling-safe proxy must be: a request
//! with both `Transfer-Encoding` and `Content-Length`, with conflicting
//! lengths, with a transfer coding other than a final `chunked`, or with a
//! malformed chunk is refused, and the connection ends. Requests that would
//! leave HTTP (`CONNECT`, an `Upgrade` header such as WebSocket) are refused
//! too: what follows them could not be inspected.

/// The largest request head the proxy buffers; longer heads are refused.
///
/// Common servers refuse heads over 8 to 16 KiB, so a real client never
/// needs more.
pub const MAX_HEAD_LEN: usize = 16 * 1024;

/// The most header lines a request head may carry.
const MAX_HEADERS: usize = 100;

/// What HTTP policy sees of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpInfo {
    /// The request method as sent, e.g. `GET`.
    pub method: String,
    /// The `Host` header (or the authority of an absolute-form target),
    /// lowercased, without port and without a trailing dot.
    pub host: String,
    /// The path of the request target, starting with `/`, without query.
    pub path: String,
}

/// The result of parsing a (possibly partial) request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// The head is complete; the request body starts at `head_len`.
    Complete {
        /// What policy needs of the request.
        info: HttpInfo,
        /// Length of the head including the blank line that ends it.
        head_len: usize,
        /// How the body that follows the head is delimited.
        body: BodyFraming,
    },
    /// More bytes are needed.
    Incomplete,
    /// Not a usable HTTP/1.x request head; the reason says why.
    Invalid(String),
}

/// How a request body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length` bytes (0 without either header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Parses the request head at the start of `buf`.
///
/// Answers `Invalid` for anything that is not HTTP/1.x, for a head without a
/// host, and for heads (complete or not) longer than [`MAX_HEAD_LEN`].
pub fn parse_request_head(buf: &[u8]) -> ParseOutcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            return ParseOutcome::Invalid(format!("request head longer than {MAX_HEAD_LEN} bytes"))
        }
        Ok(httparse::Status::Partial) => return ParseOutcome::Incomplete,
        Err(e) => return ParseOutcome::Invalid(format!("malformed HTTP request: {e}")),
    };
    if head_len > MAX_HEAD_LEN {
        return ParseOutcome::Invalid(format!("request head longer than {MAX_HEAD_LEN} bytes"));
    }
    // httparse only returns Complete with method and path filled in.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return ParseOutcome::Invalid("request line without method or target".into());
    };

    // An absolute-form target (`GET http://host/path`, as sent to proxies)
    // carries its own authority, which servers prefer over the Host header
    // (RFC 9112 section 3.2.2), so policy must look at that one.
    let (target_host, path) = split_target(target);
    let header_host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let Some(authority) = target_host.map(str::to_owned).or(header_host) else {
        return ParseOutcome::Invalid("request without Host header".into());
    };
    let host = match normalize_authority(&authority) {
        Some(host) => host,
        None => return ParseOutcome::Invalid(format!("bad Host {authority:?}")),
    };
    let body = match body_framing(method, req.version, req.headers) {
        Ok(body) => body,
        Err(reason) => return ParseOutcome::Invalid(reason),
    };
    ParseOutcome::Complete {
        info: HttpInfo {
            method: method.to_owned(),
            host,
            path,
        },
        head_len,
        body,
    }
}

/// The body framing of a request, refusing every ambiguous combination
/// (the ones request smuggling lives on) and requests that leave HTTP.
fn body_framing(
    method: &str,
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
) -> Result<BodyFraming, String> {
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err("CONNECT tunnels cannot be inspected".into());
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        return Err("protocol upgrades (WebSocket, h2c) cannot be inspected".into());
    }
    let codings = header_list(headers, "transfer-encoding");
    let lengths = header_list(headers, "content-length");
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".into());
        }
        let chunked_last = codings.last().is_some_and(|c| c == "chunked")
            && codings.iter().filter(|c| *c == "chunked").count() == 1;
        if !chunked_last || version == Some(0) {
            return Err(format!(
                "unsupported Transfer-Encoding {:?}",
                codings.join(", ")
            ));
        }
        return Ok(BodyFraming::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(BodyFraming::Length(0));
    };
    let valid = !first.is_empty() && first.len() <= 18 && first.bytes().all(|b| b.is_ascii_digit());
    if !valid || lengths.iter().any(|l| l != first) {
        return Err(format!("bad Content-Length {:?}", lengths.join(", ")));
    }
    first
        .parse()
        .map(BodyFraming::Length)
        .map_err(|_| format!("bad Content-Length {first:?}"))
}

/// The comma-separated values of every header called `name`, trimmed and
/// lowercased.
fn header_list(headers: &[httparse::Header<'_>], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|v| v.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// One piece of what the guest sent on an inspected connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A complete request head: check it, then forward `bytes` as they are.
    Head {
        /// What policy needs of the request.
        info: HttpInfo,
        /// The head's bytes, blank line included.
        bytes: Vec<u8>,
    },
    /// Body bytes of the request whose head came last.
    Body(Vec<u8>),
    /// A line of chunk framing (size line, chunk end, trailer) of that body, forwarded as is
    /// (kept apart from the data so that scans over the data see it contiguous).
    Framing(Vec<u8>),
    /// The stream is no usable HTTP/1.x; nothing more follows.
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Failed,
}

/// Cuts the bytes a guest sends on one connection into request heads and
/// bodies, whatever way they are split into reads. Memory is bounded: at
/// most one head (`max_head` bytes) or one chunk-size line is buffered.
#[derive(Debug)]
pub struct RequestStream {
    state: StreamState,
    buf: Vec<u8>,
    trailer_bytes: usize,
    max_head: usize,
}

impl RequestStream {
    /// A stream at the start of a connection; heads over `max_head` bytes
    /// (capped at [`MAX_HEAD_LEN`]) are refused.
    pub fn new(max_head: usize) -> RequestStream {
        RequestStream {
            state: StreamState::Head,
            buf: Vec::new(),
            trailer_bytes: 0,
            max_head: max_head.clamp(1, MAX_HEAD_LEN),
        }
    }

    /// Whether the stream stands between requests (no request is partly sent).
    pub fn between_requests(&self) -> bool {
        self.state == StreamState::Head && self.buf.is_empty()
    }

    /// Takes the next bytes from the guest and returns the pieces they
    /// complete. After a [`Piece::Invalid`] everything is ignored.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut input = data.to_vec();
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.state {
                StreamState::Failed => break,
                StreamState::Head => {
                    self.buf.extend_from_slice(rest);
                    at = input.len();
                    if let Some(leftover) = self.try_head(&mut out) {
                        input = leftover;
                        at = 0;
                    }
                }
                StreamState::Length(left) | StreamState::ChunkData(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.push(Piece::Body(rest[..n].to_vec()));
                    at += n;
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (StreamState::Length(_), 0) => StreamState::Head,
                        (StreamState::Length(_), _) => StreamState::Length(left),
                        (_, 0) => StreamState::ChunkDataEnd,
                        _ => StreamState::ChunkData(left),
                    };
                }
                StreamState::ChunkSize | StreamState::ChunkDataEnd | StreamState::Trailers => {
                    at += self.framing_line(rest, &mut out);
                }
            }
        }
        out
    }

    /// Tries to complete the buffered head; returns the bytes after it.
    fn try_head(&mut self, out: &mut Vec<Piece>) -> Option<Vec<u8>> {
        match parse_request_head(&self.buf) {
            ParseOutcome::Complete {
                info,
                head_len,
                body,
            } => {
                let leftover = self.buf.split_off(head_len);
                out.push(Piece::Head {
                    info,
                    bytes: std::mem::take(&mut self.buf),
                });
                self.state = match body {
                    BodyFraming::Length(0) => StreamState::Head,
                    BodyFraming::Length(n) => StreamState::Length(n),
                    BodyFraming::Chunked => StreamState::ChunkSize,
                };
                Some(leftover)
            }
            ParseOutcome::Incomplete if self.buf.len() < self.max_head => None,
            ParseOutcome::Incomplete => {
                self.fail(out, format!("request head over {} bytes", self.max_head));
                None
            }
            ParseOutcome::Invalid(reason) => {
                self.fail(out, reason);
                None
            }
        }
    }

    /// Consumes up to one line of chunk framing from `rest`; returns how
    /// many bytes it took.
    fn framing_line(&mut self, rest: &[u8], out: &mut Vec<Piece>) -> usize {
        let (taken, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (rest.len(), false),
        };
        self.buf.extend_from_slice(&rest[..taken]);
        let limit = match self.state {
            StreamState::Trailers => self.max_head.saturating_sub(self.trailer_bytes),
            _ => MAX_CHUNK_LINE,
        };
        if self.buf.len() > limit {
            self.fail(out, "chunk framing line too long".into());
            return taken;
        }
        if !complete {
            return taken;
        }
        let line = std::mem::take(&mut self.buf);
        let Some(text) = line.strip_suffix(b"\r\n") else {
            self.fail(out, "chunk framing line without CRLF".into());
            return taken;
        };
        let next = match self.state {
            StreamState::ChunkDataEnd if text.is_empty() => Some(StreamState::ChunkSize),
            StreamState::ChunkDataEnd => None,
            StreamState::Trailers if text.is_empty() => Some(StreamState::Head),
            StreamState::Trailers => {
                self.trailer_bytes += line.len();
                Some(StreamState::Trailers)
            }
            _ => chunk_size(text).map(|size| match size {
                0 => StreamState::Trailers,
                n => StreamState::ChunkData(n),
            }),
        };
        match next {
            Some(next) => {
                if next == StreamState::Head {
                    self.trailer_bytes = 0;
                }
                self.state = next;
                out.push(Piece::Framing(line));
            }
            None => self.fail(out, "malformed chunked body".into()),
        }
        taken
    }

    fn fail(&mut self, out: &mut Vec<Piece>, reason: String) {
        self.state = StreamState::Failed;
        self.buf = Vec::new();
        out.push(Piece::Invalid(reason));
    }
}

/// The size of a chunk-size line (`1a;ext=1`), at most 15 hex digits.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?;
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// What policy sees of a request another parser (hyper) already read: `target` as sent (origin
/// or absolute form), `host` the `Host` header or `:authority`. `None` without a usable host.
pub(crate) fn request_info(method: &str, target: &str, host: Option<&str>) -> Option<HttpInfo> {
    let (target_host, path) = split_target(target);
    let host = normalize_authority(target_host.or(host)?)?;
    Some(HttpInfo {
        method: method.to_owned(),
        host,
        path,
    })
}

/// Splits a request target into the authority of an absolute-form target
/// (if any) and the path without query or fragment.
fn split_target(target: &str) -> (Option<&str>, String) {
    let has_scheme = |scheme: &str| {
        target
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
    };
    // The scheme is ASCII, so slicing right after it is on a char boundary.
    let rest = if has_scheme("http://") {
        Some(&target[7..])
    } else if has_scheme("https://") {
        Some(&target[8..])
    } else {
        None
    };
    let (authority, path) = match rest {
        Some(rest) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            (Some(&rest[..end]), &rest[end..])
        }
        None => (None, target),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        // `*` (OPTIONS) and empty absolute-form paths both mean the root.
        format!("/{}", path.trim_start_matches('*'))
    };
    (authority, path)
}

/// Lowercases an authority and strips userinfo, port and trailing dot.
/// Returns `None` when nothing host-like is left.
fn normalize_authority(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(buf: &[u8]) -> (HttpInfo, usize) {
        match parse_request_head(buf) {
            ParseOutcome::Complete { info, head_len, .. } => (info, head_len),
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    #[test]
    fn complete_head_reports_method_host_path_and_length() {
        let head = b"POST /v1/items?x=1 HTTP/1.1\r\nHost: API.Example.com:8080\r\nContent-Length: 2\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"{}");
        let (info, len) = complete(&buf);
        assert_eq!(info.method, "POST");
        assert_eq!(info.host, "api.example.com");
        assert_eq!(info.path, "/v1/items");
        assert_eq!(len, head.len());
    }

    #[test]
    fn absolute_form_target_wins_over_host_header() {
        let (info, _) =
            complete(b"GET http://real.example/a/b HTTP/1.1\r\nHost: decoy.example\r\n\r\n");
        assert_eq!(info.host, "real.example");
        assert_eq!(info.path, "/a/b");
        let (info, _) = complete(b"GET http://real.example HTTP/1.1\r\n\r\n");
        assert_eq!(info.path, "/");
    }

    #[test]
    fn ipv6_host_and_trailing_dot_are_normalized() {
        let (info, _) = complete(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
        assert_eq!(info.host, "::1");
        let (info, _) = complete(b"GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n");
        assert_eq!(info.host, "example.com");
    }

    #[test]
    fn partial_head_is_incomplete() {
        assert_eq!(parse_request_head(b""), ParseOutcome::Incomplete);
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a.b\r\n"),
            ParseOutcome::Incomplete
        );
    }

    #[test]
    fn garbage_and_missing_host_are_invalid() {
        assert!(matches!(
            parse_request_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            ParseOutcome::Invalid(_)
        ));
        assert!(matches!(
            parse_request_head(b"GET / HTTP/1.1\r\n\r\n"),
            ParseOutcome::Invalid(_)
        ));
        assert!(matches!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n"),
            ParseOutcome::Invalid(_)
        ));
    }

    #[test]
    fn oversized_head_is_invalid_not_incomplete() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a.b\r\nX-Pad: ".to_vec();
        buf.resize(MAX_HEAD_LEN + 10, b'a');
        assert!(matches!(parse_request_head(&buf), ParseOutcome::Invalid(_)));
        buf.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_request_head(&buf), ParseOutcome::Invalid(_)));
    }

    fn heads(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Head { info, .. } => Some(format!("{} {}", info.method, info.path)),
                Piece::Invalid(reason) => Some(format!("invalid: {reason}")),
                Piece::Body(_) | Piece::Framing(_) => None,
            })
            .collect()
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x.test\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\n\r\nGET /\
        PUT /c HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n\
        4;ext=1\r\nGET \r\n3\r\n/d \r\n0\r\nX-T: 1\r\n\r\n\
        GET /admin/ HTTP/1.1\r\nHost: x.test\r\n\r\n";

    #[test]
    fn every_request_of_a_pipelined_connection_is_a_head() {
        let mut stream = RequestStream::new(MAX_HEAD_LEN);
        let pieces = stream.feed(PIPELINE);
        assert_eq!(
            heads(&pieces),
            ["GET /a", "POST /b", "PUT /c", "GET /admin/"]
        );
        // Forwarding the pieces in order reproduces the stream byte for byte.
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Head { bytes, .. } | Piece::Body(bytes) | Piece::Framing(bytes) => {
                    bytes.clone()
                }
                Piece::Invalid(_) => Vec::new(),
            })
            .collect();
        assert_eq!(joined, PIPELINE);
        assert!(stream.between_requests());
    }

    #[test]
    fn ambiguous_framing_and_tunnels_are_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a.b\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.b\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.b\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.b\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.b\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a.b\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "CONNECT a.b:443 HTTP/1.1\r\nHost: a.b\r\n\r\n",
        ] {
            let pieces = RequestStream::new(MAX_HEAD_LEN).feed(head.as_bytes());
            assert!(matches!(pieces.as_slice(), [Piece::Invalid(_)]), "{head}: {pieces:?}");
        }
        let bad_chunk = b"PUT / HTTP/1.1\r\nHost: a.b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /x HTTP/1.1\r\n";
        let pieces = RequestStream::new(MAX_HEAD_LEN).feed(bad_chunk);
        assert!(
            matches!(pieces.last(), Some(Piece::Invalid(_))),
            "{pieces:?}"
        );
        assert_eq!(heads(&pieces).len(), 2);
    }

    #[test]
    fn an_endless_chunk_line_or_head_is_refused() {
        let mut stream = RequestStream::new(1024);
        let mut pieces = stream.feed(b"GET / HTTP/1.1\r\nHost: a.b\r\nX: ");
        pieces.extend(stream.feed(&[b'a'; 2000]));
        assert!(matches!(pieces.last(), Some(Piece::Invalid(_))));
        let mut stream = RequestStream::new(1024);
        let mut pieces =
            stream.feed(b"PUT / HTTP/1.1\r\nHost: a.b\r\nTransfer-Encoding: chunked\r\n\r\n1");
        for _ in 0..10 {
            pieces.extend(stream.feed(&[b'0'; 1000]));
        }
        assert!(matches!(pieces.last(), Some(Piece::Invalid(_))));
        assert!(stream
            .feed(b"GET / HTTP/1.1\r\nHost: a.b\r\n\r\n")
            .is_empty());
    }

    proptest! {
        #[test]
        fn any_split_of_a_stream_gives_the_same_pieces(cuts in proptest::collection::vec(0usize..PIPELINE.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut stream = RequestStream::new(MAX_HEAD_LEN);
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([PIPELINE.len()]) {
                pieces.extend(stream.feed(&PIPELINE[from..cut.max(from)]));
                from = cut.max(from);
            }
            prop_assert_eq!(heads(&pieces), ["GET /a", "POST /b", "PUT /c", "GET /admin/"]);
        }

        #[test]
        fn arbitrary_streams_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048), max in 1usize..20000) {
            let mut stream = RequestStream::new(max);
            let _ = stream.feed(&buf[..buf.len() / 2]);
            let _ = stream.feed(&buf[buf.len() / 2..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_request_head(&buf);
        }

        #[test]
        fn every_prefix_of_a_valid_head_is_incomplete(cut in 0usize..40) {
            let head = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n";
            let cut = cut.min(head.len() - 1);
            prop_assert_eq!(parse_request_head(&head[..cut]), ParseOutcome::Incomplete);
        }
    }
}
