//! The runtime's end of the control socket: one thread per connection, each request handed
//! to a handler (the runtime's supervisor loop) that answers it.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use crate::control::{ControlRequest, ControlResponse, CONTROL_VERSION};
use crate::framing::{write_blocking, FrameError, FrameReader};

/// Why a control connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The client sent a frame that cannot be read past, or an answer could not be written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handler is gone: the runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

/// How a handler answers one request.
pub enum Answer {
    /// One response.
    One(ControlResponse),
    /// A stream of responses (guest events), written by the function on the connection's
    /// thread; the connection ends with it.
    Stream(Box<dyn FnOnce(&mut Responder<'_>) + Send>),
}

impl From<ControlResponse> for Answer {
    fn from(response: ControlResponse) -> Self {
        Answer::One(response)
    }
}

/// The connection a streaming answer writes to.
pub struct Responder<'a> {
    writer: &'a mut UnixStream,
}

impl Responder<'_> {
    /// Writes one response; `Err` once the client has gone.
    pub fn send(&mut self, response: &ControlResponse) -> Result<(), FrameError> {
        write_blocking(self.writer, response)
    }

    /// True once the client has closed the connection (checked without reading), so an idle
    /// stream notices a client that went away before anything is lost to it.
    pub fn client_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.writer.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd we own; zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// Serves `listener` until the process ends, each connection on its own thread. The
/// listener thread calls `thread_started` first (the runtime confines it there); `handle`
/// answers each request after the hello, `None` meaning the runtime is shutting down.
pub fn spawn<H>(listener: UnixListener, thread_started: fn(), handle: H) -> std::io::Result<()>
where
    H: FnMut(ControlRequest) -> Option<Answer> + Clone + Send + 'static,
{
    std::thread::Builder::new()
        .name("msbvm-control".into())
        .spawn(move || {
            thread_started();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handle = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("msbvm-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, handle) {
                            tracing::debug!("control connection ended: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot serve a control connection: {e}");
                }
            }
        })
        .map(|_| ())
}

/// Serves one connection: hello, then request/answer pairs.
pub fn serve(
    stream: UnixStream,
    mut handle: impl FnMut(ControlRequest) -> Option<Answer>,
) -> Result<(), ServeError> {
    let mut reader = FrameReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut greeted = false;
    loop {
        let request = match reader.read_message::<ControlRequest>() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                let answer = ControlResponse::Error {
                    message: format!("malformed request: {e}"),
                };
                write_blocking(&mut writer, &answer)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let answer = match request {
            ControlRequest::Hello { .. } => {
                // Answer with our version whatever theirs is: the client decides.
                greeted = true;
                ControlResponse::Hello {
                    version: CONTROL_VERSION,
                }
            }
            _ if !greeted => ControlResponse::Error {
                message: "the first request must be a hello".into(),
            },
            request => match handle(request).ok_or(ServeError::ShuttingDown)? {
                Answer::One(response) => response,
                Answer::Stream(stream) => {
                    stream(&mut Responder {
                        writer: &mut writer,
                    });
                    return Ok(());
                }
            },
        };
        write_blocking(&mut writer, &answer)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlClient;
    use crate::control::RuntimeStatus;
    use crate::state::Status;
    use std::sync::mpsc;
    use tempfile::TempDir;

    /// The real server against the real client, with a stand-in supervisor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_forwards_requests_to_the_supervisor() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        spawn(listener, || {}, crate::test_support::forward_to(tx)).unwrap();
        let supervisor = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok((request, reply)) = rx.recv() {
                let answer = match &request {
                    ControlRequest::Status => ControlResponse::Status(RuntimeStatus {
                        status: Status::Running,
                        pid: 1,
                        uptime_ms: 2,
                    }),
                    _ => ControlResponse::Stopped {
                        exit: "the guest powered off".into(),
                    },
                };
                seen.push(request.clone());
                reply.send(answer).unwrap();
                if matches!(request, ControlRequest::Kill) {
                    return seen;
                }
            }
            seen
        });
        let mut client = ControlClient::connect(&path).await.unwrap();
        assert_eq!(client.status().await.unwrap().status, Status::Running);
        assert_eq!(
            client
                .stop(std::time::Duration::from_secs(1))
                .await
                .unwrap(),
            "the guest powered off"
        );
        client.kill().await.unwrap();
        assert_eq!(
            supervisor.join().unwrap(),
            [
                ControlRequest::Status,
                ControlRequest::Stop { timeout_ms: 1000 },
                ControlRequest::Kill
            ]
        );
    }

    #[test]
    fn requests_before_hello_and_malformed_frames_get_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(b, |_| None::<Answer>));
        let mut writer = a.try_clone().unwrap();
        let mut reader = FrameReader::new(a);
        write_blocking(&mut writer, &ControlRequest::Status).unwrap();
        assert!(matches!(
            reader.read_message::<ControlResponse>().unwrap(),
            Some(ControlResponse::Error { .. })
        ));
        use std::io::Write;
        writer.write_all(&[1, 0, 0, 0, 0xff]).unwrap();
        assert!(matches!(
            reader.read_message::<ControlResponse>().unwrap(),
            Some(ControlResponse::Error { .. })
        ));
        drop(writer);
        drop(reader);
        assert!(server.join().unwrap().is_ok());
    }
}
