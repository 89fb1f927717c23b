//! The runtime control protocol: how other processes ask a sandbox's runtime for its status,
//! a graceful stop or a kill, over `<state>/control.sock`.
//!
//! Framing is `msbvm_protocol`'s (length-prefixed postcard). A connection opens with a hello
//! in each direction carrying [`CONTROL_VERSION`]; then each [`ControlRequest`] gets exactly one
//! [`ControlResponse`]. `Stop` and `Kill` are answered once the VM has ended.

pub mod server;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::framing::{write_async, AsyncFrameReader, FrameError};
use crate::state::Status;
use crate::vsock::SocketPath;

/// Version of the control protocol; the SDK and the runtime come from one `msbvm`, but a
/// user can upgrade the binary while a detached sandbox runs.
pub const CONTROL_VERSION: u32 = 2;

/// A request to the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// First message on a connection.
    Hello {
        /// [`CONTROL_VERSION`].
        version: u32,
    },
    /// Report the sandbox's state.
    Status,
    /// Ask the guest to shut down; force the VM off after `timeout_ms`.
    Stop {
        /// Grace period in milliseconds.
        timeout_ms: u64,
    },
    /// Force the VM off now.
    Kill,
    /// Replace the network policy; new flows use it at once and open flows it denies end.
    SetNetPolicy {
        /// Allow what no rule matches.
        default_allow: bool,
        /// Rules in order.
        rules: Vec<crate::spec::NetRule>,
    },
    /// Publish a guest TCP port on the host now.
    Publish(crate::spec::PortSpec),
    /// The network stack's counters, as JSON.
    NetStats,
    /// Debugging: write all guest RAM to a new file (mode 0600) in the sandbox's state
    /// directory, [`crate::paths::MEMORY_DUMP_FILE`]; the client moves it where it wants.
    DumpMemory,
    /// Stream guest events whose type matches one of `types` (all when empty): first those
    /// kept while nobody listened, then (with `follow`) live ones until the sandbox ends.
    /// Answered by [`ControlResponse::Event`]s and, without `follow`, a final
    /// [`ControlResponse::Done`]. The connection carries nothing else afterwards.
    Events {
        /// Type patterns (`t`, `prefix.*`, `*`).
        types: Vec<String>,
        /// Keep streaming live events.
        follow: bool,
    },
    /// Send an event to guest programs; answered [`ControlResponse::Done`] once the agent's
    /// connection took it.
    Emit(msbvm_protocol::events::HostEvent),
    /// Send an event (whose `id` is set) and wait up to `timeout_ms` for the guest event
    /// whose `reply_to` names it; answered [`ControlResponse::Event`].
    Request {
        /// The event.
        event: msbvm_protocol::events::HostEvent,
        /// How long to wait for the reply.
        timeout_ms: u64,
    },
    /// Make a sandbox that another sandbox spawned the host's own: its record no longer
    /// names a parent, so it outlives its parent and the parent can no longer reach it.
    /// Answered [`ControlResponse::Done`], or an error when it has no parent.
    Detach,
    /// Pause the sandbox, write a snapshot of it named `name` into
    /// [`crate::snapshots::PENDING_DIR`] of its state directory and resume it; answered
    /// [`ControlResponse::Snapshotted`]. The client moves the snapshot into place.
    Snapshot {
        /// The snapshot's name (recorded in it).
        name: String,
    },
}

/// The runtime's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Answer to the hello.
    Hello {
        /// The runtime's [`CONTROL_VERSION`].
        version: u32,
    },
    /// Answer to `Status`.
    Status(RuntimeStatus),
    /// Answer to `Stop` and `Kill`: the VM has ended, this way.
    Stopped {
        /// How the VM ended, in words.
        exit: String,
    },
    /// The request was carried out.
    Done,
    /// Answer to `Publish`: where the host listens.
    Published {
        /// The bound host address.
        host: std::net::SocketAddr,
    },
    /// Answer to `NetStats`.
    NetStats {
        /// The counters, as JSON.
        json: String,
    },
    /// The request could not be served.
    Error {
        /// Why.
        message: String,
    },
    /// Answer to `DumpMemory`: the file in the state directory and its size.
    MemoryDumped {
        /// Bytes of guest RAM written.
        bytes: u64,
    },
    /// One guest event (of an `Events` stream, or the reply to a `Request`).
    Event(msbvm_protocol::events::GuestEvent),
    /// Answer to `Request` when no guest program answered in time.
    NoAnswer {
        /// The request's id.
        id: String,
        /// How long the runtime waited, in milliseconds.
        waited_ms: u64,
    },
    /// Answer to `Snapshot`: it is in [`crate::snapshots::PENDING_DIR`].
    Snapshotted {
        /// How long the guest was paused, in microseconds.
        paused_us: u64,
    },
}

/// What the runtime reports about its sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    /// Lifecycle state.
    pub status: Status,
    /// The runtime's pid.
    pub pid: u32,
    /// Milliseconds since the runtime started.
    pub uptime_ms: u64,
}

/// A connection to a runtime's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: AsyncFrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// The runtime went away mid-conversation.
fn closed() -> Error {
    Error::Runtime {
        message: "the runtime closed the control connection".into(),
        log_tail: String::new(),
    }
}

fn frame_error(e: FrameError) -> Error {
    match e {
        FrameError::Io(e) if crate::agent::is_disconnect(&e) => closed(),
        FrameError::Truncated { .. } => closed(),
        FrameError::Io(e) => Error::io("talking to the sandbox runtime")(e),
        FrameError::Codec(e) => Error::Protocol {
            peer: "the sandbox runtime",
            detail: e.to_string(),
        },
    }
}

impl ControlClient {
    /// Connects to the control socket at `path` and exchanges hellos.
    pub async fn connect(path: &Path) -> Result<ControlClient> {
        let addr = SocketPath::new(path).map_err(Error::io(format!(
            "connecting to the sandbox runtime at {}",
            path.display()
        )))?;
        let stream = UnixStream::connect(addr.path())
            .await
            .map_err(Error::io(format!(
                "connecting to the sandbox runtime at {}",
                path.display()
            )))?;
        let (read, writer) = stream.into_split();
        let mut client = ControlClient {
            reader: AsyncFrameReader::new(read),
            writer,
        };
        match client
            .call_with_timeout(
                &ControlRequest::Hello {
                    version: CONTROL_VERSION,
                },
                Duration::from_secs(10),
            )
            .await?
        {
            ControlResponse::Hello { version } if version == CONTROL_VERSION => Ok(client),
            ControlResponse::Hello { version } => Err(Error::ProtocolMismatch {
                ours: CONTROL_VERSION,
                theirs: version,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` and waits for its answer (however long that takes).
    pub async fn call(&mut self, request: &ControlRequest) -> Result<ControlResponse> {
        write_async(&mut self.writer, request)
            .await
            .map_err(frame_error)?;
        match self.reader.read_message().await.map_err(frame_error)? {
            Some(ControlResponse::Error { message }) => Err(Error::Runtime {
                message,
                log_tail: String::new(),
            }),
            Some(response) => Ok(response),
            None => Err(closed()),
        }
    }

    /// [`ControlClient::call`] that gives up after `timeout`.
    pub async fn call_with_timeout(
        &mut self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse> {
        tokio::time::timeout(timeout, self.call(request))
            .await
            .map_err(|_| Error::Runtime {
                message: format!(
                    "the sandbox runtime did not answer within {}s",
                    timeout.as_secs_f64()
                ),
                log_tail: String::new(),
            })?
    }

    /// The runtime's status.
    pub async fn status(&mut self) -> Result<RuntimeStatus> {
        match self
            .call_with_timeout(&ControlRequest::Status, Duration::from_secs(10))
            .await?
        {
            ControlResponse::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Asks for a graceful stop with `timeout` before the VM is forced off; returns how the
    /// VM ended.
    pub async fn stop(&mut self, timeout: Duration) -> Result<String> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // The runtime forces the VM off at the deadline; allow for that plus the teardown.
        let wait = timeout.saturating_add(Duration::from_secs(15));
        match self
            .call_with_timeout(&ControlRequest::Stop { timeout_ms }, wait)
            .await?
        {
            ControlResponse::Stopped { exit } => Ok(exit),
            other => Err(unexpected(other)),
        }
    }

    /// Forces the VM off; returns how it ended.
    pub async fn kill(&mut self) -> Result<String> {
        match self
            .call_with_timeout(&ControlRequest::Kill, Duration::from_secs(15))
            .await?
        {
            ControlResponse::Stopped { exit } => Ok(exit),
            other => Err(unexpected(other)),
        }
    }
}

impl ControlClient {
    /// Asks the runtime for a snapshot named `name` in its state directory's
    /// [`crate::snapshots::PENDING_DIR`]; returns how long the guest was paused.
    pub async fn snapshot(&mut self, name: &str) -> Result<Duration> {
        let request = ControlRequest::Snapshot { name: name.into() };
        match self
            .call_with_timeout(&request, Duration::from_secs(600))
            .await?
        {
            ControlResponse::Snapshotted { paused_us } => Ok(Duration::from_micros(paused_us)),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the runtime to write all guest RAM to [`crate::paths::MEMORY_DUMP_FILE`] in the
    /// state directory; returns its size.
    pub async fn dump_memory(&mut self) -> Result<u64> {
        match self
            .call_with_timeout(&ControlRequest::DumpMemory, Duration::from_secs(600))
            .await?
        {
            ControlResponse::MemoryDumped { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the sandbox's network policy.
    pub async fn set_net_policy(
        &mut self,
        default_allow: bool,
        rules: Vec<crate::spec::NetRule>,
    ) -> Result<()> {
        let request = ControlRequest::SetNetPolicy {
            default_allow,
            rules,
        };
        match self
            .call_with_timeout(&request, Duration::from_secs(10))
            .await?
        {
            ControlResponse::Done => Ok(()),
            ControlResponse::Error { message } => Err(Error::InvalidConfig(message)),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes a guest port on the host; returns the bound address.
    pub async fn publish(&mut self, port: crate::spec::PortSpec) -> Result<std::net::SocketAddr> {
        match self
            .call_with_timeout(&ControlRequest::Publish(port), Duration::from_secs(10))
            .await?
        {
            ControlResponse::Published { host } => Ok(host),
            ControlResponse::Error { message } => Err(Error::InvalidConfig(message)),
            other => Err(unexpected(other)),
        }
    }

    /// Detaches a spawned sandbox from its parent ([`ControlRequest::Detach`]).
    pub async fn detach(&mut self) -> Result<()> {
        match self
            .call_with_timeout(&ControlRequest::Detach, Duration::from_secs(10))
            .await?
        {
            ControlResponse::Done => Ok(()),
            ControlResponse::Error { message } => Err(Error::InvalidConfig(message)),
            other => Err(unexpected(other)),
        }
    }

    /// The network stack's counters, as JSON.
    pub async fn net_stats(&mut self) -> Result<String> {
        match self
            .call_with_timeout(&ControlRequest::NetStats, Duration::from_secs(10))
            .await?
        {
            ControlResponse::NetStats { json } => Ok(json),
            ControlResponse::Error { message } => Err(Error::InvalidConfig(message)),
            other => Err(unexpected(other)),
        }
    }
}

impl ControlClient {
    /// Sends an event to guest programs.
    pub async fn emit(&mut self, event: msbvm_protocol::events::HostEvent) -> Result<()> {
        match self
            .call_with_timeout(&ControlRequest::Emit(event), Duration::from_secs(15))
            .await?
        {
            ControlResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends an event and waits up to `timeout` for the guest's reply.
    pub async fn request(
        &mut self,
        event: msbvm_protocol::events::HostEvent,
        timeout: Duration,
    ) -> Result<msbvm_protocol::events::GuestEvent> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let request = ControlRequest::Request { event, timeout_ms };
        match self
            .call_with_timeout(&request, timeout.saturating_add(Duration::from_secs(15)))
            .await?
        {
            ControlResponse::Event(e) => Ok(e),
            ControlResponse::NoAnswer { id, waited_ms } => Err(Error::AgentTimeout {
                waiting_for: format!(
                    "a guest program's answer to event {id:?} for {:.1} s (a guest answers \
                     with an event whose \"reply_to\" is that id)",
                    waited_ms as f64 / 1000.0
                ),
                limit: "the request's timeout",
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Starts an event stream on this connection (see [`ControlRequest::Events`]); read it
    /// with [`ControlClient::next_event`].
    pub async fn start_events(&mut self, types: Vec<String>, follow: bool) -> Result<()> {
        write_async(&mut self.writer, &ControlRequest::Events { types, follow })
            .await
            .map_err(frame_error)
    }

    /// The next event of the stream; `None` at its end (all kept events read without
    /// `follow`, or the sandbox ended).
    pub async fn next_event(&mut self) -> Result<Option<msbvm_protocol::events::GuestEvent>> {
        match self.reader.read_message().await {
            Ok(Some(ControlResponse::Event(e))) => Ok(Some(e)),
            Ok(Some(ControlResponse::Done)) | Ok(None) => Ok(None),
            Ok(Some(ControlResponse::Error { message })) => Err(Error::Runtime {
                message,
                log_tail: String::new(),
            }),
            Ok(Some(other)) => Err(unexpected(other)),
            // The runtime ends a following stream by going away with its sandbox.
            Err(FrameError::Io(e)) if crate::agent::is_disconnect(&e) => Ok(None),
            Err(FrameError::Truncated { .. }) => Ok(None),
            Err(e) => Err(frame_error(e)),
        }
    }
}

fn unexpected(response: ControlResponse) -> Error {
    Error::Protocol {
        peer: "the sandbox runtime",
        detail: format!("unexpected answer {response:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{write_blocking, FrameReader};
    use tempfile::TempDir;

    /// A fake runtime answering with blocking I/O, as the real one does.
    fn fake_runtime(path: &Path, version: u32) -> std::thread::JoinHandle<Vec<ControlRequest>> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = FrameReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = Vec::new();
            while let Some(request) = reader.read_message::<ControlRequest>().unwrap() {
                let response = match &request {
                    ControlRequest::Hello { .. } => ControlResponse::Hello { version },
                    ControlRequest::Status => ControlResponse::Status(RuntimeStatus {
                        status: Status::Running,
                        pid: 9,
                        uptime_ms: 5,
                    }),
                    ControlRequest::Stop { .. } => ControlResponse::Stopped {
                        exit: "poweroff".into(),
                    },
                    ControlRequest::Kill => ControlResponse::Error {
                        message: "busy".into(),
                    },
                    ControlRequest::SetNetPolicy { .. } => ControlResponse::Done,
                    ControlRequest::Publish(_) => ControlResponse::Published {
                        host: "127.0.0.1:1".parse().unwrap(),
                    },
                    ControlRequest::NetStats => ControlResponse::NetStats { json: "{}".into() },
                    ControlRequest::DumpMemory => ControlResponse::MemoryDumped { bytes: 4096 },
                    ControlRequest::Detach => ControlResponse::Done,
                    ControlRequest::Snapshot { .. } => {
                        ControlResponse::Snapshotted { paused_us: 1500 }
                    }
                    ControlRequest::Request { ref event, .. } => ControlResponse::NoAnswer {
                        id: event.id.clone().unwrap_or_default(),
                        waited_ms: 250,
                    },
                    ControlRequest::Events { .. } | ControlRequest::Emit(_) => {
                        ControlResponse::Done
                    }
                };
                seen.push(request);
                write_blocking(&mut writer, &response).unwrap();
            }
            seen
        })
    }

    #[tokio::test]
    async fn requests_and_answers_roundtrip() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("control.sock");
        let fake = fake_runtime(&path, CONTROL_VERSION);
        let mut client = ControlClient::connect(&path).await.unwrap();
        let status = client.status().await.unwrap();
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.pid, 9);
        assert_eq!(
            client.stop(Duration::from_millis(1500)).await.unwrap(),
            "poweroff"
        );
        let e = client.kill().await.unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        assert_eq!(client.dump_memory().await.unwrap(), 4096);
        assert_eq!(
            client.snapshot("snap").await.unwrap(),
            Duration::from_micros(1500)
        );
        let ask = msbvm_protocol::events::HostEvent {
            kind: "ask".into(),
            data: "null".into(),
            id: Some("r9".into()),
            reply_to: None,
            target: msbvm_protocol::events::Target::Subscribers,
        };
        let e = client
            .request(ask.clone(), Duration::from_millis(250))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "AgentTimeout", "{e}");
        assert!(e.to_string().contains(r#"event "r9" for 0.2 s"#), "{e}");
        drop(client);
        assert_eq!(
            fake.join().unwrap(),
            [
                ControlRequest::Hello {
                    version: CONTROL_VERSION
                },
                ControlRequest::Status,
                ControlRequest::Stop { timeout_ms: 1500 },
                ControlRequest::Kill,
                ControlRequest::DumpMemory,
                ControlRequest::Snapshot {
                    name: "snap".into()
                },
                ControlRequest::Request {
                    event: ask,
                    timeout_ms: 250
                },
            ]
        );
    }

    #[tokio::test]
    async fn version_mismatch_is_typed() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("control.sock");
        let fake = fake_runtime(&path, 77);
        let e = ControlClient::connect(&path).await.unwrap_err();
        assert!(
            matches!(e, Error::ProtocolMismatch { theirs: 77, .. }),
            "{e}"
        );
        fake.join().unwrap();
    }
}
