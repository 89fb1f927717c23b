//! Turning the raw serial console of a QEMU machine into clean text lines.
//!
//! The L1 console mixes the firmware's screen-control output (SeaBIOS clears the screen and
//! moves the cursor with ANSI escapes), carriage returns added by the tty layer, and the output
//! we actually care about. Tests match on the text, so everything that is not text goes.

/// Splits a byte stream into lines, stripping ANSI escape sequences, carriage returns and other
/// control characters, and dropping firmware banner lines.
#[derive(Debug, Default)]
pub struct LineCleaner {
    /// Bytes of the current, not yet finished line.
    partial: Vec<u8>,
}

impl LineCleaner {
    /// A cleaner with no pending input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns the lines they complete, already cleaned, with firmware noise
    /// removed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let raw = std::mem::take(&mut self.partial);
                if let Some(line) = clean_line(&raw) {
                    lines.push(line);
                }
            } else {
                self.partial.push(b);
            }
        }
        lines
    }

    /// Returns the last, unterminated line (if any), cleaned.
    pub fn finish(&mut self) -> Option<String> {
        let raw = std::mem::take(&mut self.partial);
        if raw.is_empty() {
            return None;
        }
        clean_line(&raw).filter(|l| !l.is_empty())
    }
}

/// Cleans one raw line; `None` when it is firmware noise.
fn clean_line(raw: &[u8]) -> Option<String> {
    let text = strip_ansi(&String::from_utf8_lossy(raw));
    if is_firmware_noise(&text) {
        None
    } else {
        Some(text)
    }
}

/// Removes ANSI/VT100 escape sequences and control characters (except tab) from `s`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: runs to BEL or to ESC \ (string terminator).
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                // Character-set selection takes one more byte (ESC ( B).
                Some('(') | Some(')') => {
                    chars.next();
                }
                // Any other escape is two bytes long (ESC c, ESC 7, ESC =, ...).
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether a cleaned line is output of the L1 firmware (SeaBIOS, iPXE) rather than of Linux.
pub fn is_firmware_noise(line: &str) -> bool {
    const NOISE: [&str; 5] = [
        "SeaBIOS (version",
        "iPXE (",
        "Press Ctrl-B",
        "Booting from ROM",
        "Machine UUID",
    ];
    NOISE.iter().any(|n| line.contains(n))
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_carriage_returns() {
        assert_eq!(strip_ansi("\x1bc\x1b[?7l\x1b[2Jhello\r"), "hello");
        assert_eq!(strip_ansi("a\x1b[1;32mb\x1b[0mc"), "abc");
        assert_eq!(strip_ansi("\x1b]0;title\x07x"), "x");
        assert_eq!(strip_ansi("\x1b(Bok\tgo"), "ok\tgo");
    }

    #[test]
    fn splits_lines_across_chunks_and_drops_noise() {
        let mut c = LineCleaner::new();
        assert!(c.push(b"SeaBIOS (version 1.16)\r\nhel").is_empty());
        assert_eq!(
            c.push(b"lo\r\nBooting from ROM..\r\n\r\nwor"),
            vec!["hello", ""]
        );
        assert_eq!(c.finish().as_deref(), Some("wor"));
        assert_eq!(c.finish(), None);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
