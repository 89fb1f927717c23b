//! Guest UDP flows: one connected host UDP socket per (guest port, destination), policy-checked
//! on its first datagram and closed after `udp_idle_timeout` without traffic. Datagrams to the
//! gateway's port 53 go to the DNS server instead.
//!
//! UDP never enters smoltcp: datagrams are relayed as they come and replies are framed by hand.

use std::cell::Cell;
use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::Notify;

use msbvm_plugins::Hook;

use crate::config::DNS_PORT;
use crate::events::{NetEvent, Transport};
use crate::frames::Datagram;
use crate::policy::FlowInfo;
use crate::state::{Shared, Stack, UdpFlow, UdpKey};
use crate::stats::StatsCounters;
use crate::tls::is_tls_port;

/// Datagrams a new flow keeps while the plugins decide on it; more are dropped.
pub(crate) const PENDING_DATAGRAMS: usize = 16;
/// Bytes a new flow keeps while the plugins decide on it (the first datagram always fits).
const PENDING_BYTES: usize = 64 * 1024;
/// DNS queries being answered at once; more are dropped (the guest retries).
const DNS_IN_FLIGHT: usize = 64;
/// Largest datagram read from a host socket.
const MAX_DATAGRAM: usize = 65535;

/// Handles one datagram from the guest. `frame` is the whole frame (quoted in ICMP errors).
pub(crate) fn datagram(shared: &Rc<Shared>, st: &mut Stack, datagram: &Datagram<'_>, frame: &[u8]) {
    let Datagram {
        src, dst, payload, ..
    } = *datagram;
    let config = &shared.config;
    if *dst.ip() == config.gateway_ip {
        if dst.port() == DNS_PORT {
            dns_query(shared, src, payload);
        } else {
            st.send_port_unreachable(config.gateway_ip, frame);
        }
        return;
    }
    let key = UdpKey {
        guest_port: src.port(),
        remote: dst,
    };
    if let Some(flow) = st.udp.get(&key) {
        send_up(shared, flow, payload);
        return;
    }
    if let Some(waiting) = st.udp_pending.get_mut(&key) {
        let held: usize = waiting.iter().map(Vec::len).sum();
        if waiting.len() < PENDING_DATAGRAMS && held + payload.len() <= PENDING_BYTES {
            waiting.push(payload.to_vec());
        } else {
            StatsCounters::add(&shared.stats.rx_dropped, 1);
        }
        return;
    }
    if st.udp.len() + st.udp_pending.len() >= config.max_udp_flows {
        StatsCounters::add(&shared.stats.flows_denied, 1);
        shared.emit(NetEvent::ConnectionCapReached {
            transport: Transport::Udp,
            limit: config.max_udp_flows,
            dst: SocketAddr::V4(dst),
        });
        st.send_port_unreachable(*dst.ip(), frame);
        return;
    }
    if blocks_quic(shared, dst) {
        st.send_port_unreachable(*dst.ip(), frame);
        return;
    }
    let Some((flow, rule)) = shared.check_flow(Transport::Udp, dst) else {
        st.send_port_unreachable(*dst.ip(), frame);
        return;
    };
    if shared.plugins.wants(Hook::Flow) {
        st.udp_pending.insert(key, vec![payload.to_vec()]);
        let asked = ask_plugins_then_open(shared.clone(), key, src, (flow, rule), frame.to_vec());
        tokio::task::spawn_local(asked);
        return;
    }
    shared.flow_allowed(Transport::Udp, dst, rule);
    open(shared, st, key, src, flow, frame, &[payload]);
}

/// Opens the flow once the plugins allowed it and sends what the guest sent meanwhile; a
/// denied flow gets an ICMP port unreachable (quoting `frame`, its first datagram).
async fn ask_plugins_then_open(
    shared: Rc<Shared>,
    key: UdpKey,
    src: SocketAddrV4,
    (flow, rule): (FlowInfo, Option<String>),
    frame: Vec<u8>,
) {
    let allowed = shared
        .plugins_allow_flow(Transport::Udp, key.remote, rule)
        .await;
    let mut st = shared.stack.borrow_mut();
    let Some(waiting) = st.udp_pending.remove(&key) else {
        return;
    };
    if allowed {
        let waiting: Vec<&[u8]> = waiting.iter().map(Vec::as_slice).collect();
        open(&shared, &mut st, key, src, flow, &frame, &waiting);
    } else {
        st.send_port_unreachable(*key.remote.ip(), &frame);
    }
}

/// Opens the host socket of a new flow, sends `payloads` up and starts its relay.
fn open(
    shared: &Rc<Shared>,
    st: &mut Stack,
    key: UdpKey,
    src: SocketAddrV4,
    flow: FlowInfo,
    frame: &[u8],
    payloads: &[&[u8]],
) {
    let dst = key.remote;
    let socket = match open_socket(flow.dst) {
        Ok(socket) => Rc::new(socket),
        Err(e) => {
            shared.emit(NetEvent::FlowFailed {
                transport: Transport::Udp,
                dst: SocketAddr::V4(dst),
                error: e.to_string(),
            });
            st.send_port_unreachable(*dst.ip(), frame);
            return;
        }
    };
    let flow = UdpFlow {
        socket: socket.clone(),
        last_active: Rc::new(Cell::new(Instant::now())),
        bytes_up: Rc::new(Cell::new(0)),
        names: shared.pins.names(flow.dst.ip()),
        ended: Rc::new(Notify::new()),
    };
    for payload in payloads {
        send_up(shared, &flow, payload);
    }
    let relay = Relay {
        key,
        guest: src,
        socket,
        last_active: flow.last_active.clone(),
        bytes_up: flow.bytes_up.clone(),
        ended: flow.ended.clone(),
    };
    st.udp.insert(key, flow);
    shared.sync_flow_stats(st);
    tokio::task::spawn_local(relay_down(shared.clone(), relay));
}

/// Refuses (with an event) UDP to a TLS port of a destination whose connections would be
/// intercepted: QUIC would carry HTTP/3 past interception, and refusing it makes clients fall
/// back to TCP.
fn blocks_quic(shared: &Shared, dst: SocketAddrV4) -> bool {
    let Some(tls) = &shared.tls else {
        return false;
    };
    if !is_tls_port(dst.port()) {
        return false;
    }
    // Pins hold what the guest was answered (the host alias, not the loopback it maps to).
    let names = shared.pins.names((*dst.ip()).into());
    if !tls.policy.intercepts_any(&names) {
        return false;
    }
    shared.deny(
        Transport::Udp,
        dst,
        Some("builtin: TLS interception blocks QUIC".into()),
        format!(
            "QUIC to {dst} ({}) is blocked on intercepted hosts; use TCP",
            names.join(", ")
        ),
    );
    true
}

/// What the relay task of one UDP flow holds.
struct Relay {
    key: UdpKey,
    guest: SocketAddrV4,
    socket: Rc<UdpSocket>,
    last_active: Rc<Cell<Instant>>,
    bytes_up: Rc<Cell<u64>>,
    ended: Rc<Notify>,
}

fn open_socket(dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    socket.connect(dst)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

fn send_up(shared: &Shared, flow: &UdpFlow, payload: &[u8]) {
    flow.last_active.set(Instant::now());
    // UDP may drop: a full host socket buffer or an ICMP error costs this datagram only. A
    // plain send(2), since tokio's try_send gives up on a socket the reactor has not polled yet.
    if socket2::SockRef::from(&*flow.socket).send(payload).is_ok() {
        flow.bytes_up
            .set(flow.bytes_up.get() + payload.len() as u64);
        StatsCounters::add(&shared.stats.bytes_up, payload.len() as u64);
    }
}

/// Relays host datagrams to the guest until the flow has been idle long enough or is ended.
async fn relay_down(shared: Rc<Shared>, relay: Relay) {
    let Relay {
        key,
        guest,
        socket,
        last_active,
        bytes_up,
        ended,
    } = relay;
    let idle = shared.config.udp_idle_timeout;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut bytes_down = 0u64;
    loop {
        let deadline = last_active.get() + idle;
        tokio::select! {
            received = socket.recv(&mut buf) => {
                // Errors are ICMP errors from the destination reported on the connected socket.
                let Ok(n) = received else { continue };
                last_active.set(Instant::now());
                // Under a rate, the datagram waits for room (and the next ones in the socket).
                let wait = shared.stack.borrow_mut().device.tx.pace_wait();
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                let mut st = shared.stack.borrow_mut();
                if st.send_udp(key.remote, guest, &buf[..n], shared.config.mtu) {
                    bytes_down += n as u64;
                    StatsCounters::add(&shared.stats.bytes_down, n as u64);
                } else {
                    StatsCounters::add(&shared.stats.tx_dropped, 1);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if last_active.get() + idle <= Instant::now() {
                    break;
                }
            }
            _ = ended.notified() => break,
        }
    }
    let mut st = shared.stack.borrow_mut();
    // A flow ended by policy is gone already, and a new one may use the same key.
    if st
        .udp
        .get(&key)
        .is_some_and(|f| Rc::ptr_eq(&f.socket, &socket))
    {
        st.udp.remove(&key);
    }
    shared.sync_flow_stats(&st);
    drop(st);
    shared.emit(NetEvent::FlowClosed {
        transport: Transport::Udp,
        dst: SocketAddr::V4(key.remote),
        bytes_up: bytes_up.get(),
        bytes_down,
    });
}

/// Answers a DNS query from the guest through the DNS server, off the stack loop.
fn dns_query(shared: &Rc<Shared>, guest: SocketAddrV4, query: &[u8]) {
    if shared.dns_in_flight.get() >= DNS_IN_FLIGHT {
        StatsCounters::add(&shared.stats.rx_dropped, 1);
        return;
    }
    shared.dns_in_flight.set(shared.dns_in_flight.get() + 1);
    let shared = shared.clone();
    let query = query.to_vec();
    tokio::task::spawn_local(async move {
        let policy = shared.policy.load_full();
        let emit = |event| shared.emit(event);
        let answer = shared.dns.handle(&query, &policy, &emit).await;
        shared.dns_in_flight.set(shared.dns_in_flight.get() - 1);
        if let Some(answer) = answer {
            let from = SocketAddrV4::new(shared.config.gateway_ip, DNS_PORT);
            let mut st = shared.stack.borrow_mut();
            if !st.send_udp(from, guest, &answer, shared.config.mtu) {
                StatsCounters::add(&shared.stats.tx_dropped, 1);
            }
        }
    });
}
