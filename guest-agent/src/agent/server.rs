//! One host connection: hello, then control requests or one exec.
//!
//! The handler is generic over [`Stream`] so tests drive it over Unix socket
//! pairs with real processes, exactly as the agent runs it over vsock.
//!
//! Flow: the first message must be `Hello` with our protocol version
//! (otherwise `Error` and close). After it: `Ping` → `Pong`;
//! `Shutdown{code}` → the shutdown handler; `Identity` → the identity
//! handler, then `IdentityTaken` or `Error`; `Exec` → `Started`, output,
//! `Exited`, then the connection closes (one exec per connection). A frame
//! that does not decode gets `Error` and the connection goes on; a frame
//! over the size limit gets `Error` and the connection closes (the stream
//! cannot be resynchronised). A connection that ends inside a frame ends
//! with [`ConnectionError::Frame`] (logged), one that ends between frames
//! quietly. If the host goes away mid-exec, the process group is killed.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::framing::{FrameError, FrameReader, FrameWriter};
use msbvm_protocol::{
    check_version, Error as ProtocolError, ExecRequest, ForkIdentity, GuestMessage, HostMessage,
    PROTOCOL_VERSION,
};

use super::connection::{ConnectionError, Stream};
use super::exec;
use super::files;
use super::guest_events::execs::ExecRegistry;
use super::reaper::Reaper;
use super::session::{Session, SessionError};

/// The answer to an event sent on a request connection.
const EVENTS_ELSEWHERE: &str =
    "events for guest programs go on the agent's events connection, not on a request connection";

/// What a host's `Shutdown{code}` does (power off, in the real agent).
pub type ShutdownHandler = Arc<dyn Fn(u32) + Send + Sync>;

/// Why an exec could not start; told to the host, which may try again.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] exec::SpawnError),
    /// The connection could not be shared with the session.
    #[error("cannot start the session: {0}")]
    Connection(io::Error),
    /// The session's threads could not start.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// What a host's `Identity` does (takes a fork's identity, in the real agent).
pub type IdentityHandler = Arc<dyn Fn(&ForkIdentity) -> io::Result<()> + Send + Sync>;

/// Serves connections; shared by all connection threads.
pub struct Server {
    reaper: &'static Reaper,
    on_shutdown: ShutdownHandler,
    on_identity: IdentityHandler,
}

fn error(message: impl Into<String>) -> GuestMessage {
    GuestMessage::Error {
        message: message.into(),
    }
}

/// The next frame; a frame over the size limit is answered with `Error`
/// before the connection closes. A malformed frame is a recoverable
/// [`FrameError`] for [`malformed`] to answer.
fn next<S: Stream>(
    input: &mut FrameReader<S>,
    out: &FrameWriter<S>,
) -> Result<Option<HostMessage>, FrameError> {
    let result = input.read_message::<HostMessage>();
    if let Err(FrameError::Codec(e @ ProtocolError::FrameTooLarge(_))) = &result {
        let _ = out.send(&error(format!("{e}; closing the connection")));
    }
    result
}

/// Sends `Error` for a frame the handler could not use.
fn malformed(out: &FrameWriter<impl Write>, why: &FrameError) -> Result<(), FrameError> {
    out.send(&error(format!("cannot decode the message: {why}")))
}

impl Server {
    /// A server whose children `reaper` reaps and whose `Shutdown` requests
    /// go to `on_shutdown`.
    pub fn new(reaper: &'static Reaper, on_shutdown: ShutdownHandler) -> Self {
        Self {
            reaper,
            on_shutdown,
            on_identity: Arc::new(|_| {
                Err(io::Error::other("this agent does not take fork identities"))
            }),
        }
    }

    /// Sends the host's `Identity` requests to `handler`.
    pub fn on_identity(mut self, handler: IdentityHandler) -> Self {
        self.on_identity = handler;
        self
    }

    /// Serves one connection until it ends.
    pub fn serve<S: Stream>(&self, stream: S) -> Result<(), ConnectionError> {
        let out = Arc::new(FrameWriter::new(stream.try_clone()?));
        let closer = stream.try_clone()?;
        let mut input = FrameReader::new(stream);
        self.converse(&mut input, &out, closer)
    }

    fn converse<S: Stream>(
        &self,
        input: &mut FrameReader<S>,
        out: &Arc<FrameWriter<S>>,
        closer: S,
    ) -> Result<(), ConnectionError> {
        // Hello first.
        loop {
            match next(input, out) {
                Err(e) if e.is_recoverable() => malformed(out, &e)?,
                Err(e) => return Err(e.into()),
                Ok(None) => return Ok(()),
                Ok(Some(HostMessage::Hello { version })) => {
                    if let Err(e) = check_version(version) {
                        out.send(&error(e.to_string()))?;
                        return Err(e.into());
                    }
                    out.send(&GuestMessage::Hello {
                        version: PROTOCOL_VERSION,
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    })?;
                    break;
                }
                Ok(Some(_)) => {
                    out.send(&error("the first message must be Hello"))?;
                    return Err(ConnectionError::NoHello);
                }
            }
        }
        loop {
            let message = match next(input, out) {
                Err(e) if e.is_recoverable() => {
                    malformed(out, &e)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(None) => return Ok(()),
                Ok(Some(m)) => m,
            };
            match message {
                HostMessage::Ping => out.send(&GuestMessage::Pong)?,
                HostMessage::Shutdown { code } => (self.on_shutdown)(code),
                HostMessage::Exec(req) => match self.start(&req, out, &closer) {
                    Ok(session) => return self.run_session(session, input, out),
                    Err(e) => out.send(&error(e.to_string()))?,
                },
                HostMessage::Hello { .. } => out.send(&error("Hello was already received"))?,
                HostMessage::File(request) => return files::serve(request, input, out),
                HostMessage::FileChunk(_) | HostMessage::FileEnd => {
                    out.send(&error("no file upload is under way on this connection"))?
                }
                HostMessage::Event(_) => out.send(&error(EVENTS_ELSEWHERE))?,
                HostMessage::Identity(identity) => match (self.on_identity)(&identity) {
                    Ok(()) => out.send(&GuestMessage::IdentityTaken)?,
                    Err(e) => out.send(&error(format!("taking the fork's identity: {e}")))?,
                },
                HostMessage::Stdin(_)
                | HostMessage::CloseStdin
                | HostMessage::Signal(_)
                | HostMessage::Resize(_) => {
                    out.send(&error("no process is running on this connection"))?
                }
            }
        }
    }

    /// Starts the process; the error's text is the answer to the host.
    fn start<S: Stream>(
        &self,
        req: &ExecRequest,
        out: &Arc<FrameWriter<S>>,
        closer: &S,
    ) -> Result<Session, StartError> {
        let process = exec::spawn(req, self.reaper)?;
        let pid = process.pid;
        // Registered at once: the program may open the events socket before
        // the session is set up, and its events must name their exec.
        ExecRegistry::global().add(pid as u32);
        let closer = closer.try_clone().map_err(|e| {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            ExecRegistry::global().remove(pid as u32);
            StartError::Connection(e)
        })?;
        let timeout = req.timeout_ms.map(Duration::from_millis);
        let session = Session::start(process, Arc::clone(out), timeout, move || {
            // Exited was the last message: close, which also wakes the
            // connection thread blocked reading.
            let _ = closer.shutdown();
        })
        .inspect_err(|_| ExecRegistry::global().remove(pid as u32))?;
        Ok(session)
    }

    /// Relays the host's messages to a running session until it ends.
    fn run_session<S: Stream>(
        &self,
        session: Session,
        input: &mut FrameReader<S>,
        out: &Arc<FrameWriter<S>>,
    ) -> Result<(), ConnectionError> {
        let result = loop {
            let message = match next(input, out) {
                Ok(Some(m)) => m,
                Err(e) if e.is_recoverable() => match malformed(out, &e) {
                    Ok(()) => continue,
                    Err(e) => break Err(e.into()),
                },
                // EOF: the session closed the connection after Exited, or
                // the host went away.
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            };
            let reply = match message {
                HostMessage::Stdin(data) => {
                    session.write_stdin(data);
                    None
                }
                HostMessage::CloseStdin => {
                    session.close_stdin();
                    None
                }
                HostMessage::Signal(n) => session.signal(n).err().map(|e| error(e.to_string())),
                HostMessage::Resize(size) => {
                    session.resize(size).err().map(|e| error(e.to_string()))
                }
                HostMessage::Ping => Some(GuestMessage::Pong),
                HostMessage::Shutdown { code } => {
                    (self.on_shutdown)(code);
                    None
                }
                HostMessage::Exec(_) => Some(error(format!(
                    "process {} is already running on this connection; open another connection",
                    session.pid()
                ))),
                HostMessage::Hello { .. } => Some(error("Hello was already received")),
                HostMessage::File(_) | HostMessage::FileChunk(_) | HostMessage::FileEnd => Some(
                    error("a process runs on this connection; open another for file operations"),
                ),
                HostMessage::Event(_) => Some(error(EVENTS_ELSEWHERE)),
                HostMessage::Identity(_) => Some(error(
                    "a process runs on this connection; open another to send an identity",
                )),
            };
            if let Some(reply) = reply {
                if let Err(e) = out.send(&reply) {
                    break Err(e.into());
                }
            }
        };
        let pid = session.pid() as u32;
        let result = if session.is_finished() {
            // Whatever failed, failed because the session closed the
            // connection after Exited: not an error.
            session.wait();
            Ok(())
        } else {
            session.abandon();
            session.wait();
            result
        };
        ExecRegistry::global().remove(pid);
        result
    }
}
