//! The host-side network stack of a sandbox.
//!
//! The guest's virtio-net device exchanges raw Ethernet frames with this stack over an
//! `AF_UNIX` `SOCK_DGRAM` socketpair ([`frame_socketpair`]; one datagram is one frame). In a
//! sandbox the device's worker runs on the stack's own thread ([`HostedDevice`]), so a frame
//! crosses the socketpair without waking another thread. The stack
//! terminates every guest flow in smoltcp or by hand, asks [`policy`] about each new one, and
//! opens the real host socket itself, so the guest reaches nothing the stack does not open.
//!
//! - Addresses ([`config`]): subnet 10.0.2.0/24, gateway and DNS server 10.0.2.2, guest
//!   10.0.2.15 (static), host alias 10.0.2.254 = the host's 127.0.0.1 when policy allows it.
//! - TCP: a guest SYN is decided before smoltcp sees it; when allowed, the host connect runs
//!   first and the guest handshake completes only once it succeeded, so refusals and denials
//!   reach the guest as an immediate RST. Data is spliced in place with window back-pressure.
//!   With [`NetConfig::segment_offload`] the segments one poll sends a flow towards the guest
//!   are merged into frames of up to 64 KiB, as GRO would (`state/coalesce.rs`), which the
//!   virtio-net device hands to the guest as GSO frames.
//! - UDP: one connected host socket per (guest port, destination), idle-expired; denied
//!   datagrams get an ICMP port unreachable. Port 53 at the gateway goes to [`dns::DnsServer`].
//! - HTTP policy: on ports policy wants inspected, every request head of a connection is
//!   checked (bodies are followed by their framing, so keep-alive and pipelined requests are
//!   seen too), and a denied request gets a `403 Forbidden` from the stack, after which the
//!   connection ends.
//! - TLS interception ([`tls`], when [`NetConfig::tls`] is set): on TCP port 443
//!   ([`tls::TLS_PORTS`]) the stack completes the guest's handshake itself, reads its
//!   ClientHello (bounded: 16 KiB, 10 s) and decides by SNI. Hosts matching `intercept`
//!   (`HOST`, `*.SUFFIX`, `all`) or a secret's hosts are intercepted unless `bypass` matches:
//!   the upstream is connected and verified first (host roots plus `upstream_ca_pems`; a
//!   failure is refused with `tls_upstream_rejected`, the guest never gets a certificate for
//!   it), then the guest's TLS is terminated with a leaf minted per SNI from the sandbox CA
//!   (cached, backdated a day, valid seven), ALPN `h2`/`http/1.1`, and the requests go to the
//!   HTTP engine (`intercept`). Other TLS is spliced untouched, the bytes read to decide
//!   replayed first. No SNI (or not TLS) where interception would apply, or an SNI policy
//!   denies, is refused with `tls_refused`. UDP to port 443 of an intercepted destination
//!   (by its pinned DNS names) gets an ICMP port unreachable, so QUIC clients fall back to TCP.
//! - Intercepted connections (`intercept`): the TLS side hands the engine a terminated guest
//!   connection and a way to open verified upstream ones; hyper serves HTTP/1.1 or HTTP/2 to
//!   the guest and speaks what the upstream negotiated. Every request (each keep-alive
//!   request, each HTTP/2 stream) is checked against HTTP policy and the SNI; a denied one gets
//!   its own `403` and the connection goes on. Bodies stream with back-pressure; WebSocket
//!   upgrades pass once checked.
//! - Secrets ([`secrets`]): the guest holds placeholders; the engine substitutes them only in
//!   requests to a bound host on an intercepted, DNS-pinned connection whose Host is the SNI
//!   (headers, `Basic` credentials; query and body on request), blocks requests carrying one
//!   anywhere else in any encoding (raw, percent, base64, JSON-escaped, split across writes)
//!   with a `secret_blocked` event, and turns values echoed in responses back into
//!   placeholders.
//! - Published ports: host listeners spliced to a guest port ([`NetStackHandle::publish`]).
//! - Every decision is a [`NetEvent`] handed to an [`EventSink`], rate-limited per kind with
//!   `events_suppressed` summaries ([`events::EventLimiter`]), so a guest flooding denied SYNs
//!   or DNS queries cannot flood the host's logs; the counters ([`NetStats`]) count everything.
//! - A policy change ([`NetStackHandle::set_policy`]) ends the open flows the new policy denies.
//!
//! Not implemented: IPv6 (frames are dropped), ICMP beyond echo replies from the gateway (no ping
//! to the outside), DHCP (the guest configures itself), IP fragments of UDP datagrams (dropped
//! either way), UDP published ports, HTTP inspection across protocol upgrades (`CONNECT` and
//! `Upgrade` requests on inspected plain-HTTP connections are refused), TLS interception on
//! ports other than 443, TLS without SNI to intercepted destinations (refused, by design),
//! interception of clients that pin certificates (list them under `bypass`), QUIC/HTTP3 to
//! intercepted hosts (blocked), Encrypted Client Hello (the outer SNI decides).

#![forbid(unsafe_code)]

pub mod config;
pub mod dns;
pub mod events;
mod frames;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod intercept;
mod pins;
mod plugin_gate;
pub mod policy;
pub mod ports;
mod proxy;
pub mod seccomp;
pub mod secrets;
mod stack;
mod state;
mod stats;
pub mod tls;

pub use config::NetConfig;
pub use events::{discard_events, EventSink, NetEvent, Transport};
pub use ports::{PortProtocol, PublishedPort};
pub use stack::{frame_socketpair, DeviceHost, HostedDevice, NetStack, NetStackHandle};
pub use stats::NetStats;
