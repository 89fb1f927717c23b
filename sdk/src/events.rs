//! Events between guest programs and the host program.
//!
//! In the guest, any program writes JSON lines (`{"type": "...", "data": ...}`) to the Unix
//! socket named by `$MSBVM_EVENTS_SOCKET` (or runs `msbvm emit TYPE JSON`); the agent stamps
//! each with the sender's pid, the exec it descends from and a time, and the sandbox's runtime
//! hands it to [`crate::Sandbox::events`] streams. The host sends events back with
//! [`crate::Sandbox::emit`] (to every guest subscriber, one guest connection or one exec's
//! processes) and asks with [`crate::Sandbox::request`].
//!
//! Limits (the runtime enforces them; the guest is not trusted): an event is at most
//! [`MAX_EVENT_LEN`] bytes of JSON; a sandbox sends at most [`RATE_PER_SEC`] events a second
//! (bursts of [`RATE_BURST`]); faster senders are slowed down, not dropped. While a stream
//! is attached, a slow reader slows the guest's writers down (nothing piles up on the host);
//! while none is, the newest [`RING_CAPACITY`] events (8 MiB at most) are kept for the next stream and the
//! older ones are counted in an `msbvm.dropped` event it receives first.

use std::time::Duration;

use msbvm_protocol::events::{GuestEvent, HostEvent, Target};

use crate::control::ControlClient;
use crate::error::{Error, Result};

pub use msbvm_protocol::events::{pattern_matches, MAX_EVENT_LEN, RESERVED_PREFIX};

/// Events a sandbox's runtime keeps while no stream is attached.
pub const RING_CAPACITY: usize = 1024;
/// Events per second a sandbox may send, sustained.
pub const RATE_PER_SEC: u32 = 2000;
/// Events a sandbox may send in one burst above [`RATE_PER_SEC`].
pub const RATE_BURST: u32 = 4096;
/// The type of the event that says how many events were dropped (`data: {"count": N}`).
pub const DROPPED_TYPE: &str = "msbvm.dropped";

/// An event from the guest (or, for `msbvm.*` types, from the runtime itself).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Its type.
    pub kind: String,
    /// Its payload (`null` when the sender gave none).
    pub data: serde_json::Value,
    /// The sender's id for it (a reply names it).
    pub id: Option<String>,
    /// The id of the host event it answers.
    pub reply_to: Option<String>,
    /// The sending process's pid in the guest; `None` for the runtime's own events.
    pub pid: Option<u32>,
    /// The exec the sender descends from (that exec's pid, as [`crate::ExecStream::pid`]
    /// reports it); `None` for processes outside any exec.
    pub exec: Option<u32>,
    /// The guest connection it came on; [`EventTarget::Connection`] reaches it.
    pub connection: Option<u64>,
    /// When the agent received it: Unix time in milliseconds, by the guest's clock.
    pub time_ms: u64,
}

impl Event {
    /// True for the runtime's own events (`msbvm.*`), such as [`DROPPED_TYPE`].
    pub fn is_system(&self) -> bool {
        self.pid.is_none()
    }

    /// The event as one JSON object (`type`, `data`, `id`, `reply_to`, `pid`, `exec`,
    /// `connection`, `time_ms`), as `msbvm events --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind,
            "data": self.data,
            "id": self.id,
            "reply_to": self.reply_to,
            "pid": self.pid,
            "exec": self.exec,
            "connection": self.connection,
            "time_ms": self.time_ms,
        })
    }

    /// The event back from [`Event::to_json`]'s form (a binding hands an event to its
    /// language as that object and takes it back to [`crate::Sandbox::reply`] to it). Fields
    /// missing or of the wrong type are an [`Error::InvalidConfig`] naming the field.
    pub fn from_json(v: &serde_json::Value) -> Result<Event> {
        let bad =
            |field: &str| Error::InvalidConfig(format!("not an event: bad or missing {field:?}"));
        let obj = v.as_object().ok_or_else(|| bad("object"))?;
        let text = |field: &str| -> Result<Option<String>> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(field)),
            }
        };
        let number = |field: &str| -> Result<Option<u64>> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(n) => n.as_u64().map(Some).ok_or_else(|| bad(field)),
            }
        };
        let small = |field: &str| -> Result<Option<u32>> {
            number(field)?
                .map(|n| u32::try_from(n).map_err(|_| bad(field)))
                .transpose()
        };
        Ok(Event {
            kind: text("type")?.ok_or_else(|| bad("type"))?,
            data: obj.get("data").cloned().unwrap_or(serde_json::Value::Null),
            id: text("id")?,
            reply_to: text("reply_to")?,
            pid: small("pid")?,
            exec: small("exec")?,
            connection: number("connection")?,
            time_ms: number("time_ms")?.unwrap_or(0),
        })
    }

    /// Converts a wire event. The runtime checked the payload is JSON; anything that still
    /// fails to parse arrives as a string, never an error.
    pub fn from_wire(e: GuestEvent) -> Event {
        let data = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::String(e.data));
        let system = e.pid == 0 && e.kind.starts_with(RESERVED_PREFIX);
        Event {
            kind: e.kind,
            data,
            id: e.id,
            reply_to: e.reply_to,
            pid: (!system).then_some(e.pid),
            exec: e.exec,
            connection: (!system).then_some(e.connection),
            time_ms: e.time_ms,
        }
    }
}

/// Which guest programs a host event reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventTarget {
    /// Every guest connection subscribed to its type.
    #[default]
    Subscribers,
    /// One guest connection ([`Event::connection`]), subscribed or not.
    Connection(u64),
    /// The connections of every process descending from this exec (its pid).
    Exec(u32),
}

impl From<EventTarget> for Target {
    fn from(t: EventTarget) -> Target {
        match t {
            EventTarget::Subscribers => Target::Subscribers,
            EventTarget::Connection(c) => Target::Connection(c),
            EventTarget::Exec(p) => Target::Exec(p),
        }
    }
}

/// A host event about to be sent (checked here so a bad one never reaches the runtime).
pub(crate) fn host_event(
    kind: &str,
    data: &serde_json::Value,
    id: Option<String>,
    reply_to: Option<String>,
    target: EventTarget,
) -> Result<HostEvent> {
    msbvm_protocol::events::check_type(kind).map_err(Error::InvalidConfig)?;
    let data = serde_json::to_string(data)
        .map_err(|e| Error::InvalidConfig(format!("event data: {e}")))?;
    let len = data.len() + kind.len();
    if len > MAX_EVENT_LEN {
        return Err(Error::InvalidConfig(format!(
            "an event of {len} bytes is over the {MAX_EVENT_LEN}-byte limit"
        )));
    }
    Ok(HostEvent {
        kind: kind.to_string(),
        data,
        id,
        reply_to,
        target: target.into(),
    })
}

/// A fresh request id: 128 random bits in hex.
pub(crate) fn fresh_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("drawing a request id")(e));
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A stream of guest events ([`crate::Sandbox::events`]).
#[derive(Debug)]
pub struct EventStream {
    client: ControlClient,
    done: bool,
}

impl EventStream {
    pub(crate) async fn open(
        control: &std::path::Path,
        types: Vec<String>,
        follow: bool,
    ) -> Result<EventStream> {
        for t in &types {
            if t != "*" {
                msbvm_protocol::events::check_type(t.trim_end_matches('*'))
                    .map_err(|e| Error::InvalidConfig(format!("event type filter {t:?}: {e}")))?;
            }
        }
        let mut client = ControlClient::connect(control).await?;
        client.start_events(types, follow).await?;
        Ok(EventStream {
            client,
            done: false,
        })
    }

    /// The next event; `None` once the stream ended (the sandbox stopped, or, for
    /// [`crate::Sandbox::pending_events`], all kept events were read).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        if self.done {
            return None;
        }
        match self.client.next_event().await {
            Ok(Some(e)) => Some(Ok(Event::from_wire(e))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// [`EventStream::next`] that gives up after `timeout` (`Ok(None)` then; the stream
    /// goes on).
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(Error::ConnectionLost),
            Ok(Some(r)) => r.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_from_their_json() {
        let e = Event {
            kind: "job.done".into(),
            data: serde_json::json!({"ok": true}),
            id: Some("7".into()),
            reply_to: None,
            pid: Some(42),
            exec: Some(40),
            connection: Some(3),
            time_ms: 1_700_000_000_000,
        };
        assert_eq!(Event::from_json(&e.to_json()).unwrap(), e);
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"data": 1}),
            serde_json::json!({"type": 5}),
            serde_json::json!({"type": "t", "pid": -1}),
            serde_json::json!({"type": "t", "pid": 1u64 << 40}),
            serde_json::json!({"type": "t", "connection": "x"}),
        ] {
            let e = Event::from_json(&bad).unwrap_err();
            assert!(e.to_string().contains("not an event"), "{e}");
        }
    }

    #[test]
    fn wire_events_convert() {
        let e = Event::from_wire(GuestEvent {
            kind: "progress".into(),
            data: r#"{"pct":5}"#.into(),
            id: None,
            reply_to: None,
            pid: 42,
            exec: Some(40),
            connection: 3,
            time_ms: 7,
        });
        assert_eq!(e.data["pct"], 5);
        assert_eq!((e.pid, e.exec, e.connection), (Some(42), Some(40), Some(3)));
        assert!(!e.is_system());
        let d = Event::from_wire(GuestEvent {
            kind: DROPPED_TYPE.into(),
            data: r#"{"count":9}"#.into(),
            id: None,
            reply_to: None,
            pid: 0,
            exec: None,
            connection: 0,
            time_ms: 1,
        });
        assert!(d.is_system());
        assert_eq!(d.to_json()["data"]["count"], 9);
    }

    #[test]
    fn bad_host_events_are_refused_here() {
        let big = serde_json::Value::String("x".repeat(MAX_EVENT_LEN));
        assert!(host_event("t", &big, None, None, EventTarget::Subscribers).is_err());
        assert!(host_event(
            "a b",
            &serde_json::Value::Null,
            None,
            None,
            EventTarget::Subscribers
        )
        .is_err());
        let ok = host_event(
            "t",
            &serde_json::json!([1]),
            None,
            None,
            EventTarget::Exec(4),
        )
        .unwrap();
        assert_eq!(ok.data, "[1]");
        assert_eq!(ok.target, Target::Exec(4));
    }

    #[test]
    fn ids_are_fresh() {
        let (a, b) = (fresh_id().unwrap(), fresh_id().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
