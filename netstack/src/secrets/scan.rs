//! Detection of placeholders in what the guest sends: raw, percent-encoded (`%41`), JSON-escaped
//! (`\u0041`, `\/`) and base64 (standard and URL-safe, at any alignment, as inside
//! `Authorization: Basic`), across arbitrary chunk splits.
//!
//! The stream runs through a small decoder that undoes percent and JSON escapes byte by byte;
//! each pattern has a KMP matcher on the raw stream and one on the decoded stream. The matchers
//! carry their state between chunks, so nothing has to be buffered for detection.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

/// Shortest base64 core worth matching (shorter ones would fire on ordinary text).
const MIN_BASE64_CORE: usize = 12;

/// One byte pattern that betrays a secret's placeholder.
pub(crate) struct Pattern {
    /// Index of the secret in its set.
    pub secret: usize,
    bytes: Vec<u8>,
    /// KMP failure function.
    fail: Vec<usize>,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Placeholders stay out of logs like values do.
        f.debug_struct("Pattern")
            .field("secret", &self.secret)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Pattern {
    fn new(secret: usize, bytes: Vec<u8>) -> Pattern {
        let mut fail = vec![0; bytes.len()];
        let mut k = 0;
        for i in 1..bytes.len() {
            while k > 0 && bytes[i] != bytes[k] {
                k = fail[k - 1];
            }
            if bytes[i] == bytes[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Pattern {
            secret,
            bytes,
            fail,
        }
    }

    /// Advances the matched length `state` by `b`; true on a complete match.
    fn step(&self, state: &mut usize, b: u8) -> bool {
        let mut k = *state;
        while k > 0 && self.bytes[k] != b {
            k = self.fail[k - 1];
        }
        if self.bytes[k] == b {
            k += 1;
        }
        if k == self.bytes.len() {
            *state = self.fail[k - 1];
            return true;
        }
        *state = k;
        false
    }
}

/// The patterns of one placeholder: itself and the base64 cores it leaves at each alignment.
pub(crate) fn patterns_for(secret: usize, placeholder: &[u8]) -> Vec<Pattern> {
    let mut all: Vec<Vec<u8>> = vec![placeholder.to_vec()];
    for align in 0..3usize {
        let mut data = vec![0u8; align];
        data.extend_from_slice(placeholder);
        let encoded = STANDARD_NO_PAD.encode(&data).into_bytes();
        // Only the characters whose 6 bits all come from the placeholder are fixed.
        let start = (8 * align).div_ceil(6);
        let end = (8 * (align + placeholder.len())) / 6;
        if end <= start || end - start < MIN_BASE64_CORE {
            continue;
        }
        let core = encoded[start..end].to_vec();
        let url: Vec<u8> = core
            .iter()
            .map(|&c| match c {
                b'+' => b'-',
                b'/' => b'_',
                c => c,
            })
            .collect();
        all.push(core);
        all.push(url);
    }
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| Pattern::new(secret, p))
        .collect()
}

/// Undoes percent and JSON escapes one byte at a time.
#[derive(Debug, Default)]
struct Decoder {
    /// The escape sequence read so far (`%4`, `\u00`), empty outside one.
    pending: Vec<u8>,
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

impl Decoder {
    /// Feeds `b`; calls `out` with each decoded byte.
    fn feed(&mut self, b: u8, out: &mut impl FnMut(u8)) {
        if self.pending.is_empty() {
            match b {
                b'%' | b'\\' => self.pending.push(b),
                _ => out(b),
            }
            return;
        }
        let lead = self.pending[0];
        let done = match (lead, self.pending.len(), b) {
            (b'%', 1, _) if hex(b).is_some() => None,
            (b'%', 2, _) if hex(b).is_some() => {
                let v = hex(self.pending[1]).unwrap_or(0) * 16 + hex(b).unwrap_or(0);
                Some(v as u8)
            }
            (b'\\', 1, b'/') => Some(b'/'),
            (b'\\', 1, b'\\') => Some(b'\\'),
            (b'\\', 1, b'u' | b'U') => None,
            (b'\\', 2..=4, _) if hex(b).is_some() => None,
            (b'\\', 5, _) if hex(b).is_some() => {
                let digits = self.pending[2..].iter().chain([&b]);
                let v = digits.fold(0u32, |acc, &d| acc * 16 + hex(d).unwrap_or(0));
                // Non-ASCII code points never occur in a placeholder: a byte that matches
                // nothing keeps the matchers honest.
                Some(u8::try_from(v).ok().filter(u8::is_ascii).unwrap_or(0xff))
            }
            _ => {
                // Not an escape after all: the bytes stand for themselves.
                for p in std::mem::take(&mut self.pending) {
                    out(p);
                }
                self.feed(b, out);
                return;
            }
        };
        match done {
            Some(v) => {
                self.pending.clear();
                out(v);
            }
            None => self.pending.push(b),
        }
    }
}

/// Finds placeholders of the selected secrets in a byte stream.
#[derive(Debug)]
pub(crate) struct Scanner {
    patterns: Arc<[Pattern]>,
    /// Which secrets are looked for, by index.
    detect: Vec<bool>,
    raw: Vec<usize>,
    decoded: Vec<usize>,
    decoder: Decoder,
    /// The first secret found, once one was.
    found: Option<usize>,
}

impl Scanner {
    /// A scanner for the secrets whose `detect` entry is true.
    pub(crate) fn new(patterns: Arc<[Pattern]>, detect: Vec<bool>) -> Scanner {
        let n = patterns.len();
        Scanner {
            patterns,
            detect,
            raw: vec![0; n],
            decoded: vec![0; n],
            decoder: Decoder::default(),
            found: None,
        }
    }

    /// Whether no secret is looked for at all.
    pub(crate) fn is_idle(&self) -> bool {
        !self.detect.iter().any(|d| *d)
    }

    /// Feeds the next bytes; returns the index of the first secret found so far.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Option<usize> {
        if self.found.is_some() || self.is_idle() {
            return self.found;
        }
        let Scanner {
            patterns,
            detect,
            raw,
            decoded,
            decoder,
            found,
        } = self;
        let active = |p: &Pattern| detect.get(p.secret).copied().unwrap_or(false);
        for &b in data {
            for (i, p) in patterns.iter().enumerate() {
                if active(p) && p.step(&mut raw[i], b) {
                    found.get_or_insert(p.secret);
                }
            }
            decoder.feed(b, &mut |d| {
                for (i, p) in patterns.iter().enumerate() {
                    if active(p) && p.step(&mut decoded[i], d) {
                        found.get_or_insert(p.secret);
                    }
                }
            });
            if found.is_some() {
                break;
            }
        }
        *found
    }

    /// Scans one complete piece (a header value) with fresh matcher state.
    pub(crate) fn scan_once(&self, data: &[u8]) -> Option<usize> {
        let mut fresh = Scanner::new(self.patterns.clone(), self.detect.clone());
        fresh.feed(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use proptest::prelude::*;

    const PH: &[u8] = b"msbvm_ph_7f3a9c01d2e4b5a6978812aa";

    fn scanner() -> Scanner {
        let mut patterns = patterns_for(0, b"other_placeholder_00000000000000");
        patterns.extend(patterns_for(1, PH));
        Scanner::new(patterns.into(), vec![false, true])
    }

    fn percent_all(data: &[u8]) -> Vec<u8> {
        data.iter()
            .flat_map(|b| format!("%{b:02X}").into_bytes())
            .collect()
    }

    fn json_escape_all(data: &[u8]) -> Vec<u8> {
        data.iter()
            .flat_map(|b| format!("\\u{b:04x}").into_bytes())
            .collect()
    }

    fn encodings() -> Vec<Vec<u8>> {
        let mut mixed = b"{\"k\":\"".to_vec();
        mixed.extend_from_slice(&PH[..5]);
        mixed.extend(json_escape_all(&PH[5..9]));
        mixed.extend(percent_all(&PH[9..12]));
        mixed.extend_from_slice(&PH[12..]);
        let mut out = vec![
            [b"xx".as_slice(), PH, b"yy"].concat(),
            percent_all(PH),
            json_escape_all(PH),
            mixed,
        ];
        for prefix in ["", "u", "us", "user:"] {
            let creds = [prefix.as_bytes(), PH, b":tail"].concat();
            out.push(format!("Basic {}", STANDARD.encode(&creds)).into_bytes());
            out.push(URL_SAFE.encode(&creds).into_bytes());
            // JSON writers may escape the slashes of base64.
            out.push(STANDARD.encode(&creds).replace('/', "\\/").into_bytes());
        }
        out
    }

    #[test]
    fn every_encoding_is_found() {
        for data in encodings() {
            assert_eq!(
                scanner().feed(&data),
                Some(1),
                "{}",
                String::from_utf8_lossy(&data)
            );
        }
    }

    #[test]
    fn unrelated_and_undetected_secrets_are_not_found() {
        let mut s = scanner();
        assert_eq!(s.feed(b"other_placeholder_00000000000000"), None);
        assert_eq!(s.feed(b"%zz\\q\\u12 msbvm_ph_7f3a9c01d2e4b5a69788"), None);
        assert_eq!(s.feed(&PH[..PH.len() - 1]), None);
    }

    proptest! {
        #[test]
        fn found_across_any_split(which in 0usize..16, cuts in proptest::collection::vec(0usize..400, 0..8)) {
            let all = encodings();
            let data = &all[which % all.len()];
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut s = scanner();
            let mut from = 0;
            let mut found = None;
            for cut in cuts.into_iter().chain([data.len()]) {
                found = found.or(s.feed(&data[from..cut]));
                from = cut;
            }
            prop_assert_eq!(found, Some(1));
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scanner().feed(&data);
        }
    }
}
