//! Reads the server name and ALPN list from the first bytes a guest sends on a TLS connection,
//! without consuming them, so the stack can decide to intercept, splice or refuse before it
//! commits to terminating TLS (a bypassed connection gets the very same bytes upstream).
//!
//! Everything here is guest input: lengths are checked against what is there, the handshake
//! message is bounded ([`MAX_HELLO`]), and nothing panics or allocates beyond the input.

/// Largest TLS record payload (RFC 8446 5.1); a bigger record is not TLS.
pub const MAX_RECORD: usize = 16 * 1024;
/// TLS record header: type, version, length.
pub const RECORD_HEADER: usize = 5;
/// Largest ClientHello message accepted (it may span records); real ones are a few KiB.
pub const MAX_HELLO: usize = MAX_RECORD;
/// Most guest bytes looked at before deciding: a ClientHello of [`MAX_HELLO`] spread over
/// small records, with their headers.
pub const MAX_PEEK: usize = MAX_HELLO + 4 * RECORD_HEADER + 64;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST: u8 = 0;

/// What the ClientHello says that matters for the decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloInfo {
    /// The server name (lower-case, no trailing dot), if the guest sent one.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the guest's order.
    pub alpn: Vec<Vec<u8>>,
}

/// The result of looking at the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A ClientHello may still come: read more.
    Incomplete,
    /// The bytes are not the start of a TLS handshake.
    NotTls,
    /// A TLS handshake that is malformed, oversized, or carries an invalid server name.
    Malformed(&'static str),
    /// A complete ClientHello.
    Hello(HelloInfo),
}

/// Looks at `data`, the guest's bytes so far; never consumes or changes them.
pub fn peek(data: &[u8]) -> Peeked {
    let message = match handshake_message(data) {
        Ok(Some(message)) => message,
        Ok(None) => return Peeked::Incomplete,
        Err(peeked) => return peeked,
    };
    match parse_hello(&message) {
        Ok(info) => Peeked::Hello(info),
        Err(reason) => Peeked::Malformed(reason),
    }
}

/// Gathers the first handshake message from the records in `data`: `Ok(None)` while more
/// bytes are needed.
fn handshake_message(data: &[u8]) -> Result<Option<Vec<u8>>, Peeked> {
    let mut message = Vec::new();
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return Ok(None);
        }
        if rest[0] != CONTENT_HANDSHAKE {
            // A record of another type before the hello is done: not a TLS client start.
            return Err(if message.is_empty() {
                Peeked::NotTls
            } else {
                Peeked::Malformed("handshake interrupted by another record type")
            });
        }
        if rest.len() >= 2 && rest[1] != 3 {
            return Err(Peeked::NotTls);
        }
        if rest.len() < RECORD_HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len > MAX_RECORD {
            return Err(Peeked::NotTls);
        }
        if len == 0 {
            return Err(Peeked::Malformed("empty handshake record"));
        }
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            // The message header may already tell it is not a hello; the rest of a partial
            // record is not copied (this runs again on every read while the hello arrives).
            let partial = &rest[RECORD_HEADER..];
            let need = 4usize.saturating_sub(message.len());
            message.extend_from_slice(&partial[..partial.len().min(need)]);
            check_header(&message)?;
            return Ok(None);
        };
        message.extend_from_slice(fragment);
        if let Some(total) = check_header(&message)? {
            if message.len() >= total {
                message.truncate(total);
                return Ok(Some(message));
            }
        }
        rest = &rest[RECORD_HEADER + len..];
    }
}

/// Checks the handshake header once it is there; the whole message's length (header
/// included) when known.
fn check_header(message: &[u8]) -> Result<Option<usize>, Peeked> {
    if message.is_empty() {
        return Ok(None);
    }
    if message[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(Peeked::Malformed(
            "first handshake message is not a ClientHello",
        ));
    }
    if message.len() < 4 {
        return Ok(None);
    }
    let len =
        usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
    if len > MAX_HELLO {
        return Err(Peeked::Malformed("ClientHello too large"));
    }
    Ok(Some(4 + len))
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated ClientHello");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a whole ClientHello message (handshake header included).
fn parse_hello(message: &[u8]) -> Result<HelloInfo, &'static str> {
    let mut r = Reader(message);
    r.take(4)?; // type and length, checked already
    let version = r.u16()?;
    if version >> 8 != 3 {
        return Err("unknown ClientHello version");
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut info = HelloInfo::default();
    if r.0.is_empty() {
        return Ok(info); // no extensions at all
    }
    let mut exts = Reader(r.vec16()?);
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let body = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME if seen_sni => return Err("two server_name extensions"),
            EXT_SERVER_NAME => {
                seen_sni = true;
                info.sni = server_name(body)?;
            }
            EXT_ALPN if seen_alpn => return Err("two ALPN extensions"),
            EXT_ALPN => {
                seen_alpn = true;
                info.alpn = alpn(body)?;
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The host name of a server_name extension (RFC 6066 3).
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut list = Reader(Reader(body).vec16()?);
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == NAME_TYPE_HOST {
            if host.is_some() {
                return Err("two host names in server_name");
            }
            host = Some(valid_name(name)?);
        }
    }
    Ok(host)
}

/// A DNS host name as sent in SNI: ASCII letters, digits, `-`, `_` and dots, at most 253
/// characters, labels of 1 to 63; returned lower-case without a trailing dot.
fn valid_name(name: &[u8]) -> Result<String, &'static str> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err("server name empty or too long");
    }
    let ok = name.split(|&b| b == b'.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        return Err("server name is not a DNS host name");
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// The protocols of an ALPN extension (RFC 7301 3.1).
fn alpn(body: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut list = Reader(Reader(body).vec16()?);
    let mut protocols = Vec::new();
    while !list.0.is_empty() {
        let protocol = list.vec8()?;
        if protocol.is_empty() {
            return Err("empty ALPN protocol name");
        }
        protocols.push(protocol.to_vec());
    }
    Ok(protocols)
}

#[cfg(test)]
mod tests;
