//! What the network stack reports to the host: one [`NetEvent`] per decision or flow life-cycle
//! step, delivered to an [`EventSink`] and logged with `tracing`.
//!
//! The lead forwards these to the SDK and the sandbox log as JSON, so every variant is plain data.
//!
//! Events are rate-limited per kind ([`EventLimiter`]): a guest flooding denied SYNs or DNS
//! queries must not turn into unbounded log and event volume on the host. Each kind may burst
//! [`EVENT_BURST`] events, then [`EVENT_RATE`] per second; what is dropped is counted, and one
//! [`NetEvent::EventsSuppressed`] per kind and [`SUMMARY_INTERVAL`] says how many. The stack's
//! counters ([`crate::NetStats`]) still count every flow, drop and query.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// A request carried a secret's placeholder (raw or encoded) where the secret may not go;
    /// it got a 403 and was not forwarded (or, for a body, not finished).
    SecretBlocked {
        /// The secret's name (never its value or placeholder).
        secret: String,
        /// The host the request was for.
        host: String,
    },
    /// A request on an intercepted connection named another host than the TLS SNI; it got a
    /// 403.
    HostMismatch {
        /// The SNI of the connection.
        sni: String,
        /// The `Host` / `:authority` of the request.
        host: String,
    },
    /// An upstream's response on an intercepted connection where secrets are masked could not
    /// be checked for secret values (a content coding the stack cannot decode, or a corrupt
    /// compressed body); the guest got a `502` instead.
    ResponseRefused {
        /// The host the request was for.
        host: String,
        /// Why, in words.
        reason: String,
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
    /// A guest TLS connection is terminated by the stack (a leaf minted for its SNI) so that
    /// HTTP policy and secrets apply to its requests.
    TlsIntercepted {
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The server name the guest sent.
        sni: String,
        /// Whether the sandbox's DNS resolved `sni` to the destination address.
        pinned: bool,
    },
    /// A guest TLS connection on an interception port is spliced untouched (not an
    /// intercepted host, or on the bypass list).
    TlsBypassed {
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The server name the guest sent, if any.
        sni: Option<String>,
    },
    /// A guest TLS connection was refused (the guest got a reset): no SNI or not TLS where
    /// interception applies, an SNI policy denies, or a failed guest handshake.
    TlsRefused {
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The server name the guest sent, if any.
        sni: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// The upstream server of an intercepted connection failed certificate verification; the
    /// connection was refused, never passed through.
    TlsUpstreamRejected {
        /// The destination the guest addressed.
        dst: SocketAddr,
        /// The server name that was verified.
        sni: String,
        /// The verification error.
        reason: String,
    },
    /// Events of one kind went over the rate limit and were not reported (they were counted).
    EventsSuppressed {
        /// The `event` name of the suppressed events, e.g. `flow_denied`.
        kind: String,
        /// How many were suppressed.
        count: u64,
        /// Over how many seconds (rounded up), from the first one suppressed.
        seconds: u64,
    },
}

impl NetEvent {
    /// The event's name, as its `event` field in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            NetEvent::FlowAllowed { .. } => "flow_allowed",
            NetEvent::FlowDenied { .. } => "flow_denied",
            NetEvent::FlowFailed { .. } => "flow_failed",
            NetEvent::FlowClosed { .. } => "flow_closed",
            NetEvent::DnsQuery { .. } => "dns_query",
            NetEvent::HttpRequest { .. } => "http_request",
            NetEvent::SecretBlocked { .. } => "secret_blocked",
            NetEvent::HostMismatch { .. } => "host_mismatch",
            NetEvent::ResponseRefused { .. } => "response_refused",
            NetEvent::ConnectionCapReached { .. } => "connection_cap_reached",
            NetEvent::IngressAccepted { .. } => "ingress_accepted",
            NetEvent::TlsIntercepted { .. } => "tls_intercepted",
            NetEvent::TlsBypassed { .. } => "tls_bypassed",
            NetEvent::TlsRefused { .. } => "tls_refused",
            NetEvent::TlsUpstreamRejected { .. } => "tls_upstream_rejected",
            NetEvent::EventsSuppressed { .. } => "events_suppressed",
        }
    }
}

/// Events of one kind reported in a burst before the rate limit applies.
pub const EVENT_BURST: u32 = 100;
/// Events of one kind reported per second, on average, once the burst is spent.
pub const EVENT_RATE: u32 = 20;
/// How often (at most) one [`NetEvent::EventsSuppressed`] per kind is reported.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// A token bucket per event kind, and the count of what each dropped.
#[derive(Debug)]
pub struct EventLimiter {
    burst: f64,
    rate: f64,
    kinds: HashMap<&'static str, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    first_suppressed: Instant,
}

/// What the limiter says about one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Report it.
    Report,
    /// Drop it; `first` when it is the first of its kind dropped since the last summary
    /// (a summary is then due after [`SUMMARY_INTERVAL`]).
    Suppress {
        /// First suppressed of its kind since the last summary.
        first: bool,
    },
}

impl EventLimiter {
    /// A limiter allowing `burst` events of a kind at once and `rate` per second after.
    pub fn new(burst: u32, rate: u32) -> EventLimiter {
        EventLimiter {
            burst: f64::from(burst.max(1)),
            rate: f64::from(rate),
            kinds: HashMap::new(),
        }
    }

    /// Decides about one event of `kind` at `now`.
    pub fn admit(&mut self, kind: &'static str, now: Instant) -> Admission {
        let burst = self.burst;
        let bucket = self.kinds.entry(kind).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            suppressed: 0,
            first_suppressed: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Report;
        }
        bucket.suppressed += 1;
        if bucket.suppressed == 1 {
            bucket.first_suppressed = now;
        }
        Admission::Suppress {
            first: bucket.suppressed == 1,
        }
    }

    /// The summaries of everything suppressed since the last call, and resets the counts.
    pub fn take_summaries(&mut self, now: Instant) -> Vec<NetEvent> {
        let mut out: Vec<NetEvent> = self
            .kinds
            .iter_mut()
            .filter(|(_, b)| b.suppressed > 0)
            .map(|(kind, b)| {
                let span = now.saturating_duration_since(b.first_suppressed);
                let event = NetEvent::EventsSuppressed {
                    kind: (*kind).to_owned(),
                    count: b.suppressed,
                    seconds: span.as_secs() + u64::from(span.subsec_nanos() > 0),
                };
                b.suppressed = 0;
                event
            })
            .collect();
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out
    }
}

impl Default for EventLimiter {
    fn default() -> EventLimiter {
        EventLimiter::new(EVENT_BURST, EVENT_RATE)
    }
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
    fn a_flood_is_cut_to_the_burst_plus_the_rate_and_summarized() {
        let mut limiter = EventLimiter::new(10, 5);
        let start = Instant::now();
        let mut reported = 0;
        let mut firsts = 0;
        // 10 000 events over 2 seconds.
        for i in 0..10_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 200);
            match limiter.admit("flow_denied", now) {
                Admission::Report => reported += 1,
                Admission::Suppress { first } => firsts += u32::from(first),
            }
        }
        assert!((10..=21).contains(&reported), "{reported}");
        assert_eq!(firsts, 1);
        // Another kind has its own bucket.
        assert_eq!(limiter.admit("dns_query", start), Admission::Report);
        let summaries = limiter.take_summaries(start + Duration::from_secs(2));
        assert_eq!(
            summaries,
            [NetEvent::EventsSuppressed {
                kind: "flow_denied".into(),
                count: 10_000 - reported,
                seconds: 2,
            }]
        );
        assert!(limiter.take_summaries(start).is_empty());
        // After a quiet while, the bucket is full again.
        let later = start + Duration::from_secs(60);
        assert!((0..10).all(|_| limiter.admit("flow_denied", later) == Admission::Report));
    }

    #[test]
    fn kind_names_match_the_json_tag() {
        let event = NetEvent::EventsSuppressed {
            kind: "dns_query".into(),
            count: 3,
            seconds: 1,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.contains(&format!("\"event\":\"{}\"", event.kind())),
            "{json}"
        );
    }

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
