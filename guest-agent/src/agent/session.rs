//! One running exec: streams its I/O and reports how it ended.
//!
//! Threads per session, each with one job so no direction can stall
//! another:
//! - one pump per output stream (stdout, stderr; one for a PTY) reads at
//!   most [`MAX_CHUNK_LEN`] and sends it with a blocking write, so a slow host
//!   slows the process down instead of filling the agent's memory;
//! - a stdin writer feeds the process from a bounded queue the connection
//!   thread fills (the connection thread never blocks on the process, so
//!   signals and resizes get through while the process ignores its input);
//! - a finisher waits for the exit status (enforcing the timeout), lets the
//!   pumps drain, then sends `Exited` and closes the connection.
//!
//! Draining: `Exited` goes out after the pumps saw EOF (or EIO on a PTY),
//! so no output is lost. A background process that inherited the output and
//! outlives the exec would hold EOF back forever; once the main process has
//! exited, a pump therefore also stops when the stream stays empty for
//! [`LINGER`] (or after [`DRAIN_LIMIT`] of continuous output).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use msbvm_protocol::framing::FrameWriter;
use msbvm_protocol::{ExitStatus, GuestMessage, TtySize, MAX_CHUNK_LEN};

use super::exec::{Process, Stdio};
use super::pty;
use super::reaper::WaitStatus;

/// After the process exited, how long a quiet output stream is given before
/// it counts as drained even without EOF.
pub const LINGER: Duration = Duration::from_millis(100);
/// After the process exited, the longest a pump keeps forwarding output of
/// leftover background processes.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How often blocked pumps and the stdin writer look at the session state.
const TICK: Duration = Duration::from_millis(200);
/// Stdin bytes queued for a process that has not read them yet; beyond it
/// the connection thread stops reading from the host (vsock flow control
/// then holds the host back).
const STDIN_QUEUE_LIMIT: usize = 4 << 20;
/// The largest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

/// Errors of requests on a running session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The signal number is out of range.
    #[error("{0} is not a signal number (1-{MAX_SIGNAL})")]
    BadSignal(i32),
    /// kill failed.
    #[error("cannot send signal {signal} to process group {pid}: {source}")]
    Signal {
        /// The signal.
        signal: i32,
        /// The group.
        pid: libc::pid_t,
        /// Why.
        source: io::Error,
    },
    /// Resize without a PTY.
    #[error("the process has no terminal to resize (start it with `tty`)")]
    NoTty,
    /// TIOCSWINSZ failed.
    #[error("cannot resize the terminal: {0}")]
    Resize(io::Error),
    /// A session thread could not be started.
    #[error("cannot start a thread for the process: {0}")]
    Thread(io::Error),
}

#[derive(Default)]
struct Shared {
    /// The main process has been reaped.
    exited: AtomicBool,
    /// `Exited` has been sent (or the host was gone); the connection is
    /// being closed by the session.
    finished: AtomicBool,
}

/// A running exec.
pub struct Session {
    pid: libc::pid_t,
    stdin: Arc<StdinQueue>,
    pty: Option<Arc<File>>,
    shared: Arc<Shared>,
    finisher: JoinHandle<()>,
}

fn kill_group(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(-pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn spawn_thread<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

impl Session {
    /// Sends `Started`, then streams `process`'s I/O over `out` until it
    /// ends; `on_finish` runs after `Exited` is sent (it closes the
    /// connection). With `timeout`, the process group is killed when it
    /// expires.
    pub fn start<W, F>(
        process: Process,
        out: Arc<FrameWriter<W>>,
        timeout: Option<Duration>,
        on_finish: F,
    ) -> Result<Session, SessionError>
    where
        W: Write + Send + 'static,
        F: FnOnce() + Send + 'static,
    {
        let Process { pid, io, exit } = process;
        let Stdio {
            stdin,
            stdout,
            stderr,
            pty,
        } = io;
        let shared = Arc::new(Shared::default());
        if out
            .send(&GuestMessage::Started { pid: pid as u32 })
            .is_err()
        {
            // The host is gone; the session still runs to reap the process.
            let _ = kill_group(pid, libc::SIGKILL);
        }
        let queue = Arc::new(StdinQueue::default());
        let fail = |e: io::Error| {
            queue.kill();
            let _ = kill_group(pid, libc::SIGKILL);
            SessionError::Thread(e)
        };

        let tty = pty.is_some();
        let q = Arc::clone(&queue);
        spawn_thread("exec-stdin", move || stdin_writer(&stdin, &q, tty)).map_err(fail)?;

        let mut pumps = Vec::new();
        for (file, is_stderr) in [(Some(stdout), false), (stderr, true)] {
            let Some(file) = file else { continue };
            let (out, shared) = (Arc::clone(&out), Arc::clone(&shared));
            let name = if is_stderr {
                "exec-stderr"
            } else {
                "exec-stdout"
            };
            let handle = spawn_thread(name, move || pump(&file, is_stderr, &out, &shared, pid))
                .map_err(fail)?;
            pumps.push(handle);
        }

        let (q, s) = (Arc::clone(&queue), Arc::clone(&shared));
        let finisher = spawn_thread("exec-finish", move || {
            let status = wait_exit(&exit, pid, timeout);
            s.exited.store(true, Ordering::Release);
            q.kill();
            for p in pumps {
                let _ = p.join();
            }
            let _ = out.send(&GuestMessage::Exited(status));
            s.finished.store(true, Ordering::Release);
            on_finish();
        })
        .map_err(fail)?;

        Ok(Session {
            pid,
            stdin: queue,
            pty,
            shared,
            finisher,
        })
    }

    /// The process's pid (and process group id).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Queues bytes for the process's stdin; blocks only while more than
    /// the queue limit is waiting.
    pub fn write_stdin(&self, data: Vec<u8>) {
        self.stdin.push(data);
    }

    /// EOF on stdin once the queued bytes are written (with a PTY: the
    /// terminal's EOF character, which ends input at the start of a line).
    pub fn close_stdin(&self) {
        self.stdin.close();
    }

    /// Sends `signal` to the process group (a no-op once the process ended).
    pub fn signal(&self, signal: i32) -> Result<(), SessionError> {
        if !(1..=MAX_SIGNAL).contains(&signal) {
            return Err(SessionError::BadSignal(signal));
        }
        if self.shared.exited.load(Ordering::Acquire) {
            return Ok(());
        }
        match kill_group(self.pid, signal) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(SessionError::Signal {
                signal,
                pid: self.pid,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Resizes the PTY.
    pub fn resize(&self, size: TtySize) -> Result<(), SessionError> {
        let pty = self.pty.as_ref().ok_or(SessionError::NoTty)?;
        pty::resize(&**pty, size).map_err(SessionError::Resize)
    }

    /// True once `Exited` went out and the session is closing the connection.
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// The host went away: kill the process group (nobody will read its
    /// output or send its input).
    pub fn abandon(&self) {
        if !self.shared.exited.load(Ordering::Acquire) {
            let _ = kill_group(self.pid, libc::SIGKILL);
        }
        self.stdin.kill();
    }

    /// Waits until the session is over (process reaped, output drained,
    /// `Exited` sent or the host gone).
    pub fn wait(self) {
        let _ = self.finisher.join();
    }
}

/// Waits for the exit status, killing the group when `timeout` expires.
fn wait_exit(
    exit: &Receiver<WaitStatus>,
    pid: libc::pid_t,
    timeout: Option<Duration>,
) -> ExitStatus {
    if let Some(timeout) = timeout {
        match exit.recv_timeout(timeout) {
            Ok(status) => return status.exit_status(),
            Err(RecvTimeoutError::Timeout) => {
                let _ = kill_group(pid, libc::SIGKILL);
                let _ = exit.recv();
                return ExitStatus::TimedOut;
            }
            Err(RecvTimeoutError::Disconnected) => {}
        }
    }
    // Disconnected only if the reaper dropped the child, which it does not
    // for a live session; report an unknown end rather than hang.
    exit.recv()
        .map_or(ExitStatus::Code(-1), WaitStatus::exit_status)
}

/// Waits until `fd` is ready for `events` or `timeout` passes; true if
/// ready (or interrupted: the caller retries its read or write anyway).
fn poll_fd(fd: &impl AsRawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd we own.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            }
        }
    }
}

/// Forwards one output stream to the host until drained.
fn pump<W: Write>(
    file: &File,
    is_stderr: bool,
    out: &FrameWriter<W>,
    shared: &Shared,
    pid: libc::pid_t,
) {
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    let mut exited_at = None;
    loop {
        let exited = shared.exited.load(Ordering::Acquire);
        if exited && exited_at.get_or_insert_with(Instant::now).elapsed() > DRAIN_LIMIT {
            return;
        }
        match poll_fd(file, libc::POLLIN, if exited { LINGER } else { TICK }) {
            Ok(true) => {}
            // Quiet after the exit: only leftover background processes
            // still hold the stream.
            Ok(false) if exited => return,
            Ok(false) => continue,
            Err(_) => return,
        }
        let n = match (&*file).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            // EIO: every holder of the PTY's slave side is gone.
            Err(_) => return,
        };
        let chunk = buf[..n].to_vec();
        let message = if is_stderr {
            GuestMessage::Stderr(chunk)
        } else {
            GuestMessage::Stdout(chunk)
        };
        if out.send(&message).is_err() {
            // The host is gone: nobody will read the rest.
            let _ = kill_group(pid, libc::SIGKILL);
            return;
        }
    }
}

/// Stdin chunks waiting for the process.
#[derive(Default)]
struct StdinQueue {
    state: Mutex<StdinState>,
    changed: Condvar,
}

#[derive(Default)]
struct StdinState {
    chunks: VecDeque<Vec<u8>>,
    queued: usize,
    /// The host sent CloseStdin.
    closed: bool,
    /// The process ended or stopped reading for good: drop everything.
    dead: bool,
}

enum Next {
    Chunk(Vec<u8>),
    Closed,
    Dead,
}

impl StdinQueue {
    fn lock(&self) -> MutexGuard<'_, StdinState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, StdinState>) -> MutexGuard<'a, StdinState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut s = self.lock();
        while s.queued >= STDIN_QUEUE_LIMIT && !s.dead {
            s = self.wait(s);
        }
        if s.dead || s.closed {
            return;
        }
        s.queued += data.len();
        s.chunks.push_back(data);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn kill(&self) {
        let mut s = self.lock();
        s.dead = true;
        s.chunks.clear();
        s.queued = 0;
        self.changed.notify_all();
    }

    fn is_dead(&self) -> bool {
        self.lock().dead
    }

    fn next(&self) -> Next {
        let mut s = self.lock();
        loop {
            if s.dead {
                return Next::Dead;
            }
            if let Some(chunk) = s.chunks.pop_front() {
                s.queued -= chunk.len();
                self.changed.notify_all();
                return Next::Chunk(chunk);
            }
            if s.closed {
                return Next::Closed;
            }
            s = self.wait(s);
        }
    }
}

/// Writes all of `data` to the non-blocking `file`, giving up once the
/// queue is dead (the process ended without reading it).
fn write_all(file: &File, mut data: &[u8], queue: &StdinQueue) -> io::Result<()> {
    while !data.is_empty() {
        match (&*file).write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if queue.is_dead() {
                    return Err(io::Error::other("the process ended"));
                }
                poll_fd(file, libc::POLLOUT, TICK)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Feeds the process's stdin from `queue`. For pipes, returning drops the
/// last reference to the write end, which is the EOF.
fn stdin_writer(file: &File, queue: &StdinQueue, tty: bool) {
    loop {
        match queue.next() {
            Next::Chunk(chunk) => {
                if write_all(file, &chunk, queue).is_err() {
                    // EPIPE: nobody reads stdin any more.
                    queue.kill();
                    return;
                }
            }
            Next::Closed => {
                if tty {
                    let _ = write_all(file, &[pty::eof_char(file)], queue);
                }
                return;
            }
            Next::Dead => return,
        }
    }
}
