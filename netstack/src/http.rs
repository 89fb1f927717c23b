//! What HTTP policy sees of a request: method, host and path, taken from what hyper parsed
//! (the HTTP engine, [`crate::intercept`], serves every inspected connection, plain or
//! intercepted) and normalized so that one host has one spelling.
//!
//! An absolute-form target (`GET http://host/path`, as sent to proxies) carries its own
//! authority, which servers prefer over the `Host` header (RFC 9112 section 3.2.2), so policy
//! looks at that one. Paths are canonicalized later, by the policy ([`crate::policy`]).

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

/// What policy sees of a request another parser (hyper) already read: `target` as sent (origin
/// or absolute form), `host` the `Host` header or `:authority`. `None` without a usable host.
pub fn request_info(method: &str, target: &str, host: Option<&str>) -> Option<HttpInfo> {
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

    fn info(target: &str, host: Option<&str>) -> HttpInfo {
        request_info("GET", target, host).expect("a usable request")
    }

    #[test]
    fn host_header_is_lowercased_without_port_and_query_is_dropped() {
        let info = info("/v1/items?x=1", Some("API.Example.com:8080"));
        assert_eq!(info.method, "GET");
        assert_eq!(info.host, "api.example.com");
        assert_eq!(info.path, "/v1/items");
    }

    #[test]
    fn absolute_form_target_wins_over_host_header() {
        let got = info("http://real.example/a/b", Some("decoy.example"));
        assert_eq!(
            (got.host.as_str(), got.path.as_str()),
            ("real.example", "/a/b")
        );
        let got = info("HTTPS://Real.Example", None);
        assert_eq!(
            (got.host.as_str(), got.path.as_str()),
            ("real.example", "/")
        );
        assert_eq!(info("*", Some("a.b")).path, "/");
    }

    #[test]
    fn ipv6_userinfo_and_trailing_dot_are_normalized() {
        assert_eq!(info("/", Some("[::1]:80")).host, "::1");
        assert_eq!(info("/", Some("example.com.")).host, "example.com");
        assert_eq!(info("http://user@example.com:1/", None).host, "example.com");
    }

    #[test]
    fn missing_or_bad_hosts_are_unusable() {
        assert_eq!(request_info("GET", "/", None), None);
        assert_eq!(request_info("GET", "/", Some("bad host")), None);
        assert_eq!(request_info("GET", "/", Some(":80")), None);
        assert_eq!(request_info("GET", "http:///x", Some("a.b")), None);
    }

    proptest! {
        #[test]
        fn arbitrary_targets_and_hosts_never_panic(target in ".{0,200}", host in proptest::option::of(".{0,80}")) {
            if let Some(info) = request_info("GET", &target, host.as_deref()) {
                prop_assert!(info.path.starts_with('/'));
                prop_assert!(!info.host.is_empty());
                prop_assert_eq!(info.host.to_ascii_lowercase(), info.host.clone());
            }
        }
    }
}
