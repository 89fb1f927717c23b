//! Running processes in a sandbox: one agent connection per process.
//!
//! [`ExecStream`] is the streaming form: events (started, output, exit) come out of
//! [`ExecStream::next_event`], while an [`ExecControl`] (cloneable, usable from another task)
//! feeds stdin, sends signals and resizes the terminal. [`ExecStream::collect`] gathers
//! everything into an [`ExecOutput`].
//!
//! Timeouts are enforced by the agent (it kills the process group and reports
//! [`ExitStatus::TimedOut`]); the SDK keeps a backstop a little later, so a wedged guest cannot
//! hang the caller.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::{ExecRequest, GuestMessage, HostMessage, TtySize, MAX_CHUNK_LEN};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use msbvm_protocol::ExitStatus;

pub use crate::agent::describe;
use crate::agent::{self, frame_error};
use crate::error::{Error, Result};
use crate::framing::{write_async, AsyncFrameReader};
use crate::limits::{bounded, AgentLimits};

/// Most messages that do not belong on an exec connection (or do not decode) the SDK
/// skips before it gives up on the agent: a hostile agent cannot keep a caller busy with
/// garbage.
pub const MAX_IGNORED_MESSAGES: u32 = 16;

/// How long after its timeout the SDK gives up on hearing the agent report the kill.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// `PATH` every exec gets unless the sandbox or the call sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to run a process in the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Program and arguments; the program is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment added to the sandbox's (a key given here wins).
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User id (default 0).
    pub uid: Option<u32>,
    /// Group id (default: the user's).
    pub gid: Option<u32>,
    /// Run on a terminal of this size (stdout and stderr then arrive merged as stdout).
    pub tty: Option<TtySize>,
    /// Kill the process after this long; it then ends with [`ExitStatus::TimedOut`].
    pub timeout: Option<Duration>,
}

impl ExecOptions {
    /// Options to run `argv` with everything else defaulted.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecOptions {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Sets the user id.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }
    /// Sets the group id.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }
    /// Runs the process on a terminal of `rows` x `cols`.
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(TtySize { rows, cols });
        self
    }
    /// Sets a timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The agent request, with the environment built on `base` (the sandbox's).
    pub(crate) fn to_request(&self, base: &[(String, String)]) -> Result<ExecRequest> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::InvalidConfig("no command given to run".into()));
        }
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), "/root".into()),
        ];
        if self.tty.is_some() {
            env.push(("TERM".into(), "xterm".into()));
        }
        merge_env(&mut env, base);
        merge_env(&mut env, &self.env);
        Ok(ExecRequest {
            argv: self.argv.clone(),
            env,
            cwd: self.cwd.clone(),
            uid: self.uid,
            gid: self.gid,
            tty: self.tty,
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        })
    }
}

/// Sets each of `overrides` in `env`, replacing an existing key in place.
pub fn merge_env(env: &mut Vec<(String, String)>, overrides: &[(String, String)]) {
    for (k, v) in overrides {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
}

/// What a finished process left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to stdout (and stderr, on a terminal).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

impl ExecOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The status as a shell would report it (see [`shell_exit_code`]).
    pub fn exit_code(&self) -> i32 {
        shell_exit_code(self.status)
    }
}

/// A process status as a shell reports it: the code; 128 + the signal; 124 for a timeout
/// (as `timeout(1)` does).
pub fn shell_exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
        ExitStatus::TimedOut => 124,
    }
}

/// Something that happened to a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// It started with this pid (always the first event).
    Started {
        /// Pid in the guest.
        pid: u32,
    },
    /// Output on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// It ended (always the last event).
    Exited(ExitStatus),
}

/// Feeds a running process: stdin, signals, terminal size. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ExecControl {
    writer: Arc<Mutex<WriterState>>,
}

#[derive(Debug)]
struct WriterState {
    half: OwnedWriteHalf,
    stdin_closed: bool,
}

impl ExecControl {
    async fn send(&self, state: &mut WriterState, message: &HostMessage) -> Result<()> {
        write_async(&mut state.half, message)
            .await
            .map_err(frame_error)
    }

    /// Writes `data` to the process's stdin (split into protocol-sized chunks).
    ///
    /// This waits while the guest does not take the data (a process that does not read its
    /// stdin holds it back, which a hostile agent can imitate), so no reply timeout applies;
    /// bound it with the exec's [`ExecOptions::timeout`] or the caller's own timeout.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        let mut state = self.writer.lock().await;
        if state.stdin_closed {
            return Err(Error::Io {
                context: "writing to the process's stdin".into(),
                source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin was closed"),
            });
        }
        for chunk in data.chunks(MAX_CHUNK_LEN) {
            self.send(&mut state, &HostMessage::Stdin(chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Closes the process's stdin (it reads end-of-file). Idempotent.
    pub async fn close_stdin(&self) -> Result<()> {
        let mut state = self.writer.lock().await;
        if state.stdin_closed {
            return Ok(());
        }
        state.stdin_closed = true;
        self.send(&mut state, &HostMessage::CloseStdin).await
    }

    /// Sends signal `signal` (e.g. `libc::SIGTERM`) to the process (its process group on a
    /// terminal).
    pub async fn signal(&self, signal: i32) -> Result<()> {
        let mut state = self.writer.lock().await;
        self.send(&mut state, &HostMessage::Signal(signal)).await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let mut state = self.writer.lock().await;
        self.send(&mut state, &HostMessage::Resize(TtySize { rows, cols }))
            .await
    }
}

/// A running process's events, in order.
#[derive(Debug)]
pub struct ExecStream {
    pid: u32,
    reader: AsyncFrameReader<OwnedReadHalf>,
    control: ExecControl,
    started_pending: bool,
    finished: bool,
    deadline: Option<Instant>,
    ignored: u32,
    max_output: u64,
}

/// Counts a skipped message; too many is a protocol error.
fn skip(ignored: &mut u32, what: &str) -> Result<()> {
    *ignored += 1;
    tracing::debug!("skipped on an exec connection: {what}");
    if *ignored > MAX_IGNORED_MESSAGES {
        return Err(Error::Protocol {
            peer: "the guest agent",
            detail: format!(
                "more than {MAX_IGNORED_MESSAGES} messages that do not belong on an exec \
                 connection (the last: {what})"
            ),
        });
    }
    Ok(())
}

impl ExecStream {
    /// Starts `request` through the vsock device socket `uds`; returns once the agent reports
    /// the process started (so a program that cannot be run fails here). Connecting and the
    /// start together take at most `limits`' reply timeout after each message sent, and never
    /// past its operation deadline, however many other messages the agent sends meanwhile.
    pub(crate) async fn start(
        uds: &Path,
        request: ExecRequest,
        limits: &AgentLimits,
    ) -> Result<ExecStream> {
        let deadline = request
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms) + TIMEOUT_GRACE);
        let start_deadline = limits.deadline();
        let mut conn = bounded(
            limits.reply_timeout,
            start_deadline,
            "the agent's hello",
            agent::connect(uds, limits),
        )
        .await?;
        let sent = async {
            write_async(&mut conn.writer, &HostMessage::Exec(request))
                .await
                .map_err(frame_error)
        };
        bounded(
            limits.reply_timeout,
            start_deadline,
            "the agent to take the exec",
            sent,
        )
        .await?;
        let mut ignored = 0;
        let reader = &mut conn.reader;
        let started = async {
            loop {
                match reader.read_message::<GuestMessage>().await {
                    Ok(Some(GuestMessage::Started { pid })) => return Ok(pid),
                    Ok(Some(GuestMessage::Error { message })) => return Err(Error::Agent(message)),
                    Ok(Some(GuestMessage::Denied { reason })) => return Err(Error::Denied(reason)),
                    Ok(Some(other)) => skip(&mut ignored, describe(&other))?,
                    Ok(None) => return Err(Error::ConnectionLost),
                    Err(e) if e.is_recoverable() => skip(&mut ignored, &e.to_string())?,
                    Err(e) => return Err(frame_error(e)),
                }
            }
        };
        // One bound for the whole wait: skipped messages do not extend it.
        let what = "the agent to confirm the process start";
        let pid = bounded(limits.reply_timeout, start_deadline, what, started).await?;
        Ok(ExecStream {
            pid,
            reader: conn.reader,
            control: ExecControl {
                writer: Arc::new(Mutex::new(WriterState {
                    half: conn.writer,
                    stdin_closed: false,
                })),
            },
            started_pending: true,
            finished: false,
            deadline,
            ignored,
            max_output: limits.max_exec_output,
        })
    }

    /// The process's pid in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for stdin, signals and resizing, usable while this stream is being read.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// Writes to the process's stdin (see [`ExecControl::write`]).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        self.control.write(data).await
    }

    /// Closes the process's stdin (see [`ExecControl::close_stdin`]).
    pub async fn close_stdin(&self) -> Result<()> {
        self.control.close_stdin().await
    }

    /// Sends a signal to the process (see [`ExecControl::signal`]).
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.control.signal(signal).await
    }

    /// Resizes the process's terminal (see [`ExecControl::resize`]).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.control.resize(rows, cols).await
    }

    /// The next event; `Ok(None)` after [`ExecEvent::Exited`].
    ///
    /// Fails with [`Error::ConnectionLost`] if the connection ends before the exit is
    /// reported, and with [`Error::Agent`] if the agent reports an error mid-stream.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.started_pending {
            self.started_pending = false;
            return Ok(Some(ExecEvent::Started { pid: self.pid }));
        }
        if self.finished {
            return Ok(None);
        }
        loop {
            let read = self.reader.read_message::<GuestMessage>();
            let next = match self.deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                    Ok(next) => next,
                    Err(_) => {
                        // The agent should have killed it and said so; make sure and move on.
                        tracing::warn!(pid = self.pid, "no exit report after the timeout");
                        let _ = self.control.signal(libc::SIGKILL).await;
                        self.finished = true;
                        return Ok(Some(ExecEvent::Exited(ExitStatus::TimedOut)));
                    }
                },
                None => read.await,
            };
            match next {
                Ok(Some(GuestMessage::Stdout(data))) => return Ok(Some(ExecEvent::Stdout(data))),
                Ok(Some(GuestMessage::Stderr(data))) => return Ok(Some(ExecEvent::Stderr(data))),
                Ok(Some(GuestMessage::Exited(status))) => {
                    self.finished = true;
                    return Ok(Some(ExecEvent::Exited(status)));
                }
                Ok(Some(GuestMessage::Error { message })) => return Err(Error::Agent(message)),
                Ok(Some(GuestMessage::Denied { reason })) => {
                    self.finished = true;
                    return Err(Error::Denied(reason));
                }
                Ok(Some(other)) => {
                    if let Err(e) = skip(&mut self.ignored, describe(&other)) {
                        self.finished = true;
                        return Err(e);
                    }
                }
                Ok(None) => {
                    self.finished = true;
                    return Err(Error::ConnectionLost);
                }
                Err(e) if e.is_recoverable() => {
                    if let Err(e) = skip(&mut self.ignored, &e.to_string()) {
                        self.finished = true;
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.finished = true;
                    return Err(frame_error(e));
                }
            }
        }
    }

    /// Reads every remaining event and returns the output and exit status.
    ///
    /// More than [`AgentLimits::max_exec_output`] bytes of output (stdout and stderr
    /// together) kills the process and fails with [`Error::LimitExceeded`]; use
    /// [`ExecStream::next_event`] to consume more. Without a timeout
    /// ([`ExecOptions::timeout`]) this waits as long as the process runs.
    pub async fn collect(mut self) -> Result<ExecOutput> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(event) = self.next_event().await? {
            if let ExecEvent::Stdout(d) | ExecEvent::Stderr(d) = &event {
                if (stdout.len() + stderr.len() + d.len()) as u64 > self.max_output {
                    let _ = self.control.signal(libc::SIGKILL).await;
                    return Err(Error::LimitExceeded {
                        what: format!("the output of process {} (killed)", self.pid),
                        limit: self.max_output,
                        setting: "max_exec_output",
                    });
                }
            }
            match event {
                ExecEvent::Started { .. } => {}
                ExecEvent::Stdout(d) => stdout.extend_from_slice(&d),
                ExecEvent::Stderr(d) => stderr.extend_from_slice(&d),
                ExecEvent::Exited(status) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        status,
                    })
                }
            }
        }
        Err(Error::ConnectionLost)
    }
}

#[cfg(test)]
mod tests;
