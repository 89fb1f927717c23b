//! The agent's own connection to the host (guest events).
//!
//! At start-up the agent connects to host port
//! [`msbvm_protocol::HOST_EVENTS_PORT`] and sends `Hello` and then
//! `Ready(BootTimes)`. The connection stays open: guest programs' events go
//! out on it (`GuestMessage::Event`, sent by the events hub through
//! [`Events`]), and a reader thread hands the host's `HostMessage::Event`s to
//! the hub ([`read_host_events`]). If nobody listens at start-up (a host
//! that does not care, or another VMM), the agent retries a few times and
//! carries on without it. A connection that worked and then ended is made
//! again, for as long as it takes: that is how a guest restored from a
//! snapshot (whose vsock connections the device reset) reaches its new
//! host, which takes the second `Ready` as the fork's.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msbvm_protocol::events::{GuestEvent, HostEvent};
use msbvm_protocol::framing::{FrameError, FrameReader, FrameWriter};
use msbvm_protocol::{
    BootTimes, GuestMessage, HostMessage, HOST_CID, HOST_EVENTS_PORT, PROTOCOL_VERSION,
};

use super::connection::Stream;
use super::guest_events::HostLink;
use super::vsock::VsockStream;

/// Connection attempts before giving up.
const ATTEMPTS: u32 = 5;
/// Pause between attempts (doubling each time).
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Attempts per round of reconnecting (rounds repeat without end; the
/// doubling pauses of one round add up to about 1.3 s).
const RECONNECT_ATTEMPTS: u32 = 7;

/// A connection to the host that events are sent on: empty until it is up,
/// and again after it broke. Cheap to clone; clones share the connection.
pub struct Link<W> {
    channel: Arc<Mutex<Option<FrameWriter<W>>>>,
}

/// The agent's events connection (over vsock).
pub type Events = Link<VsockStream>;

impl<W> Clone for Link<W> {
    fn clone(&self) -> Self {
        Self {
            channel: Arc::clone(&self.channel),
        }
    }
}

impl<W> Default for Link<W> {
    fn default() -> Self {
        Self {
            channel: Arc::default(),
        }
    }
}

impl<W: Write> Link<W> {
    /// A link that sends on `out` (tests; the agent's is filled by [`Events::start`]).
    pub fn new(out: FrameWriter<W>) -> Self {
        Self {
            channel: Arc::new(Mutex::new(Some(out))),
        }
    }

    /// Sends a message to the host with a blocking write; false if there is
    /// no events connection (or it broke, after which it is dropped).
    pub fn send(&self, event: &GuestMessage) -> bool {
        let mut channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let sent = channel.as_ref().is_some_and(|out| out.send(event).is_ok());
        if !sent {
            *channel = None;
        }
        sent
    }

    /// Forgets the connection (the host went away).
    pub fn close(&self) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl<W: Write + Send + 'static> HostLink for Link<W> {
    fn send_event(&self, event: GuestEvent) -> bool {
        self.send(&GuestMessage::Event(event))
    }
}

/// Reads the host's messages on the events connection until it ends,
/// handing each event to `on_event` (the host's `Hello` and anything else
/// are skipped).
pub fn read_host_events<R: Read>(input: R, on_event: impl Fn(&HostEvent)) {
    let mut input = FrameReader::new(input);
    loop {
        match input.read_message::<HostMessage>() {
            Ok(Some(HostMessage::Event(event))) => on_event(&event),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) if e.is_recoverable() => {
                agent_log!("events connection: skipping a message: {e}");
            }
            Err(e) => {
                agent_log!("events connection: {e}");
                return;
            }
        }
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

impl Events {
    /// Connects and announces readiness on a background thread (so retries
    /// never delay serving); the connection lands in `self` (and its
    /// clones), and the same thread then reads the host's events and hands
    /// them to `on_event`.
    pub fn start<F>(&self, times: BootTimes, on_event: F)
    where
        F: Fn(&HostEvent) + Send + 'static,
    {
        let link = self.clone();
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let Some(mut input) = connect(&link, times, ATTEMPTS) else {
                    return;
                };
                loop {
                    read_host_events(input, &on_event);
                    // The host closed its end: emits fail at once until a
                    // new connection is up.
                    link.close();
                    agent_log!("events connection ended; connecting again");
                    input = loop {
                        if let Some(input) = connect(&link, times, RECONNECT_ATTEMPTS) {
                            break input;
                        }
                    };
                    agent_log!("events connection made again");
                }
            });
        if let Err(e) = spawned {
            agent_log!("cannot start the events thread: {e}");
        }
    }
}

/// Connects (with up to `attempts` tries) and announces; the stream to read
/// the host's messages from, once `link` holds the connection.
fn connect(link: &Events, times: BootTimes, attempts: u32) -> Option<VsockStream> {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=attempts {
        match VsockStream::connect(HOST_CID, HOST_EVENTS_PORT) {
            Ok(stream) => {
                let input = match stream.try_clone() {
                    Ok(input) => input,
                    Err(e) => {
                        agent_log!("events connection: {e}");
                        return None;
                    }
                };
                let out = FrameWriter::new(stream);
                if let Err(e) = announce(&out, times) {
                    agent_log!("announcing readiness to the host: {e}");
                    return None;
                }
                *link.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                return Some(input);
            }
            Err(e) if attempt == attempts => {
                if attempts == ATTEMPTS {
                    agent_log!(
                        "no host events listener on vsock port {HOST_EVENTS_PORT} ({e}); going on without it"
                    );
                }
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::events::Target;
    use std::os::unix::net::UnixStream;

    #[test]
    fn announce_sends_hello_then_ready() {
        let (a, b) = UnixStream::pair().unwrap();
        let times = BootTimes {
            agent_start_ns: 5,
            ready_ns: 9,
            ..Default::default()
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

    #[test]
    fn host_events_are_read_past_hello_and_a_broken_link_says_so() {
        let (a, b) = UnixStream::pair().unwrap();
        let host = FrameWriter::new(a);
        host.send(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
        })
        .unwrap();
        let event = HostEvent {
            kind: "k".into(),
            data: "1".into(),
            id: None,
            reply_to: None,
            target: Target::Subscribers,
        };
        host.send(&HostMessage::Event(event.clone())).unwrap();
        drop(host);
        let seen = Mutex::new(Vec::new());
        read_host_events(b, |e| seen.lock().unwrap().push(e.clone()));
        assert_eq!(seen.into_inner().unwrap(), vec![event]);

        let (a, b) = UnixStream::pair().unwrap();
        let link = Link::new(FrameWriter::new(a));
        drop(b);
        assert!(!link.send(&GuestMessage::Pong));
        assert!(!Link::<UnixStream>::default().send(&GuestMessage::Pong));
    }
}
