//! Streaming replacement of byte patterns, carrying a tail between chunks so that a pattern
//! split across reads or DATA frames is still replaced.

/// Replaces every (leftmost, non-overlapping) occurrence of each `from` by its `to` in a
/// stream of chunks. The earlier pair wins when two start at the same byte.
pub(crate) struct Replacer {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes that may be the start of a pattern, held back until the next chunk decides.
    tail: Vec<u8>,
    /// Which bytes start a pattern (everything else is copied in runs).
    first: [bool; 256],
}

impl std::fmt::Debug for Replacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pairs hold secret values.
        f.debug_struct("Replacer")
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

impl Replacer {
    /// A replacer for `pairs`; empty patterns are ignored.
    pub(crate) fn new(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Replacer {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            pairs.into_iter().filter(|(f, _)| !f.is_empty()).collect();
        let mut first = [false; 256];
        for (from, _) in &pairs {
            first[usize::from(from[0])] = true;
        }
        Replacer {
            pairs,
            tail: Vec::new(),
            first,
        }
    }

    /// Whether there is nothing to replace.
    pub(crate) fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The output for `chunk`: everything that can no longer become part of a pattern.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.pairs.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        let (out, keep) = self.replace(&buf, false);
        self.tail = buf[keep..].to_vec();
        out
    }

    /// The held-back tail, at the end of the stream.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.tail);
        self.replace(&buf, true).0
    }

    /// Replaces in `buf`; returns the output and where the held-back tail starts.
    fn replace(&self, buf: &[u8], last: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let run = buf[i..]
                .iter()
                .position(|&b| self.first[usize::from(b)])
                .unwrap_or(buf.len() - i);
            out.extend_from_slice(&buf[i..i + run]);
            i += run;
            if i == buf.len() {
                break;
            }
            let rest = &buf[i..];
            for (from, to) in &self.pairs {
                if rest.starts_with(from) {
                    out.extend_from_slice(to);
                    i += from.len();
                    continue 'scan;
                }
                // A pattern that comes first and may still match once more bytes arrive
                // decides: hold back from here.
                if !last && rest.len() < from.len() && from.starts_with(rest) {
                    return (out, i);
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, buf.len())
    }
}

/// Replaces in one complete buffer.
pub(crate) fn replace_all(pairs: Vec<(Vec<u8>, Vec<u8>)>, data: &[u8]) -> Vec<u8> {
    let mut r = Replacer::new(pairs);
    let mut out = r.push(data);
    out.extend(r.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b"PLACEHOLDER1".to_vec(), b"s3cr3t-value".to_vec()),
            (b"PLACE".to_vec(), b"x".to_vec()),
        ]
    }

    #[test]
    fn replaces_whole_and_keeps_partial_tail() {
        assert_eq!(
            replace_all(pairs(), b"a PLACEHOLDER1 b PLACEHOLDER PLAC"),
            b"a s3cr3t-value b xHOLDER PLAC"
        );
        let mut r = Replacer::new(pairs());
        let mut out = r.push(b"xxPLACEHOL");
        assert_eq!(out, b"xx");
        out.extend(r.push(b"DER1yy"));
        out.extend(r.finish());
        assert_eq!(out, b"xxs3cr3t-valueyy");
    }

    proptest! {
        #[test]
        fn any_split_gives_the_one_shot_result(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(b"PLACEHOLDER1".to_vec()),
                    Just(b"PLACE".to_vec()),
                    Just(b"PLACEHOLD".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ],
                0..10,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let data: Vec<u8> = parts.concat();
            let whole = replace_all(pairs(), &data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut r = Replacer::new(pairs());
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                out.extend(r.push(&data[from..cut]));
                from = cut;
            }
            out.extend(r.finish());
            prop_assert_eq!(out, whole);
        }

        #[test]
        fn single_pattern_matches_std_replace(s in "[a-zP]{0,40}(PLACEHOLDER1[a-z]{0,5}){0,3}") {
            let expected = s.replace("PLACEHOLDER1", "s3cr3t-value");
            let got = replace_all(vec![(b"PLACEHOLDER1".to_vec(), b"s3cr3t-value".to_vec())], s.as_bytes());
            prop_assert_eq!(got, expected.into_bytes());
        }
    }
}
