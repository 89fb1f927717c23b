//! The agent's own connection to the host (guest events).
//!
//! At start-up the agent connects to host port
//! [`msbvm_protocol::HOST_EVENTS_PORT`] and sends `Hello` and then
//! `Ready(BootTimes)`. The connection stays open for future events. If nobody
//! listens (a host that does not care, or another VMM), the agent retries a
//! few times and carries on without it. [`start`] returns the agent's
//! [`Events`] handle, which whoever sends events holds.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msbvm_protocol::framing::{FrameError, FrameWriter};
use msbvm_protocol::{BootTimes, GuestMessage, HOST_CID, HOST_EVENTS_PORT, PROTOCOL_VERSION};

use super::vsock::VsockStream;

/// Connection attempts before giving up.
const ATTEMPTS: u32 = 5;
/// Pause between attempts (doubling each time).
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// The events connection to the host: empty until it is up, and again after
/// it broke. Cheap to clone; clones share the connection.
#[derive(Clone, Default)]
pub struct Events {
    channel: Arc<Mutex<Option<FrameWriter<VsockStream>>>>,
}

impl Events {
    /// Sends a guest event to the host; false if there is no events
    /// connection (or it broke, after which it is dropped).
    pub fn send(&self, event: &GuestMessage) -> bool {
        let mut channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let sent = channel.as_ref().is_some_and(|out| out.send(event).is_ok());
        if !sent {
            *channel = None;
        }
        sent
    }
}

/// Sends `Hello` and `Ready` on `out`.
pub fn announce<W: Write>(out: &FrameWriter<W>, times: BootTimes) -> Result<(), FrameError> {
    out.send(&GuestMessage::Hello {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    out.send(&GuestMessage::Ready(times))
}

/// Connects and announces readiness on a background thread (so retries
/// never delay serving); the connection lands in the returned [`Events`].
pub fn start(agent_start_ns: u64, ready_ns: u64) -> Events {
    let times = BootTimes {
        agent_start_ns,
        ready_ns,
    };
    let events = Events::default();
    let channel = Arc::clone(&events.channel);
    let spawned = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=ATTEMPTS {
                match VsockStream::connect(HOST_CID, HOST_EVENTS_PORT) {
                    Ok(stream) => {
                        let out = FrameWriter::new(stream);
                        match announce(&out, times) {
                            Ok(()) => {
                                *channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                            }
                            Err(e) => agent_log!("announcing readiness to the host: {e}"),
                        }
                        return;
                    }
                    Err(e) if attempt == ATTEMPTS => {
                        agent_log!(
                            "no host events listener on vsock port {HOST_EVENTS_PORT} ({e}); going on without it"
                        );
                    }
                    Err(_) => {
                        std::thread::sleep(backoff);
                        backoff *= 2;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        agent_log!("cannot start the events thread: {e}");
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::framing::FrameReader;
    use std::os::unix::net::UnixStream;

    #[test]
    fn announce_sends_hello_then_ready() {
        let (a, b) = UnixStream::pair().unwrap();
        let times = BootTimes {
            agent_start_ns: 5,
            ready_ns: 9,
        };
        announce(&FrameWriter::new(a), times).unwrap();
        let mut r = FrameReader::new(b);
        match r.read_message::<GuestMessage>().unwrap() {
            Some(GuestMessage::Hello { version, .. }) => {
                assert_eq!(version, PROTOCOL_VERSION)
            }
            other => panic!("{other:?}"),
        }
        match r.read_message::<GuestMessage>().unwrap() {
            Some(GuestMessage::Ready(t)) => assert_eq!(t, times),
            other => panic!("{other:?}"),
        }
    }
}
