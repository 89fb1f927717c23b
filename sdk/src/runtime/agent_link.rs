//! The runtime's two dealings with the guest agent: receiving its hello and ready message on
//! host vsock port [`HOST_EVENTS_PORT`] (a Unix listener at `vsock.sock_1025`), and asking it
//! to shut the guest down.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::Duration;

use msbvm_protocol::{GuestMessage, HostMessage, AGENT_PORT, PROTOCOL_VERSION};

use crate::error::{Error, Result};
use crate::exec::describe;
use crate::framing::{write_blocking, FrameReader};

use super::Event;

/// Accepts the agent's events connections until the process ends. The first hello + ready
/// becomes [`Event::AgentReady`]; a version mismatch becomes [`Event::AgentFailed`].
pub fn spawn_events_listener(listener: UnixListener, events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("msbvm-agent-events".into())
        .spawn(move || {
            super::confine::thread_started("agent-events");
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let events = events.clone();
                        let spawned = std::thread::Builder::new()
                            .name("msbvm-agent-events-conn".into())
                            .spawn(move || serve_events(stream, &events));
                        if let Err(e) = spawned {
                            tracing::warn!("cannot serve an agent events connection: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("accepting an agent events connection: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// Reads one events connection: hello, ready, then events (logged) until it closes.
pub fn serve_events(stream: UnixStream, events: &Sender<Event>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("agent events connection: {e}");
            return;
        }
    };
    let mut reader = FrameReader::new(stream);
    let mut greeted = false;
    loop {
        let message = match reader.read_message::<GuestMessage>() {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!("the agent closed its events connection");
                return;
            }
            Err(e) if e.is_recoverable() => {
                tracing::warn!("the agent sent a bad frame on its events connection: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!("agent events connection failed: {e}");
                return;
            }
        };
        match message {
            GuestMessage::Hello {
                version,
                agent_version,
            } => {
                tracing::info!(version, agent_version, "agent hello");
                if version != PROTOCOL_VERSION {
                    let _ = events.send(Event::AgentFailed(Error::ProtocolMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: version,
                    }));
                    return;
                }
                greeted = true;
                let hello = HostMessage::Hello {
                    version: PROTOCOL_VERSION,
                };
                if let Err(e) = write_blocking(&mut writer, &hello) {
                    tracing::debug!("answering the agent's hello: {e}");
                }
            }
            GuestMessage::Ready(boot) if greeted => {
                let _ = events.send(Event::AgentReady(boot));
            }
            GuestMessage::Ready(boot) => {
                tracing::warn!("the agent reported ready without a hello; accepting it");
                let _ = events.send(Event::AgentReady(boot));
            }
            GuestMessage::Error { message } => tracing::warn!("agent error: {message}"),
            other => tracing::info!(message = describe(&other), "agent event"),
        }
    }
}

/// Asks the agent to sync and power the guest off with `code`. Returns once the request was
/// written; the VM's end is observed separately.
pub fn request_shutdown(uds: &Path, code: u32, timeout: Duration) -> Result<()> {
    let stream = crate::vsock::connect_blocking(uds, AGENT_PORT, timeout)?;
    let mut reader = FrameReader::new(
        stream
            .try_clone()
            .map_err(Error::io("cloning the agent connection"))?,
    );
    let mut writer = stream;
    let frame_err = |e: crate::framing::FrameError| Error::Protocol {
        peer: "the guest agent",
        detail: e.to_string(),
    };
    write_blocking(
        &mut writer,
        &HostMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(frame_err)?;
    match reader.read_message::<GuestMessage>().map_err(frame_err)? {
        Some(GuestMessage::Hello { version, .. }) if version == PROTOCOL_VERSION => {}
        Some(GuestMessage::Hello { version, .. }) => {
            return Err(Error::ProtocolMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            })
        }
        Some(other) => {
            return Err(Error::Protocol {
                peer: "the guest agent",
                detail: format!("expected a hello, got {}", describe(&other)),
            })
        }
        None => return Err(Error::ConnectionLost),
    }
    write_blocking(&mut writer, &HostMessage::Shutdown { code }).map_err(frame_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::FakeAgent;
    use msbvm_protocol::BootTimes;
    use std::sync::mpsc;
    use tempfile::TempDir;

    #[test]
    fn hello_then_ready_becomes_agent_ready() {
        let (host, guest) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || serve_events(host, &tx));
        let mut w = guest.try_clone().unwrap();
        write_blocking(
            &mut w,
            &GuestMessage::Hello {
                version: PROTOCOL_VERSION,
                agent_version: "t".into(),
            },
        )
        .unwrap();
        let boot = BootTimes {
            agent_start_ns: 5,
            ready_ns: 9,
        };
        write_blocking(&mut w, &GuestMessage::Ready(boot)).unwrap();
        let mut r = FrameReader::new(guest);
        assert_eq!(
            r.read_message::<HostMessage>().unwrap(),
            Some(HostMessage::Hello {
                version: PROTOCOL_VERSION
            })
        );
        assert!(matches!(rx.recv().unwrap(), Event::AgentReady(b) if b == boot));
        drop(w);
        drop(r);
        t.join().unwrap();
    }

    #[test]
    fn version_mismatch_fails_the_boot() {
        let (host, guest) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || serve_events(host, &tx));
        let mut w = guest;
        write_blocking(
            &mut w,
            &GuestMessage::Hello {
                version: 42,
                agent_version: "old".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            rx.recv().unwrap(),
            Event::AgentFailed(Error::ProtocolMismatch { theirs: 42, .. })
        ));
        t.join().unwrap();
    }

    #[test]
    fn shutdown_is_sent_after_hello() {
        let tmp = TempDir::new().unwrap();
        let uds = tmp.path().join("vsock.sock");
        let fake = FakeAgent::spawn(&uds, 1, |s| {
            s.hello();
            assert_eq!(s.recv(), Some(HostMessage::Shutdown { code: 0 }));
        });
        request_shutdown(&uds, 0, Duration::from_secs(5)).unwrap();
        fake.join();
    }
}
