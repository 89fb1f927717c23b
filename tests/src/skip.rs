//! Skipping, never silently passing, when the host cannot run the nested machine.
//!
//! A nested test on a host without QEMU must not pass as if it had run. It fails with the
//! reason and the fix, unless the developer asked for skips with `MSBVM_SKIP_NESTED=1`; then it
//! prints one `skipped: <reason>` line and returns.

use std::io::Write;

use crate::error::Error;

/// Environment variable that turns "cannot run here" failures into skips.
pub const SKIP_ENV: &str = "MSBVM_SKIP_NESTED";

/// Whether `MSBVM_SKIP_NESTED=1` is set.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

/// Unwraps a harness result in a test: `Some` on success; on an environment error (see
/// [`Error::is_environment`]) with skips requested, prints `skipped: <reason>` (uncaptured, on
/// stderr) and returns
/// `None`; on any other error, panics with the message.
pub fn or_skip<T>(result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.is_environment() && skip_requested() => {
            // Straight to the stderr handle, not through print!/eprint!, which the test
            // harness captures and hides for passing tests: a skip must be seen.
            let _ = writeln!(std::io::stderr(), "skipped: {}", one_line(&e.to_string()));
            None
        }
        Err(e) if e.is_environment() => {
            panic!("{e}\n(set {SKIP_ENV}=1 to skip nested tests on a host that cannot run them)")
        }
        Err(e) => panic!("{e}"),
    }
}

/// The first line of a message, so that a skip stays one line.
fn one_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_values_through() {
        assert_eq!(or_skip::<u8>(Ok(7)), Some(7));
    }

    #[test]
    #[should_panic(expected = "building the static binaries failed")]
    fn real_failures_never_skip() {
        or_skip::<()>(Err(Error::Build {
            command: "cargo".into(),
            status: "exit status: 101".into(),
        }));
    }

    #[test]
    fn one_line_cuts() {
        assert_eq!(one_line("a\nb"), "a");
    }
}
