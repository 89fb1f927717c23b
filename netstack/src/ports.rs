//! Published ports: host listeners whose connections reach a port of the guest.

pub use crate::config::{PortProtocol, PublishedPort};

use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

use smoltcp::wire::IpAddress;

use crate::events::{NetEvent, Transport};
use crate::frames::TcpKey;
use crate::proxy;
use crate::state::{Shared, Stack, TcpEntry};
use crate::stats::StatsCounters;

/// Accepts host connections on `listener` for as long as the stack runs.
pub(crate) fn serve(shared: Rc<Shared>, listener: std::net::TcpListener, port: PublishedPort) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, ?port, "netstack: published port unusable");
            return;
        }
    };
    tokio::task::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => connect_guest(&shared, stream, peer, port.guest_port),
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "netstack: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// Opens a connection from the gateway to the guest port and splices the host client to it.
fn connect_guest(
    shared: &Rc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    guest_port: u16,
) {
    let config = &shared.config;
    let mut guard = shared.stack.borrow_mut();
    let st: &mut Stack = &mut guard;
    if st.tcp.len() >= config.max_tcp_flows {
        StatsCounters::add(&shared.stats.flows_denied, 1);
        shared.emit(NetEvent::ConnectionCapReached {
            transport: Transport::Tcp,
            limit: config.max_tcp_flows,
            dst: peer,
        });
        let _ = stream.set_zero_linger();
        return;
    }
    let guest = SocketAddrV4::new(config.guest_ip, guest_port);
    let Some(local_port) = st.alloc_port(guest, config.gateway_ip) else {
        return;
    };
    let mut socket = st.tcp_socket(config.tcp_buffer_size);
    let remote = (IpAddress::Ipv4(config.guest_ip), guest_port);
    let local = (IpAddress::Ipv4(config.gateway_ip), local_port);
    if let Err(e) = socket.connect(st.iface.context(), remote, local) {
        tracing::warn!(error = %e, "netstack: connect to guest failed");
        return;
    }
    let handle = st.sockets.add(socket);
    let key = TcpKey {
        guest,
        remote: SocketAddrV4::new(config.gateway_ip, local_port),
    };
    st.tcp.insert(key, TcpEntry::Active(handle));
    StatsCounters::add(&shared.stats.flows_total, 1);
    shared.sync_flow_stats(st);
    drop(guard);
    let _ = stream.set_nodelay(true);
    shared.emit(NetEvent::IngressAccepted { peer, guest_port });
    shared.wake.notify_one();
    tokio::task::spawn_local(proxy::tcp::splice(
        shared.clone(),
        key,
        handle,
        stream,
        peer,
    ));
}
