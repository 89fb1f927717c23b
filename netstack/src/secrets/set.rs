//! The secrets of one sandbox, ready for the engine: eligibility, detection, substitution.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::replace::{replace_all, Replacer};
use super::scan::{patterns_for, Pattern, Scanner};
use super::Secret;

/// Whether `host` (lowercase, no port) is `pattern` (`HOST`, or `*.SUFFIX` for any name
/// strictly below SUFFIX).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => host.eq_ignore_ascii_case(&pattern),
    }
}

/// The secrets of a sandbox and their detection patterns.
#[derive(Debug)]
pub(crate) struct SecretSet {
    secrets: Vec<Secret>,
    patterns: Arc<[Pattern]>,
}

/// Which secrets (by index) a request may carry to its host.
pub(crate) type Eligible = Vec<bool>;

impl SecretSet {
    /// The set of `secrets`; a secret without placeholder or value is left out (it could only
    /// match everything or substitute nothing).
    pub(crate) fn new(secrets: &[Secret]) -> SecretSet {
        let secrets: Vec<Secret> = secrets
            .iter()
            .filter(|s| !s.placeholder.is_empty() && !s.value.is_empty())
            .cloned()
            .collect();
        let patterns: Vec<Pattern> = secrets
            .iter()
            .enumerate()
            .flat_map(|(i, s)| patterns_for(i, s.placeholder.as_bytes()))
            .collect();
        SecretSet {
            secrets,
            patterns: patterns.into(),
        }
    }

    /// Whether there are no secrets.
    pub(crate) fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The name of secret `i` (for events).
    pub(crate) fn name(&self, i: usize) -> &str {
        self.secrets.get(i).map_or("?", |s| s.name.as_str())
    }

    /// Which secrets a request on a connection with `sni` may carry: the connection was
    /// intercepted (an SNI), the SNI was resolved through the sandbox's DNS to the destination
    /// (`pinned`) and is one of the secret's hosts. The caller has already refused requests
    /// whose Host differs from the SNI.
    pub(crate) fn eligible(&self, sni: Option<&str>, pinned: bool) -> Eligible {
        self.secrets
            .iter()
            .map(|s| match sni {
                Some(sni) if pinned => s.hosts.iter().any(|h| host_matches(h, sni)),
                _ => false,
            })
            .collect()
    }

    /// A scanner for the placeholders of every secret the request is not eligible for.
    pub(crate) fn detector(&self, eligible: &[bool]) -> Scanner {
        let detect = (0..self.secrets.len())
            .map(|i| !eligible.get(i).copied().unwrap_or(false))
            .collect();
        Scanner::new(self.patterns.clone(), detect)
    }

    fn pairs(&self, eligible: &[bool], pick: impl Fn(&Secret) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.secrets
            .iter()
            .zip(eligible)
            .filter(|(s, ok)| **ok && pick(s))
            .map(|(s, _)| {
                (
                    s.placeholder.clone().into_bytes(),
                    s.value.clone().into_bytes(),
                )
            })
            .collect()
    }

    /// Header value `value` of header `name` with the eligible placeholders replaced (raw, and
    /// inside `Basic` credentials); `None` when nothing changed.
    pub(crate) fn substitute_header(
        &self,
        name: &str,
        value: &[u8],
        eligible: &[bool],
    ) -> Option<Vec<u8>> {
        let pairs = self.pairs(eligible, |s| s.inject.headers);
        if pairs.is_empty() {
            return None;
        }
        let auth = name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization");
        if auth && value.len() > 6 && value[..6].eq_ignore_ascii_case(b"basic ") {
            let encoded = value[6..].trim_ascii();
            if let Ok(decoded) = STANDARD.decode(encoded) {
                let replaced = replace_all(pairs.clone(), &decoded);
                if replaced != decoded {
                    let mut out = value[..6].to_vec();
                    out.extend_from_slice(STANDARD.encode(replaced).as_bytes());
                    return Some(out);
                }
            }
        }
        let replaced = replace_all(pairs, value);
        (replaced != value).then_some(replaced)
    }

    /// The query with eligible placeholders replaced by the percent-encoded value, when the
    /// secret opted into query substitution; `None` when nothing changed.
    pub(crate) fn substitute_query(&self, query: &str, eligible: &[bool]) -> Option<String> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .pairs(eligible, |s| s.inject.query)
            .into_iter()
            .map(|(ph, value)| (ph, percent_encode(&value).into_bytes()))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let replaced = replace_all(pairs, query.as_bytes());
        // Only ASCII went in and out, so this cannot fail.
        String::from_utf8(replaced).ok().filter(|q| q != query)
    }

    /// Replaces eligible placeholders in a body, for secrets that opted into it.
    pub(crate) fn body_substituter(&self, eligible: &[bool]) -> Replacer {
        Replacer::new(self.pairs(eligible, |s| s.inject.body))
    }

    /// Replaces every secret's value by its placeholder (for responses).
    pub(crate) fn value_masker(&self) -> Replacer {
        Replacer::new(
            self.secrets
                .iter()
                .map(|s| {
                    (
                        s.value.clone().into_bytes(),
                        s.placeholder.clone().into_bytes(),
                    )
                })
                .collect(),
        )
    }

    /// `value` with every secret value replaced by its placeholder; `None` when none occurs.
    pub(crate) fn mask_value(&self, value: &[u8]) -> Option<Vec<u8>> {
        let mut masker = self.value_masker();
        if masker.is_empty() {
            return None;
        }
        let mut out = masker.push(value);
        out.extend(masker.finish());
        (out != value).then_some(out)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Inject;
    use super::*;

    fn set() -> SecretSet {
        SecretSet::new(&[
            Secret {
                name: "API".into(),
                value: "real/value+1".into(),
                placeholder: "msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa".into(),
                hosts: vec!["api.example.com".into(), "*.svc.test".into()],
                inject: Inject {
                    headers: true,
                    query: true,
                    body: true,
                },
            },
            Secret {
                name: "OTHER".into(),
                value: "v2".into(),
                placeholder: "msbvm_ph_bbbbbbbbbbbbbbbbbbbbbbbb".into(),
                hosts: vec!["other.test".into()],
                inject: Inject::default(),
            },
        ])
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("API.example.com", "api.example.com"));
        assert!(host_matches("*.svc.test", "a.b.svc.test"));
        assert!(!host_matches("*.svc.test", "svc.test"));
        assert!(!host_matches("*.svc.test", "evilsvc.test"));
        assert!(!host_matches("api.example.com", "api.example.com.evil"));
    }

    #[test]
    fn eligibility_needs_sni_pin_and_host() {
        let s = set();
        assert_eq!(s.eligible(Some("api.example.com"), true), [true, false]);
        assert_eq!(s.eligible(Some("api.example.com"), false), [false, false]);
        assert_eq!(s.eligible(None, true), [false, false]);
        assert_eq!(s.eligible(Some("x.svc.test"), true), [true, false]);
    }

    #[test]
    fn header_basic_and_query_substitution() {
        let s = set();
        let ok = [true, false];
        assert_eq!(
            s.substitute_header("x-key", b"k=msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa", &ok),
            Some(b"k=real/value+1".to_vec())
        );
        let basic = format!(
            "Basic {}",
            STANDARD.encode("user:msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa")
        );
        let got = s
            .substitute_header("Authorization", basic.as_bytes(), &ok)
            .unwrap();
        assert_eq!(
            got,
            format!("Basic {}", STANDARD.encode("user:real/value+1")).into_bytes()
        );
        assert_eq!(
            s.substitute_query("a=1&k=msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa", &ok)
                .as_deref(),
            Some("a=1&k=real%2Fvalue%2B1")
        );
        // Not eligible: nothing is substituted.
        assert_eq!(
            s.substitute_header("x-key", b"msbvm_ph_bbbbbbbbbbbbbbbbbbbbbbbb", &ok),
            None
        );
        assert_eq!(
            s.mask_value(b"echo real/value+1!"),
            Some(b"echo msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa!".to_vec())
        );
    }

    #[test]
    fn debug_output_holds_no_value_or_placeholder() {
        let s = set();
        let text = format!(
            "{s:?} {:?} {:?} {:?}",
            s.detector(&[]),
            s.value_masker(),
            s.body_substituter(&[true, true])
        );
        assert!(
            !text.contains("real/value") && !text.contains("msbvm_ph_"),
            "{text}"
        );
    }

    #[test]
    fn detector_skips_eligible_secrets() {
        let s = set();
        let mut d = s.detector(&[true, false]);
        assert_eq!(d.feed(b"msbvm_ph_aaaaaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(d.feed(b"msbvm_ph_bbbbbbbbbbbbbbbbbbbbbbbb"), Some(1));
    }
}
