//! WebSocket after the `101`, on connections that hold secrets: the bytes are parsed as RFC 6455
//! frames both ways instead of being copied blindly, so that secrets keep their rules inside
//! WebSocket messages too.
//!
//! - Guest to upstream: client frames are unmasked and the payloads of data messages scanned
//!   (one streaming scanner, so a placeholder split across the frames of a message is still
//!   found) for placeholders this connection may not carry. One found ends the tunnel: the
//!   guest gets a Close `1008`, the upstream connection is shut, the caller reports the secret.
//!   Eligible placeholders of secrets that opted into body substitution are replaced.
//! - Upstream to guest: secret values become placeholders again.
//! - Payloads stream in chunks and are re-framed as they go (a new length, a fresh mask towards
//!   the upstream): a frame comes out as one frame while it is small, larger ones as fragments
//!   of at most about [`FRAGMENT`] bytes. RFC 6455 section 5.4 lets an intermediary re-fragment
//!   messages that use no extension, which is why the handshake drops
//!   `Sec-WebSocket-Extensions` ([`prepare_upgrade`]).
//! - Bounds: a frame header is at most 14 bytes, a control frame 125, a message
//!   [`MAX_MESSAGE`] in all; never more than a read and a fragment are held in memory. A frame
//!   that breaks the protocol, from either side, ends the tunnel with a Close `1002` to the
//!   guest (`1009` for a message over the limit).
//!
//! The frame codec is written here by hand: no WebSocket crate is in Cargo.lock, and the
//! message-level ones (tungstenite) hand out whole messages, while this relay must re-frame
//! payloads in place as they stream.

use bytes::{Buf, BytesMut};
use hyper::header::{HeaderMap, SEC_WEBSOCKET_EXTENSIONS, UPGRADE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::secrets::{Replacer, Scanner, SecretSet};

/// Largest message (all its frames together), and so largest frame, either side may send.
pub(crate) const MAX_MESSAGE: u64 = 16 * 1024 * 1024;
/// Largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: u64 = 125;
/// Most payload bytes handed on at once, and the size past which output is sent as a fragment.
pub(crate) const FRAGMENT: usize = 64 * 1024;
/// Bytes read from a side at once.
const READ_SIZE: usize = 16 * 1024;

/// Frame opcodes (RFC 6455 section 5.2).
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "the relay passes opcodes on by number; the tests name them all"
    )
)]
pub(crate) mod opcode {
    /// The next frame of a fragmented message.
    pub(crate) const CONTINUATION: u8 = 0x0;
    /// The first frame of a UTF-8 text message.
    pub(crate) const TEXT: u8 = 0x1;
    /// The first frame of a binary message.
    pub(crate) const BINARY: u8 = 0x2;
    /// Close.
    pub(crate) const CLOSE: u8 = 0x8;
    /// Ping.
    pub(crate) const PING: u8 = 0x9;
    /// Pong.
    pub(crate) const PONG: u8 = 0xA;
}

/// Close code for a protocol error.
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a message that breaks policy (a secret placeholder for the wrong host).
pub(crate) const CLOSE_POLICY: u16 = 1008;
/// Close code for a message too big to process.
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;

/// Checks an HTTP/1.1 upgrade request before it goes upstream. Only WebSocket passes: any
/// other protocol (`h2c` above all, which would carry HTTP/2 requests past HTTP policy) cannot
/// be inspected. With secrets, `Sec-WebSocket-Extensions` is dropped: a compressed
/// (permessage-deflate) payload could not be scanned or substituted, and the relay may only
/// re-fragment messages that use no extension. `Err` says why the request is refused.
pub(crate) fn prepare_upgrade(headers: &mut HeaderMap, secrets: bool) -> Result<(), String> {
    let mut protocols = headers.get_all(UPGRADE).iter();
    let websocket = match (protocols.next(), protocols.next()) {
        (Some(only), None) => only
            .to_str()
            .is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    };
    if !websocket {
        return Err("only WebSocket upgrades can be inspected".into());
    }
    if secrets {
        headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    }
    Ok(())
}

/// Why a side's frames cannot be relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The bytes break RFC 6455.
    Malformed(&'static str),
    /// A frame or message over [`MAX_MESSAGE`].
    TooBig,
}

impl Violation {
    /// The close code the guest gets for it.
    fn close_code(self) -> u16 {
        match self {
            Violation::Malformed(_) => CLOSE_PROTOCOL,
            Violation::TooBig => CLOSE_TOO_BIG,
        }
    }
}

/// What a [`FrameDecoder`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A whole control frame, unmasked.
    Control {
        /// Its opcode.
        opcode: u8,
        /// Its payload (at most 125 bytes).
        payload: Vec<u8>,
    },
    /// The next piece of a data message's payload, unmasked.
    Data {
        /// The message's opcode (text or binary).
        opcode: u8,
        /// The bytes (at most [`FRAGMENT`], possibly none).
        chunk: BytesMut,
        /// The piece ends its frame.
        frame_end: bool,
        /// The piece ends its message.
        message_end: bool,
    },
}

/// The data frame whose payload is being read.
#[derive(Debug)]
struct Payload {
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: u64,
    /// Where in the mask the next byte is.
    offset: usize,
}

/// A parsed frame header.
struct Head {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// Parses the frames of one direction incrementally, holding no payload beyond what it hands
/// out.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    /// Frames must be masked (they come from a client) or must not be.
    masked: bool,
    payload: Option<Payload>,
    /// The opcode and length so far of the data message in progress.
    message: Option<(u8, u64)>,
}

impl FrameDecoder {
    /// A decoder for frames from a client (`masked`) or from a server.
    pub(crate) fn new(masked: bool) -> FrameDecoder {
        FrameDecoder {
            masked,
            payload: None,
            message: None,
        }
    }

    /// The next event from the front of `buf`, consuming its bytes; `None` when more bytes are
    /// needed. After an error the decoder must not be used again.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Violation> {
        if let Some(p) = self.payload.as_mut() {
            let take = usize::try_from(p.remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len())
                .min(FRAGMENT);
            if take == 0 && p.remaining > 0 {
                return Ok(None);
            }
            let mut chunk = buf.split_to(take);
            if let Some(mask) = p.mask {
                unmask(&mut chunk, mask, p.offset);
                p.offset = (p.offset + take) % 4;
            }
            p.remaining -= take as u64;
            let frame_end = p.remaining == 0;
            let message_end = frame_end && p.fin;
            let opcode = self.message.map_or(opcode::BINARY, |m| m.0);
            if frame_end {
                self.payload = None;
            }
            if message_end {
                self.message = None;
            }
            return Ok(Some(Event::Data {
                opcode,
                chunk,
                frame_end,
                message_end,
            }));
        }
        let Some((head, head_len)) = parse_head(buf, self.masked)? else {
            return Ok(None);
        };
        if head.opcode >= opcode::CLOSE {
            // Checked against MAX_CONTROL by parse_head.
            let len = head.len as usize;
            if buf.len() < head_len + len {
                return Ok(None);
            }
            buf.advance(head_len);
            let mut payload = buf.split_to(len).to_vec();
            if let Some(mask) = head.mask {
                unmask(&mut payload, mask, 0);
            }
            if head.opcode == opcode::CLOSE && payload.len() == 1 {
                return Err(Violation::Malformed("close frame with a one-byte payload"));
            }
            return Ok(Some(Event::Control {
                opcode: head.opcode,
                payload,
            }));
        }
        self.message = match (head.opcode, self.message) {
            (opcode::CONTINUATION, None) => {
                return Err(Violation::Malformed("continuation frame outside a message"))
            }
            (opcode::CONTINUATION, Some((op, so_far))) => {
                let total = so_far.saturating_add(head.len);
                if total > MAX_MESSAGE {
                    return Err(Violation::TooBig);
                }
                Some((op, total))
            }
            (_, Some(_)) => {
                return Err(Violation::Malformed(
                    "new message inside a fragmented message",
                ))
            }
            (op, None) => Some((op, head.len)),
        };
        buf.advance(head_len);
        self.payload = Some(Payload {
            fin: head.fin,
            mask: head.mask,
            remaining: head.len,
            offset: 0,
        });
        // Hands out at least the frame's end, even for an empty frame.
        self.next(buf)
    }
}

/// The frame header at the front of `buf` and its length, `None` while incomplete.
fn parse_head(buf: &[u8], masked: bool) -> Result<Option<(Head, usize)>, Violation> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Violation::Malformed(
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(Violation::Malformed("unknown opcode"));
    }
    if (b1 & 0x80 != 0) != masked {
        return Err(Violation::Malformed(if masked {
            "unmasked frame from the client"
        } else {
            "masked frame from the server"
        }));
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) if b[0] & 0x80 != 0 => {
                return Err(Violation::Malformed("payload length with its top bit set"))
            }
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= opcode::CLOSE {
        if !fin {
            return Err(Violation::Malformed("fragmented control frame"));
        }
        if len > MAX_CONTROL {
            return Err(Violation::Malformed("control frame over 125 bytes"));
        }
    }
    if len > MAX_MESSAGE {
        return Err(Violation::TooBig);
    }
    let mask = if masked {
        let Some(key) = buf
            .get(at..at + 4)
            .and_then(|k| <[u8; 4]>::try_from(k).ok())
        else {
            return Ok(None);
        };
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some((
        Head {
            fin,
            opcode,
            mask,
            len,
        },
        at,
    )))
}

/// XORs `data` with `mask`, starting at byte `offset` of the mask.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

/// Appends one frame to `out`, masked with `mask` when given.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        // Each arm's range makes the casts exact.
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let start = out.len();
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        debug_assert_eq!(body - start, 4);
        unmask(&mut out[body..], mask, 0);
    }
}

/// A Close frame with `code` and a short reason.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    let mut out = Vec::new();
    encode_frame(&mut out, true, opcode::CLOSE, &payload, mask);
    out
}

/// Turns one direction's events into the frames the other side gets.
struct Reframer<'a> {
    /// Placeholders that may not pass (guest to upstream only).
    scanner: Option<Scanner>,
    /// Substitution (guest to upstream) or masking (upstream to guest) of data payloads.
    replacer: Replacer,
    /// Masks secret values in control frames (upstream to guest only).
    control_masker: Option<&'a SecretSet>,
    /// Frames are masked for the upstream, with keys from here.
    rng: Option<&'static dyn rustls::crypto::SecureRandom>,
    /// Output of the current message not yet sent.
    pending: Vec<u8>,
    /// A frame of the current message has been sent (the next is a continuation).
    started: bool,
}

/// Why one direction of the relay ended.
#[derive(Debug)]
enum End {
    /// Its source closed or failed, or its destination stopped taking bytes.
    Closed,
    /// The other direction ended the tunnel.
    Stopped,
    /// Its source broke the protocol.
    Violation(Violation),
    /// A placeholder of this secret may not go to this host.
    Blocked(usize),
}

impl Reframer<'_> {
    /// The bytes to send for `event`.
    fn process(&mut self, event: Event) -> Result<Vec<u8>, End> {
        let mut out = Vec::new();
        match event {
            Event::Control {
                opcode,
                mut payload,
            } => {
                if let Some(secret) = self.scanner.as_ref().and_then(|s| s.scan_once(&payload)) {
                    return Err(End::Blocked(secret));
                }
                if let Some(masked) = self.control_masker.and_then(|s| s.mask_value(&payload)) {
                    // A placeholder may be longer than its value: the control frame limit
                    // wins (a cut placeholder reveals nothing).
                    payload = masked;
                    payload.truncate(MAX_CONTROL as usize);
                }
                let mask = self.mask();
                encode_frame(&mut out, true, opcode, &payload, mask);
            }
            Event::Data {
                opcode,
                chunk,
                frame_end,
                message_end,
            } => {
                if let Some(secret) = self.scanner.as_mut().and_then(|s| s.feed(&chunk)) {
                    return Err(End::Blocked(secret));
                }
                self.pending.extend(self.replacer.push(&chunk));
                if message_end {
                    self.pending.extend(self.replacer.finish());
                }
                let send = message_end
                    || (frame_end && !self.pending.is_empty())
                    || self.pending.len() >= FRAGMENT;
                if send {
                    let op = if self.started {
                        opcode::CONTINUATION
                    } else {
                        opcode
                    };
                    let mask = self.mask();
                    encode_frame(&mut out, message_end, op, &self.pending, mask);
                    self.pending.clear();
                    self.started = !message_end;
                }
            }
        }
        Ok(out)
    }

    /// A fresh masking key when frames go to the upstream.
    fn mask(&self) -> Option<[u8; 4]> {
        self.rng.map(|rng| {
            let mut key = [0u8; 4];
            // Without randomness the key is still a valid one; the upstream only unmasks.
            let _ = rng.fill(&mut key);
            key
        })
    }
}

/// Relays one direction: frames from `from` (after `early`, bytes already read) re-framed onto
/// `to`, until either side closes, `from` breaks the rules, or `stop` says the other
/// direction ended the tunnel.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    early: &[u8],
    to: &mut W,
    mut decoder: FrameDecoder,
    mut reframer: Reframer<'_>,
    stop: &watch::Sender<bool>,
) -> End {
    let mut stopped = stop.subscribe();
    let mut buf = BytesMut::from(early);
    let end = 'relay: loop {
        loop {
            match decoder.next(&mut buf) {
                Ok(Some(event)) => match reframer.process(event) {
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => {
                        if to.write_all(&out).await.is_err() {
                            break 'relay End::Closed;
                        }
                    }
                    Err(end) => break 'relay end,
                },
                Ok(None) => break,
                Err(v) => break 'relay End::Violation(v),
            }
        }
        buf.reserve(READ_SIZE);
        tokio::select! {
            biased;
            _ = stopped.changed() => break End::Stopped,
            read = from.read_buf(&mut buf) => {
                if !matches!(read, Ok(1..)) {
                    break End::Closed;
                }
            }
        }
    };
    if matches!(end, End::Closed) {
        // Like a half-close: the other direction runs on until its source ends.
        let _ = to.shutdown().await;
    } else {
        let _ = stop.send(true);
    }
    end
}

/// Relays a WebSocket connection between `guest` and `upstream` (with the bytes each already
/// sent past the handshake) until both are done, enforcing `secrets` as the module says:
/// `eligible` are the secrets this connection may carry; `on_block` hears of a secret whose
/// placeholder ended it.
pub(crate) async fn relay(
    guest: impl AsyncRead + AsyncWrite + Unpin,
    guest_early: &[u8],
    upstream: impl AsyncRead + AsyncWrite + Unpin,
    upstream_early: &[u8],
    secrets: &SecretSet,
    eligible: &[bool],
    on_block: &dyn Fn(usize),
) {
    let (mut guest_rx, mut guest_tx) = tokio::io::split(guest);
    let (mut up_rx, mut up_tx) = tokio::io::split(upstream);
    let detector = secrets.detector(eligible);
    let outbound = Reframer {
        scanner: (!detector.is_idle()).then_some(detector),
        replacer: secrets.body_substituter(eligible),
        control_masker: None,
        rng: Some(rustls::crypto::ring::default_provider().secure_random),
        pending: Vec::new(),
        started: false,
    };
    let inbound = Reframer {
        scanner: None,
        replacer: secrets.value_masker(),
        control_masker: Some(secrets),
        rng: None,
        pending: Vec::new(),
        started: false,
    };
    let (stop, _) = watch::channel(false);
    let (out_end, in_end) = tokio::join!(
        pump(
            &mut guest_rx,
            guest_early,
            &mut up_tx,
            FrameDecoder::new(true),
            outbound,
            &stop
        ),
        pump(
            &mut up_rx,
            upstream_early,
            &mut guest_tx,
            FrameDecoder::new(false),
            inbound,
            &stop
        ),
    );
    let close = match (&out_end, &in_end) {
        (End::Blocked(secret), _) => {
            on_block(*secret);
            Some((CLOSE_POLICY, "a secret may not be sent to this host"))
        }
        (End::Violation(v), _) | (_, End::Violation(v)) => {
            tracing::debug!(violation = ?v, "netstack: websocket tunnel ended");
            Some((v.close_code(), "websocket protocol error"))
        }
        _ => None,
    };
    // The guest side ended on a frame boundary unless its writes failed (`Closed`).
    if let (Some((code, reason)), End::Stopped | End::Violation(_)) = (close, &in_end) {
        let _ = guest_tx.write_all(&close_frame(code, reason, None)).await;
    }
    let _ = guest_tx.shutdown().await;
    let _ = up_tx.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every event of `data` fed in pieces cut at `cuts`, or the first violation.
    fn decode_all(
        masked: bool,
        data: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<(u8, Vec<u8>)>, Violation> {
        let mut decoder = FrameDecoder::new(masked);
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        let mut current = Vec::new();
        let mut from = 0;
        for cut in cuts.iter().copied().chain([data.len()]) {
            let cut = cut.clamp(from, data.len());
            buf.extend_from_slice(&data[from..cut]);
            from = cut;
            while let Some(event) = decoder.next(&mut buf)? {
                match event {
                    Event::Control { opcode, payload } => messages.push((opcode, payload)),
                    Event::Data {
                        opcode,
                        chunk,
                        message_end,
                        ..
                    } => {
                        assert!(chunk.len() <= FRAGMENT);
                        current.extend_from_slice(&chunk);
                        if message_end {
                            messages.push((opcode, std::mem::take(&mut current)));
                        }
                    }
                }
            }
            assert!(buf.len() < 14 + 125 + READ_SIZE);
        }
        Ok(messages)
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, false, opcode::TEXT, b"hel", Some([1, 2, 3, 4]));
        encode_frame(&mut wire, true, opcode::PING, b"p", Some([9, 9, 9, 9]));
        encode_frame(
            &mut wire,
            false,
            opcode::CONTINUATION,
            b"",
            Some([5, 6, 7, 8]),
        );
        encode_frame(
            &mut wire,
            true,
            opcode::CONTINUATION,
            b"lo",
            Some([0, 0, 1, 0]),
        );
        let got = decode_all(true, &wire, &[]).unwrap();
        assert_eq!(
            got,
            vec![
                (opcode::PING, b"p".to_vec()),
                (opcode::TEXT, b"hello".to_vec())
            ]
        );
    }

    #[test]
    fn violations_are_named() {
        let malformed = |bytes: &[u8], masked| {
            matches!(decode_all(masked, bytes, &[]), Err(Violation::Malformed(_)))
        };
        assert!(malformed(&[0x81, 0x00], true), "unmasked client frame");
        assert!(
            malformed(&[0x81, 0x80, 0, 0, 0, 0], false),
            "masked server frame"
        );
        assert!(malformed(&[0xC1, 0x00], false), "RSV1 (deflate)");
        assert!(malformed(&[0x83, 0x00], false), "reserved opcode");
        assert!(malformed(&[0x09, 0x00], false), "fragmented ping");
        assert!(malformed(&[0x89, 0x7e, 0x00, 0x7e], false), "126-byte ping");
        assert!(malformed(&[0x80, 0x00], false), "continuation first");
        assert!(
            malformed(&[0x01, 0x00, 0x81, 0x00], false),
            "text inside text"
        );
        assert!(malformed(&[0x88, 0x01, 0x03], false), "1-byte close");
        let mut huge = vec![0x82, 0x7f];
        huge.extend_from_slice(&(MAX_MESSAGE + 1).to_be_bytes());
        assert_eq!(decode_all(false, &huge, &[]), Err(Violation::TooBig));
        // Two frames of one message that are each allowed but too big together.
        let mut two = vec![0x02, 0x7f];
        two.extend_from_slice(&MAX_MESSAGE.to_be_bytes());
        let mut decoder = FrameDecoder::new(false);
        let mut buf = BytesMut::from(&two[..]);
        assert_eq!(decoder.next(&mut buf), Ok(None));
        // As if the first frame's payload had gone by.
        decoder.payload = None;
        let mut buf = BytesMut::from(&[0x80, 0x01][..]);
        assert_eq!(decoder.next(&mut buf), Err(Violation::TooBig));
    }

    #[test]
    fn only_websocket_upgrades_pass() {
        let headers = |upgrade: &[&str]| {
            let mut h = HeaderMap::new();
            for u in upgrade {
                h.append(UPGRADE, u.parse().unwrap());
            }
            h.insert(
                SEC_WEBSOCKET_EXTENSIONS,
                "permessage-deflate".parse().unwrap(),
            );
            h
        };
        for bad in [
            &["h2c"][..],
            &["websocket, h2c"],
            &["websocket", "h2c"],
            &[],
        ] {
            assert!(
                prepare_upgrade(&mut headers(bad), false).is_err(),
                "{bad:?}"
            );
        }
        let mut h = headers(&["WebSocket"]);
        prepare_upgrade(&mut h, false).unwrap();
        assert!(h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
        prepare_upgrade(&mut h, true).unwrap();
        assert!(!h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            msgs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), 1usize..4, any::<[u8; 4]>(), any::<bool>()),
                0..6,
            ),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (payload, pieces, key, binary) in &msgs {
                let op = if *binary { opcode::BINARY } else { opcode::TEXT };
                let step = payload.len().div_ceil(*pieces).max(1);
                let parts: Vec<&[u8]> = if payload.is_empty() { vec![&[]] } else { payload.chunks(step).collect() };
                for (i, part) in parts.iter().enumerate() {
                    let first = if i == 0 { op } else { opcode::CONTINUATION };
                    encode_frame(&mut wire, i + 1 == parts.len(), first, part, Some(*key));
                }
                expected.push((op, payload.clone()));
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_all(true, &wire, &cuts).unwrap(), expected);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), masked in any::<bool>()) {
            let _ = decode_all(masked, &data, &[3, 17, 200]);
        }
    }
}
