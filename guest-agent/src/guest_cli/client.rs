//! The guest CLI's side of the events socket: connecting with a clear error
//! outside a sandbox, and reading the agent's lines with a deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Failure;

/// The longest line accepted from the agent (its lines are events of at
/// most 64 KiB plus a little framing).
const MAX_LINE: usize = 1 << 20;

/// Connects to the events socket at `path`; fails at once (never waits)
/// when there is none.
pub fn connect(path: &Path) -> Result<UnixStream, Failure> {
    let shown = path.display();
    match UnixStream::connect(path) {
        Ok(stream) => Ok(stream),
        Err(e) => Err(Failure::new(
            1,
            match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => {
                    format!("not running inside an msbvm sandbox (no events socket at {shown})")
                }
                Some(libc::ECONNREFUSED) => {
                    format!("not running inside an msbvm sandbox (nothing listens on {shown})")
                }
                _ => format!("cannot connect to the events socket {shown}: {e}"),
            },
        )),
    }
}

/// Sends one line (newline added).
pub fn send_line(stream: &mut UnixStream, line: &str) -> Result<(), Failure> {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(|e| Failure::new(1, format!("cannot write to the events socket: {e}")))
}

/// Lines from the agent.
pub struct Lines {
    stream: UnixStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    /// Reads lines from `stream`.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next line (without its newline); `Ok(None)` at the end of the
    /// connection; an error of kind `TimedOut` once `deadline` passes.
    pub fn next(&mut self, deadline: Option<Instant>) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::other("the agent sent an overlong line"));
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    Some(left.max(Duration::from_millis(1)))
                }
                None => None,
            };
            self.stream.set_read_timeout(wait)?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            }
        }
    }
}
