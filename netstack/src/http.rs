//! HTTP request-head parsing for HTTP policy.
//!
//! The proxy buffers the first bytes a guest sends on a plain-HTTP flow and
//! hands them to [`parse_request_head`] until it answers `Complete` (the head
//! is checked against the policy and forwarded as is), `Invalid` (the flow is
//! refused) or the buffer reaches [`MAX_HEAD_LEN`] (also `Invalid`, so a guest
//! cannot make the proxy buffer without bound).

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
    },
    /// More bytes are needed.
    Incomplete,
    /// Not a usable HTTP/1.x request head; the reason says why.
    Invalid(String),
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
    ParseOutcome::Complete {
        info: HttpInfo {
            method: method.to_owned(),
            host,
            path,
        },
        head_len,
    }
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
            ParseOutcome::Complete { info, head_len } => (info, head_len),
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

    proptest! {
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
