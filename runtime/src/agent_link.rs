//! The runtime's two dealings with the guest agent: receiving its hello and ready message on
//! host vsock port [`HOST_EVENTS_PORT`] (a Unix listener at `vsock.sock_1025`), and asking it
//! to shut the guest down.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::{GuestMessage, HostMessage, AGENT_PORT, PROTOCOL_VERSION};

use msbvm_sdk::exec::describe;
use msbvm_sdk::framing::{write_blocking, FrameReader};
use msbvm_sdk::{Error, Result};

use super::event_hub::EventHub;
use super::Event;

/// Most events connections served at once. The agent needs one; the port is reachable by
/// anything in the guest (hostile), and each served connection holds a host thread, so the
/// rest are closed at once. (The vsock device also caps guest connections per port.)
pub const MAX_EVENTS_CONNECTIONS: usize = 4;

/// Accepts the agent's events connections until the process ends. The first hello + ready
/// becomes [`Event::AgentReady`]; a version mismatch becomes [`Event::AgentFailed`]. At most
/// [`MAX_EVENTS_CONNECTIONS`] are served at once, each on its own thread.
pub fn spawn_events_listener(
    listener: UnixListener,
    events: Sender<Event>,
    hub: Arc<EventHub>,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("msbvm-agent-events".into())
        .spawn(move || {
            super::confine::thread_started("agent-events");
            let mut refused = 0u64;
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_bounded(stream, &events, &hub, &active, &mut refused),
                    Err(e) => tracing::warn!("accepting an agent events connection: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// Serves `stream` on a new thread if fewer than [`MAX_EVENTS_CONNECTIONS`] are served,
/// or closes it (with a warning for the first refusal and every 1000th after it).
fn serve_bounded(
    stream: UnixStream,
    events: &Sender<Event>,
    hub: &Arc<EventHub>,
    active: &Arc<AtomicUsize>,
    refused: &mut u64,
) {
    let taken = active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_EVENTS_CONNECTIONS).then_some(n + 1)
    });
    if taken.is_err() {
        if refused.is_multiple_of(1000) {
            tracing::warn!(
                refused = *refused + 1,
                "the guest holds {MAX_EVENTS_CONNECTIONS} events connections already; closing another"
            );
        }
        *refused += 1;
        return;
    }
    let (events, slot, hub) = (events.clone(), active.clone(), Arc::clone(hub));
    let spawned = std::thread::Builder::new()
        .name("msbvm-agent-events-conn".into())
        .spawn(move || {
            serve_events(stream, &events, &hub);
            slot.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!("cannot serve an agent events connection: {e}");
    }
}

/// Reads one events connection: hello, ready, then guest events (to `hub`) until it closes.
/// The connection that reports ready becomes the hub's way to the guest.
pub fn serve_events(stream: UnixStream, events: &Sender<Event>, hub: &EventHub) {
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
            GuestMessage::Ready(boot) => {
                if !greeted {
                    tracing::warn!("the agent reported ready without a hello; accepting it");
                }
                match writer.try_clone() {
                    Ok(w) => hub.set_agent(w),
                    Err(e) => tracing::warn!("guest events cannot reach the guest: {e}"),
                }
                let _ = events.send(Event::AgentReady(boot));
            }
            GuestMessage::Event(event) => hub.from_guest(event),
            GuestMessage::Error { message } => tracing::warn!("agent error: {message}"),
            other => tracing::info!(message = describe(&other), "agent event"),
        }
    }
}

/// Asks the agent to sync and power the guest off with `code`. Returns once the request was
/// written; the VM's end is observed separately.
pub fn request_shutdown(uds: &Path, code: u32, timeout: Duration) -> Result<()> {
    let (_, mut writer) = connect_greeted(uds, timeout)?;
    write_blocking(&mut writer, &HostMessage::Shutdown { code }).map_err(frame_error)
}

/// A connection to the agent (through the vsock device's socket `uds`) on which hellos were
/// exchanged: where to read its answers, and where to write requests. Connecting and every
/// read are bounded by `timeout` (the guest decides how fast the agent answers).
pub fn connect_greeted(
    uds: &Path,
    timeout: Duration,
) -> Result<(FrameReader<UnixStream>, UnixStream)> {
    let stream = msbvm_sdk::vsock::connect_blocking(uds, AGENT_PORT, timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(Error::io("setting a timeout on the agent connection"))?;
    let mut reader = FrameReader::new(
        stream
            .try_clone()
            .map_err(Error::io("cloning the agent connection"))?,
    );
    let mut writer = stream;
    write_blocking(
        &mut writer,
        &HostMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(frame_error)?;
    match reader.read_message::<GuestMessage>().map_err(frame_error)? {
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
    Ok((reader, writer))
}

/// A framing error on an agent connection.
pub fn frame_error(e: msbvm_sdk::framing::FrameError) -> Error {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    let detail = match &e {
        // A read timeout shows as EAGAIN, which says nothing to a user.
        msbvm_sdk::framing::FrameError::Io(io) if matches!(io.kind(), WouldBlock | TimedOut) => {
            "no answer in time: the guest is stalled or too slow".to_string()
        }
        _ => e.to_string(),
    };
    Error::Protocol {
        peer: "the guest agent",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::BootTimes;
    use msbvm_sdk::test_support::FakeAgent;
    use std::sync::mpsc;
    use tempfile::TempDir;

    #[test]
    fn hello_then_ready_becomes_agent_ready() {
        let (host, guest) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || serve_events(host, &tx, &EventHub::default()));
        let mut w = guest.try_clone().unwrap();
        write_blocking(&mut w, &hello()).unwrap();
        let boot = BootTimes {
            agent_start_ns: 5,
            ready_ns: 9,
            ..Default::default()
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
        let t = std::thread::spawn(move || serve_events(host, &tx, &EventHub::default()));
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

    /// A guest that opens connection after connection to the events port (and sends nothing)
    /// holds at most MAX_EVENTS_CONNECTIONS host threads; the rest are closed at once, and a
    /// slot freed is served again.
    #[test]
    fn events_connections_beyond_the_cap_are_closed() {
        use std::io::Read;
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("events.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, _rx) = mpsc::channel();
        spawn_events_listener(listener, tx, Arc::default()).unwrap();
        let held: Vec<UnixStream> = (0..MAX_EVENTS_CONNECTIONS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // Wait until all are served (a served connection answers a hello).
        for s in &held {
            hello_answered(s);
        }
        for _ in 0..200 {
            let mut extra = UnixStream::connect(&path).unwrap();
            extra
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            assert_eq!(extra.read(&mut [0u8; 16]).unwrap(), 0, "closed at once");
        }
        drop(held);
        // Slots free up as the served threads see EOF.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut w = s.try_clone().unwrap();
            if write_blocking(&mut w, &hello()).is_ok()
                && FrameReader::new(s)
                    .read_message::<HostMessage>()
                    .ok()
                    .flatten()
                    .is_some()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no slot came free");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The current agent's hello.
    fn hello() -> GuestMessage {
        GuestMessage::Hello {
            version: PROTOCOL_VERSION,
            agent_version: "t".into(),
        }
    }

    fn hello_answered(s: &UnixStream) {
        let mut w = s.try_clone().unwrap();
        write_blocking(&mut w, &hello()).unwrap();
        let r = s.try_clone().unwrap();
        r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(FrameReader::new(r)
            .read_message::<HostMessage>()
            .unwrap()
            .is_some());
    }
}
