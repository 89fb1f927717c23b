//! How HTTP rules compare request paths: every reading a server may give a
//! path ([`path_views`]); an allow rule must hold for all of them, a deny
//! rule for any one (and ignores ASCII case).
//!
//! Servers disagree on a few things, so each is read both ways:
//!
//! - `%2F`, `%5C` and `%3B` (an encoded `/`, `\` and `;`): decoded or kept;
//! - `\`: a path separator (IIS, some frameworks) or a plain character;
//! - `;parameters` at the end of a segment (`/admin;jsessionid=1/`): cut
//!   (Tomcat, Spring) or kept;
//! - repeated slashes: merged (nginx) or kept.
//!
//! Every reading decodes the `%XX` escapes of unreserved characters
//! (letters, digits, `-._~`; `/%61dmin/` is `/admin/`) and removes dot
//! segments (`.` and `..`, also when escaped) as RFC 3986 says. Other
//! escapes stay as they are, in upper case. A broken escape (`%zz`, a `%`
//! near the end) gives no reading at all: no allow rule vouches for such a
//! path and every deny rule whose host and method match covers it.
//!
//! A request target in absolute form (`GET http://host/path`) reaches this
//! module as its path; [`crate::http`] splits the authority off first.

/// One combination of the choices servers make differently.
#[derive(Clone, Copy)]
struct Reading {
    decode_delimiters: bool,
    backslash_separates: bool,
    cut_parameters: bool,
    merge_slashes: bool,
}

/// Every distinct reading of `path` (at most 16), or `None` when it holds a
/// broken `%` escape.
pub fn path_views(path: &str) -> Option<Vec<String>> {
    let mut views: Vec<String> = Vec::new();
    for bits in 0u8..16 {
        let reading = Reading {
            decode_delimiters: bits & 1 != 0,
            backslash_separates: bits & 2 != 0,
            cut_parameters: bits & 4 != 0,
            merge_slashes: bits & 8 != 0,
        };
        let view = read(path, reading)?;
        if !views.contains(&view) {
            views.push(view);
        }
    }
    Some(views)
}

/// Whether an allow rule's `prefix` covers `path`: every reading starts
/// with it. A path without readings is covered by no allow rule.
pub fn allow_covers(views: Option<&[String]>, prefix: &str) -> bool {
    views.is_some_and(|views| views.iter().all(|v| v.starts_with(prefix)))
}

/// Whether a deny rule's `prefix` covers `path`: some reading starts with
/// it, ignoring ASCII case (case-insensitive servers exist). A path without
/// readings is covered by every deny rule.
pub fn deny_covers(views: Option<&[String]>, prefix: &str) -> bool {
    let Some(views) = views else {
        return true;
    };
    views.iter().any(|v| {
        v.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

fn read(path: &str, reading: Reading) -> Option<String> {
    let decoded = percent_decode(path, reading.decode_delimiters)?;
    let decoded = if reading.backslash_separates {
        decoded.replace('\\', "/")
    } else {
        decoded
    };
    let mut parts: Vec<&str> = decoded.split('/').skip(1).collect();
    if reading.cut_parameters {
        for part in &mut parts {
            *part = part.split(';').next().unwrap_or("");
        }
    }
    if reading.merge_slashes {
        let last = parts.len().saturating_sub(1);
        parts = parts
            .into_iter()
            .enumerate()
            .filter(|(n, part)| !part.is_empty() || *n == last)
            .map(|(_, part)| part)
            .collect();
    }
    Some(remove_dot_segments(&parts))
}

/// Decodes the escapes of unreserved characters (and of `/`, `\` and `;`
/// when `delimiters`); other escapes are kept, upper-cased.
fn percent_decode(path: &str, delimiters: bool) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Copy the whole char; multi-byte chars never contain '%'.
            let ch = path[i..].chars().next()?;
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let hex = path.get(i + 1..i + 3)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let byte = u8::from_str_radix(hex, 16).ok()?;
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved || (delimiters && matches!(byte, b'/' | b'\\' | b';')) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 section 5.2.4 on the segments after the leading `/`.
fn remove_dot_segments(parts: &[&str]) -> String {
    let mut segments: Vec<&str> = Vec::with_capacity(parts.len());
    for (n, part) in parts.iter().enumerate() {
        match *part {
            "." => {}
            ".." => {
                segments.pop();
            }
            part => segments.push(part),
        }
        // A trailing dot segment still names a directory.
        if n + 1 == parts.len() && matches!(*part, "." | "..") {
            segments.push("");
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn views(path: &str) -> Vec<String> {
        path_views(path).unwrap_or_else(|| panic!("{path} has no reading"))
    }

    #[test]
    fn dots_and_unreserved_escapes_resolve_in_every_reading() {
        assert_eq!(views("/a/./b/../c"), ["/a/c"]);
        assert_eq!(views("/a/.."), ["/"]);
        assert_eq!(views("/../../x"), ["/x"]);
        assert_eq!(views("/%7euser/%41"), ["/~user/A"]);
        assert_eq!(views("/a%20b"), ["/a%20b"]);
        assert_eq!(views("/%2e%2E/x/%2e"), ["/x/"]);
    }

    #[test]
    fn ambiguous_parts_are_read_every_way() {
        let v = views("/a%2Fb");
        assert!(
            v.contains(&"/a/b".to_string()) && v.contains(&"/a%2Fb".to_string()),
            "{v:?}"
        );
        let v = views("/a\\..\\b");
        assert!(
            v.contains(&"/b".to_string()) && v.contains(&"/a\\..\\b".to_string()),
            "{v:?}"
        );
        let v = views("/admin;x/y");
        assert!(
            v.contains(&"/admin/y".to_string()) && v.contains(&"/admin;x/y".to_string()),
            "{v:?}"
        );
        let v = views("//admin//y/");
        assert!(
            v.contains(&"/admin/y/".to_string()) && v.contains(&"//admin//y/".to_string()),
            "{v:?}"
        );
    }

    #[test]
    fn broken_escapes_have_no_reading() {
        for path in ["/a%zz", "/a%", "/a%4", "/%+1x"] {
            assert_eq!(path_views(path), None, "{path}");
        }
    }

    #[test]
    fn deny_needs_one_reading_allow_needs_all() {
        for path in [
            "/admin;x/",
            "/%61dmin/",
            "//admin/",
            "/x/../admin/",
            "/ADMIN/",
            "/x%2f..%2fadmin/",
            "\\admin\\x",
        ] {
            let v = path_views(path);
            let v = v.as_deref();
            assert!(deny_covers(v, "/admin/"), "{path}");
        }
        let v = path_views("/pub/../admin/x");
        assert!(!allow_covers(v.as_deref(), "/pub/"));
        let v = path_views("/pub;x/../../admin/x");
        assert!(!allow_covers(v.as_deref(), "/pub/"));
        let v = path_views("/pub/a%2F..%2F..%2Fadmin");
        assert!(!allow_covers(v.as_deref(), "/pub/"));
        let v = path_views("/pub/docs/index.html");
        assert!(allow_covers(v.as_deref(), "/pub/"));
        assert!(!deny_covers(v.as_deref(), "/admin/"));
        assert!(!allow_covers(None, "/"));
        assert!(deny_covers(None, "/admin/"));
    }

    /// One way of writing the segment `seg` that a server reads as `seg`.
    fn disguise(seg: &str, how: u8) -> String {
        match how % 6 {
            0 => seg.to_string(),
            1 => seg.bytes().map(|b| format!("%{b:02x}")).collect(),
            2 => format!("{seg};jsessionid=1"),
            3 => format!("{seg}/"),
            4 => format!("./{seg}"),
            _ => format!("zz/../{seg}"),
        }
    }

    proptest! {
        #[test]
        fn a_disguised_denied_path_is_still_denied(
            hows in proptest::collection::vec(any::<u8>(), 3),
            rest in "[a-z0-9]{0,8}",
            lead in 1usize..3,
        ) {
            let path = format!(
                "{}{}/{}/{}",
                "/".repeat(lead),
                disguise("admin", hows[0]),
                disguise("panel", hows[1]),
                disguise(&rest, hows[2]),
            );
            let v = path_views(&path);
            prop_assert!(deny_covers(v.as_deref(), "/admin/panel/"), "{} -> {:?}", path, v);
        }

        #[test]
        fn plain_paths_under_an_allowed_prefix_stay_allowed(segs in proptest::collection::vec("[a-z0-9_~-]{1,8}", 0..4)) {
            let path = format!("/pub/{}", segs.join("/"));
            let v = path_views(&path);
            prop_assert!(allow_covers(v.as_deref(), "/pub/"), "{}", path);
            prop_assert!(!deny_covers(v.as_deref(), "/admin/"), "{}", path);
        }

        #[test]
        fn no_reading_of_an_allowed_path_leaves_the_prefix(path in "/pub/[a-z/.;%2fFe\\\\]{0,16}") {
            if let Some(v) = path_views(&path) {
                if allow_covers(Some(&v), "/pub/") {
                    for view in &v {
                        prop_assert!(!view.contains("/../") && view.starts_with("/pub/"));
                    }
                }
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "\\PC{0,40}") {
            let _ = path_views(&path);
        }
    }
}
