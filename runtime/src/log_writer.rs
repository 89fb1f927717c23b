//! The thread that writes `runtime.log`.
//!
//! Every runtime thread logs through `tracing`, but only this thread touches the file: a
//! rotation of the capped log ([`msbvm_sdk::logfile`]) renames and opens files and points stderr
//! at the new one, and most confined threads (device workers, listeners) may not make those
//! calls. The other threads hand their lines over a bounded channel; when it is full (a
//! thread logging faster than the disk takes it, e.g. driven by the guest) lines are dropped
//! and counted, and the count is written once there is room: logging never blocks a vCPU or
//! device thread and never grows without bound.

use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use msbvm_sdk::logfile::CappedLog;

/// How many lines may wait for the writer.
const QUEUE_LINES: usize = 4096;

enum Message {
    Line(Vec<u8>),
    /// Confine the writer thread (sent once the runtime's confinement is enabled).
    Confine,
    /// Reply once everything sent before is written.
    Flush(SyncSender<()>),
}

/// The sending side, shared by every thread's `tracing` writer.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

static SENDER: OnceLock<LogSender> = OnceLock::new();

/// Starts the writer thread for `log` (stderr is pointed at each file it writes) and returns
/// the sender `tracing` writes through.
pub fn start(log: CappedLog) -> io::Result<LogSender> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let sender = LogSender {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let dropped = sender.dropped.clone();
    std::thread::Builder::new()
        .name("msbvm-log".into())
        .spawn(move || run(log, rx, &dropped))?;
    let _ = SENDER.set(sender.clone());
    Ok(sender)
}

/// Asks the writer thread to confine itself (kind `log`); call after confinement is enabled.
pub fn confine() {
    if let Some(s) = SENDER.get() {
        // Blocking: the message must arrive, and the writer drains the queue quickly.
        let _ = s.tx.send(Message::Confine);
    }
}

/// Waits (at most `timeout`) until every line logged so far is in the file: call before the
/// runtime exits.
pub fn flush(timeout: Duration) {
    if let Some(s) = SENDER.get() {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if s.tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

fn point_stderr_at(log: &std::fs::File) {
    // SAFETY: dup2 onto stderr; `log` stays valid for the call.
    unsafe { libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO) };
}

/// The writer thread's loop (stderr already points at `log`'s file: the runtime did that
/// before starting it).
fn run(log: CappedLog, rx: Receiver<Message>, dropped: &AtomicU64) {
    let mut log = log.on_reopen(Box::new(point_stderr_at));
    for message in rx {
        match message {
            Message::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let _ = writeln!(log, "msbvm runtime: {lost} log lines dropped (logging faster than the log is written)");
                }
                let _ = log.write_all(&line);
            }
            Message::Confine => super::confine::thread_started("log"),
            Message::Flush(done) => {
                let _ = log.flush();
                let _ = done.send(());
            }
        }
    }
}

impl Write for LogSender {
    /// Hands `buf` (one formatted event) to the writer, or counts it dropped when the queue
    /// is full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.try_send(Message::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                // The writer is gone (it only ends with the process): stderr is the log.
                let _ = io::stderr().write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines from many threads arrive whole; a flood past the queue is counted, not queued.
    #[test]
    fn lines_from_threads_arrive_whole_and_a_flood_is_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("runtime.log");
        let log = CappedLog::open(&path, 1 << 20).unwrap();
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let sender = LogSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        // Fill the queue before the writer runs: the rest is dropped and counted.
        let mut s = sender.clone();
        for i in 0..QUEUE_LINES + 100 {
            s.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(sender.dropped.load(Ordering::Relaxed), 100);
        let dropped = sender.dropped.clone();
        let writer = std::thread::spawn(move || run(log, rx, &dropped));
        let flush = |sender: &LogSender| {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            sender.tx.send(Message::Flush(done_tx)).unwrap();
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        };
        flush(&sender);
        s.write_all(b"after\n").unwrap();
        flush(&sender);
        drop((s, sender));
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("line {}\n", QUEUE_LINES - 1)));
        assert!(!text.contains(&format!("line {}\n", QUEUE_LINES)));
        assert!(text.contains("100 log lines dropped"), "{text}");
        assert!(text.ends_with("after\n"));
    }
}
