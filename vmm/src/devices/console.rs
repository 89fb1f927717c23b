//! The guest console's destination, line-buffered.
//!
//! The UART hands over one byte per guest `out` instruction and flushes after
//! each; passing that through would cost a host system call per byte. This
//! writer collects bytes and writes whole lines (or 4 KiB, or whatever is
//! pending when the VMM's housekeeping tick asks).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::ConsoleOutput;

const FLUSH_AT: usize = 4096;

/// What Linux prints (at emergency level, so even with `quiet`) right before
/// it halts the CPUs for good: `kernel_halt()` and `kernel_power_off()`.
const HALT_LINES: [&[u8]; 2] = [b"reboot: System halted", b"reboot: Power down"];

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
    halt_hint: Arc<AtomicBool>,
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
            halt_hint: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Raised once the guest printed one of the lines Linux prints before
    /// halting. The VMM only then looks for halted vCPUs: looking means
    /// interrupting them with a signal, which is not free and (seen under
    /// nested virtualization) not always harmless, so it is not done blindly.
    /// A guest that prints the line without halting costs one check.
    pub fn halt_hint(&self) -> Arc<AtomicBool> {
        self.halt_hint.clone()
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
        if buf.contains(&b'\n')
            && HALT_LINES
                .iter()
                .any(|l| self.pending.windows(l.len()).any(|w| w == *l))
        {
            self.halt_hint.store(true, Ordering::Release);
        }
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
    fn halt_line_raises_the_hint_once_complete() {
        let mut c = Console::open(&ConsoleOutput::Sink).unwrap();
        let hint = c.halt_hint();
        for b in b"[  1.0] reboot: System hal" {
            c.write_all(&[*b]).unwrap();
        }
        assert!(!hint.load(Ordering::Acquire));
        c.write_all(b"ted\n").unwrap();
        assert!(hint.load(Ordering::Acquire));
    }
}
