//! What the network stack reports to the host: one [`NetEvent`] per decision or flow life-cycle
//! step, delivered to an [`EventSink`] and logged with `tracing`.
//!
//! The lead forwards these to the SDK and the sandbox log as JSON, so every variant is plain data.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The transport a flow uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One thing the network stack did or decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NetEvent {
    /// A guest flow was allowed by policy; the host side is being opened.
    FlowAllowed {
        /// TCP or UDP.
        transport: Transport,
        /// The destination the guest addressed (10.0.2.254 for the host alias).
        dst: SocketAddr,
        /// The policy rule that allowed it, if one matched by name.
        rule: Option<String>,
    },
    /// A guest flow was denied by policy; the guest got a TCP RST or an ICMP port unreachable.
    FlowDenied {
        /// TCP or UDP.
        transport: Transport,
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The policy rule that denied it, if one matched by name.
        rule: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// An allowed flow could not be opened on the host (refused, unreachable, timeout).
    FlowFailed {
        /// TCP or UDP.
        transport: Transport,
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The host error.
        error: String,
    },
    /// A flow ended.
    FlowClosed {
        /// TCP or UDP.
        transport: Transport,
        /// The peer the guest talked to (for a published port: the host-side client).
        dst: SocketAddr,
        /// Bytes from the guest to the host.
        bytes_up: u64,
        /// Bytes from the host to the guest.
        bytes_down: u64,
    },
    /// A DNS query the guest sent to the gateway and what it got.
    DnsQuery {
        /// The queried name.
        name: String,
        /// The query type (A, AAAA, ...).
        qtype: String,
        /// Whether policy let the query through.
        allowed: bool,
        /// The addresses answered.
        answers: Vec<IpAddr>,
        /// Why it was denied or failed, if it was.
        reason: Option<String>,
    },
    /// An HTTP request head inspected on a flow that policy wanted inspected.
    HttpRequest {
        /// Request method.
        method: String,
        /// `Host` header (or authority).
        host: String,
        /// Request path.
        path: String,
        /// Whether policy allowed it (denied requests get a 403 from the stack).
        allowed: bool,
        /// The rule that decided, if one matched by name.
        rule: Option<String>,
    },
    /// The per-sandbox flow cap was reached; the new flow was refused.
    ConnectionCapReached {
        /// TCP or UDP.
        transport: Transport,
        /// The cap in force.
        limit: usize,
        /// The destination of the refused flow.
        dst: SocketAddr,
    },
    /// A host client connected to a published port and is being spliced to the guest.
    IngressAccepted {
        /// The host-side client.
        peer: SocketAddr,
        /// The guest port it reaches.
        guest_port: u16,
    },
}

/// Where events go. Called on the network stack's thread; it must not block for long.
pub type EventSink = Arc<dyn Fn(NetEvent) + Send + Sync>;

/// An event sink that drops everything (events are still logged).
pub fn discard_events() -> EventSink {
    Arc::new(|_| {})
}

/// Logs `event` and hands it to `sink`.
pub(crate) fn emit(sink: &EventSink, event: NetEvent) {
    // Every decision belongs in the sandbox's log (the runtime logs at info by default).
    tracing::info!(?event, "netstack");
    sink(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_event_round_trips_through_json() {
        let event = NetEvent::DnsQuery {
            name: "example.com".into(),
            qtype: "A".into(),
            allowed: true,
            answers: vec!["93.184.216.34".parse().unwrap()],
            reason: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"event\":\"dns_query\""), "{json}");
        assert_eq!(serde_json::from_str::<NetEvent>(&json).unwrap(), event);
    }
}
