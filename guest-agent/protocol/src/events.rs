//! Events between guest programs and the host.
//!
//! Guest programs write JSON lines to the agent's Unix socket
//! ([`GUEST_SOCKET`]); the agent stamps each with who sent it and forwards it
//! on its events connection as a [`GuestEvent`]. The host answers or
//! broadcasts with [`HostEvent`]s, which the agent hands to the guest
//! connections they are meant for. The payload travels as JSON text: postcard
//! cannot carry self-describing values, and neither end needs to look inside
//! it beyond checking that it is JSON.

use serde::{Deserialize, Serialize};

/// The guest socket programs write events to (mode 0666).
pub const GUEST_SOCKET: &str = "/run/msbvm/events.sock";
/// The environment variable every exec gets, naming [`GUEST_SOCKET`].
pub const SOCKET_ENV: &str = "MSBVM_EVENTS_SOCKET";
/// Where the in-guest `msbvm` command lives (on every exec's `PATH`).
pub const GUEST_BIN_DIR: &str = "/run/msbvm/bin";
/// The largest event, as one JSON line (newline excluded), in bytes.
pub const MAX_EVENT_LEN: usize = 64 * 1024;
/// The longest event type, in bytes.
pub const MAX_TYPE_LEN: usize = 256;
/// The longest `id` or `reply_to`, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Event types starting with this are the system's own (`msbvm.dropped`, ...);
/// guests may not send them.
pub const RESERVED_PREFIX: &str = "msbvm.";

/// An event a guest program sent, as the agent forwards it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestEvent {
    /// The event's type (`"type"` in JSON).
    pub kind: String,
    /// The payload as JSON text (`null` when the sender gave none).
    pub data: String,
    /// The sender's id for this event, for replies.
    pub id: Option<String>,
    /// The id of the host event this one answers.
    pub reply_to: Option<String>,
    /// The sending process's pid in the guest (from the socket's credentials).
    pub pid: u32,
    /// The exec the sender descends from: that exec's pid (as in
    /// [`crate::GuestMessage::Started`]); `None` for processes outside any exec.
    pub exec: Option<u32>,
    /// The agent's number for the guest connection it came on; a host event
    /// aimed at [`Target::Connection`] with it reaches that connection.
    pub connection: u64,
    /// When the agent received it: Unix time in milliseconds (guest clock).
    pub time_ms: u64,
}

/// Which guest connections a host event is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Every connection that subscribed to its type.
    #[default]
    Subscribers,
    /// One connection ([`GuestEvent::connection`]), subscribed or not.
    Connection(u64),
    /// Every connection whose process descends from this exec (its pid),
    /// subscribed or not.
    Exec(u32),
}

/// An event the host sends to guest programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvent {
    /// The event's type.
    pub kind: String,
    /// The payload as JSON text.
    pub data: String,
    /// The host's id for this event (a guest reply names it in `reply_to`).
    pub id: Option<String>,
    /// The id of the guest event this one answers.
    pub reply_to: Option<String>,
    /// Who gets it.
    pub target: Target,
}

/// Why an event type is refused, if it is.
pub fn check_type(kind: &str) -> Result<(), String> {
    if kind.is_empty() {
        return Err("the event type is empty".into());
    }
    if kind.len() > MAX_TYPE_LEN {
        return Err(format!(
            "the event type is {} bytes long; the limit is {MAX_TYPE_LEN}",
            kind.len()
        ));
    }
    if kind.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the event type holds whitespace or control characters".into());
    }
    Ok(())
}

/// True if the subscription `pattern` covers `kind`: an exact type, `prefix.*`
/// (every type under `prefix.`), or `*` (everything).
pub fn pattern_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.bc"));
        assert!(pattern_matches("a.*", "a.b"));
        assert!(pattern_matches("a.*", "a.b.c"));
        assert!(!pattern_matches("a.*", "a"));
        assert!(!pattern_matches("a.*", "ab.c"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn types() {
        assert!(check_type("progress").is_ok());
        assert!(check_type("").is_err());
        assert!(check_type("a b").is_err());
        assert!(check_type(&"x".repeat(MAX_TYPE_LEN + 1)).is_err());
    }

    #[test]
    fn events_roundtrip() {
        let g = GuestEvent {
            kind: "t".into(),
            data: "{\"a\":1}".into(),
            id: Some("1".into()),
            reply_to: None,
            pid: 7,
            exec: Some(5),
            connection: 3,
            time_ms: 9,
        };
        let frame = crate::encode(&crate::GuestMessage::Event(g.clone())).unwrap();
        let mut d = crate::FrameDecoder::new();
        d.push(&frame);
        assert_eq!(
            d.next_message::<crate::GuestMessage>().unwrap(),
            Some(crate::GuestMessage::Event(g))
        );
        let h = HostEvent {
            kind: "t".into(),
            data: "null".into(),
            id: None,
            reply_to: Some("1".into()),
            target: Target::Connection(3),
        };
        let frame = crate::encode(&crate::HostMessage::Event(h.clone())).unwrap();
        d.push(&frame);
        assert_eq!(
            d.next_message::<crate::HostMessage>().unwrap(),
            Some(crate::HostMessage::Event(h))
        );
    }
}
