//! The guest console's destination, line-buffered.
//!
//! The UART hands over one byte per guest `out` instruction and flushes after
//! each; passing that through would cost a host system call per byte. This
//! writer collects bytes and writes whole lines (or 4 KiB, or whatever is
//! pending when the VMM's housekeeping tick asks).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::config::ConsoleOutput;

const FLUSH_AT: usize = 4096;
/// Console bytes kept for failure reports: enough for the last screenful of a
/// kernel's messages, small enough to put in an error.
pub const TAIL_BYTES: usize = 4096;

/// Where console bytes end up.
enum Sink {
    Stdout,
    File(std::fs::File),
    Shared(Arc<Mutex<dyn Write + Send>>),
    Null,
}

/// Line-buffered console writer shared between the UART and the VMM.
pub struct Console {
    sink: Sink,
    pending: Vec<u8>,
    /// The last [`TAIL_BYTES`] bytes the guest wrote, for failure reports.
    tail: std::collections::VecDeque<u8>,
}

impl Console {
    /// Opens the destination named by `output`.
    pub fn open(output: &ConsoleOutput) -> io::Result<Self> {
        let sink = match output {
            ConsoleOutput::Stdout => Sink::Stdout,
            ConsoleOutput::File(path) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("console log {}: {e}", path.display()))
                    })?,
            ),
            ConsoleOutput::Writer(w) => Sink::Shared(w.clone()),
            ConsoleOutput::Sink => Sink::Null,
        };
        Ok(Console {
            sink,
            pending: Vec::with_capacity(FLUSH_AT),
            tail: std::collections::VecDeque::with_capacity(TAIL_BYTES),
        })
    }

    /// The last bytes the guest wrote (at most [`TAIL_BYTES`]), as text.
    pub fn tail(&self) -> String {
        let (a, b) = self.tail.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }

    /// Writes out everything pending.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.pending).and_then(|_| out.flush())
            }
            Sink::File(f) => f.write_all(&self.pending),
            Sink::Shared(w) => {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(&self.pending).and_then(|_| w.flush())
            }
            Sink::Null => Ok(()),
        };
        // A console that cannot be written (closed pipe, full disk) must not
        // stop the guest; the bytes are dropped.
        self.pending.clear();
        result
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let keep = buf.len().min(TAIL_BYTES);
        let excess = (self.tail.len() + keep).saturating_sub(TAIL_BYTES);
        self.tail.drain(..excess);
        self.tail.extend(&buf[buf.len() - keep..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.len() >= FLUSH_AT || self.pending.last() == Some(&b'\n') {
            let _ = self.flush_pending();
        }
        Ok(())
    }
}

/// A console shared by the UART (inside the serial device) and the VMM's
/// housekeeping, which flushes partial lines.
#[derive(Clone)]
pub struct SharedConsole(pub Arc<Mutex<Console>>);

impl SharedConsole {
    /// The last bytes the guest wrote; see [`Console::tail`].
    pub fn tail(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).tail()
    }

    /// Flushes whatever is pending.
    pub fn flush_pending(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_pending();
    }
}

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_lines_and_keeps_partial_ones() {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let mut c = Console::open(&ConsoleOutput::Writer(buf.clone())).unwrap();
        c.write_all(b"hel").unwrap();
        c.flush().unwrap();
        assert!(buf.lock().unwrap().is_empty());
        c.write_all(b"lo\n").unwrap();
        c.flush().unwrap();
        assert_eq!(&*buf.lock().unwrap(), b"hello\n");
        c.write_all(b"prompt$ ").unwrap();
        c.flush_pending().unwrap();
        assert_eq!(&*buf.lock().unwrap(), b"hello\nprompt$ ");
    }

    #[test]
    fn tail_keeps_the_last_bytes_only() {
        let mut c = Console::open(&ConsoleOutput::Sink).unwrap();
        c.write_all(&vec![b'a'; TAIL_BYTES]).unwrap();
        c.write_all(b"the end\n").unwrap();
        let tail = c.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with("aathe end\n"), "{tail}");
        c.write_all(&vec![b'z'; 2 * TAIL_BYTES]).unwrap();
        assert_eq!(c.tail(), "z".repeat(TAIL_BYTES));
    }
}
