//! Guest TCP flows: policy first, then the host connect, and only then the guest's handshake
//! completes; afterwards bytes move between the smoltcp socket and the host socket in place.
//!
//! Back-pressure is the TCP window: a host socket that does not drain leaves the data in the
//! smoltcp receive buffer, whose window then closes towards the guest, and host data is only
//! read when the smoltcp send buffer has room. Half-closes travel both ways (guest FIN ->
//! `shutdown(SHUT_WR)` on the host socket; host EOF -> FIN to the guest); a reset on either side
//! resets the other.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::guest_stream::{handshaking, GuestStream};
use msbvm_plugins::Hook;

use crate::config::DNS_PORT;
use crate::events::{NetEvent, Transport};
use crate::frames::TcpKey;
use crate::policy::FlowInfo;
use crate::state::{PolicedFlow, Shared, Stack, TcpEntry};
use crate::stats::StatsCounters;
use crate::tls::is_tls_port;

/// Plain HTTP's port, inspected whenever the sandbox has secrets.
const HTTP_PORT: u16 = 80;
/// Buffers of a DNS-over-TCP connection (messages are at most 64 KiB).
const DNS_TCP_BUFFER: usize = 64 * 1024;
/// A DNS-over-TCP connection idle this long is closed.
const DNS_TCP_IDLE: Duration = Duration::from_secs(30);

/// Handles the guest's SYN for a 4-tuple the stack does not know yet.
pub(crate) fn new_flow(shared: &Rc<Shared>, st: &mut Stack, key: TcpKey, syn: &[u8]) {
    let config = &shared.config;
    let dst = key.remote;
    let at_cap = st.tcp.len() >= config.max_tcp_flows;
    if *dst.ip() == config.gateway_ip {
        // The gateway serves DNS and nothing else.
        if dst.port() == DNS_PORT && !at_cap {
            let handle = st.accept_syn(key, syn, DNS_TCP_BUFFER);
            tokio::task::spawn_local(dns_over_tcp(shared.clone(), key, handle));
        } else {
            st.send_rst(key, syn);
        }
        return;
    }
    if at_cap {
        StatsCounters::add(&shared.stats.flows_denied, 1);
        shared.emit(NetEvent::ConnectionCapReached {
            transport: Transport::Tcp,
            limit: config.max_tcp_flows,
            dst: SocketAddr::V4(dst),
        });
        st.send_rst(key, syn);
        return;
    }
    let Some((flow, rule)) = shared.check_flow(Transport::Tcp, dst) else {
        st.send_rst(key, syn);
        return;
    };
    // With secrets, plain HTTP is inspected too: a placeholder in it must be blocked.
    let inspected = shared.policy.load().wants_http_inspection(dst.port())
        || (!config.secrets.is_empty() && dst.port() == HTTP_PORT);
    let names = shared.pins.names(flow.dst.ip());
    st.policed.insert(key, PolicedFlow { names, inspected });
    if shared.plugins.wants(Hook::Flow) {
        // Held like a connecting flow (the guest's SYN retransmits are ignored, a policy change
        // can end it) until the plugins answer.
        st.tcp
            .insert(key, TcpEntry::Connecting { syn: syn.to_vec() });
        let asked = ask_plugins_then_open(shared.clone(), key, flow, rule, inspected);
        tokio::task::spawn_local(asked);
        return;
    }
    shared.flow_allowed(Transport::Tcp, dst, rule);
    open(shared, st, key, syn, flow, inspected);
}

/// Opens the flow once the plugins allowed it; a denied one is reset.
async fn ask_plugins_then_open(
    shared: Rc<Shared>,
    key: TcpKey,
    flow: FlowInfo,
    rule: Option<String>,
    inspected: bool,
) {
    let allowed = shared
        .plugins_allow_flow(Transport::Tcp, key.remote, rule)
        .await;
    let mut st = shared.stack.borrow_mut();
    // A policy change may have ended it meanwhile.
    let Some(TcpEntry::Connecting { syn }) = st.tcp.remove(&key) else {
        return;
    };
    if allowed {
        open(&shared, &mut st, key, &syn, flow, inspected);
    } else {
        st.send_rst(key, &syn);
        st.policed.remove(&key);
    }
    st.poll();
    shared.sync_flow_stats(&st);
    shared.wake.notify_one();
}

/// Starts the flow's task: the host connect first for a plain flow; the guest's handshake
/// first where the request head (`inspected`) or the TLS ClientHello decides.
fn open(
    shared: &Rc<Shared>,
    st: &mut Stack,
    key: TcpKey,
    syn: &[u8],
    flow: FlowInfo,
    inspected: bool,
) {
    let config = &shared.config;
    let dst = key.remote;
    if let Some(tls) = shared.tls.as_ref().filter(|_| is_tls_port(dst.port())) {
        // The ClientHello decides, so the guest's handshake has to complete first.
        let handle = st.accept_syn(key, syn, config.tcp_buffer_size);
        let flow = super::tls_flow::tls_flow(shared.clone(), key, handle, flow, tls.clone());
        tokio::task::spawn_local(flow);
        return;
    }
    if inspected {
        // The request head decides, so the guest's handshake has to complete before connecting.
        let handle = st.accept_syn(key, syn, config.tcp_buffer_size);
        let flow = super::http_flow::http_flow(shared.clone(), key, handle, flow);
        tokio::task::spawn_local(flow);
    } else {
        st.tcp
            .insert(key, TcpEntry::Connecting { syn: syn.to_vec() });
        tokio::task::spawn_local(connect_then_accept(shared.clone(), key, flow));
    }
}

pub(crate) async fn connect(shared: &Shared, addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(shared.config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // The guest's own stack already coalesces; delaying again here only adds latency.
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_then_accept(shared: Rc<Shared>, key: TcpKey, flow: FlowInfo) {
    let result = connect(&shared, flow.dst).await;
    let accepted = {
        let mut st = shared.stack.borrow_mut();
        let Some(TcpEntry::Connecting { syn }) = st.tcp.remove(&key) else {
            return;
        };
        match result {
            Ok(stream) => {
                let handle = st.accept_syn(key, &syn, shared.config.tcp_buffer_size);
                st.poll();
                Ok((handle, stream))
            }
            Err(e) => {
                st.send_rst(key, &syn);
                st.policed.remove(&key);
                shared.sync_flow_stats(&st);
                Err(e)
            }
        }
    };
    match accepted {
        Ok((handle, stream)) => {
            splice(shared, key, handle, stream, SocketAddr::V4(key.remote)).await
        }
        Err(e) => shared.emit(NetEvent::FlowFailed {
            transport: Transport::Tcp,
            dst: SocketAddr::V4(key.remote),
            error: e.to_string(),
        }),
    }
}

/// Moves bytes both ways between the guest socket `handle` and `stream` until both are closed.
/// `peer` names the flow in the closing event.
pub(crate) async fn splice(
    shared: Rc<Shared>,
    key: TcpKey,
    handle: SocketHandle,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let mut flow = Splice {
        stream,
        stats: shared.stats.clone(),
        up_done: false,
        down_done: false,
        reset: false,
        up: 0,
        down: 0,
    };
    poll_fn(|cx| {
        let mut st = shared.stack.borrow_mut();
        let sock = st.sockets.get_mut::<tcp::Socket>(handle);
        if handshaking(sock.state()) {
            sock.register_recv_waker(cx.waker());
            return Poll::Pending;
        }
        let moved_up = flow.guest_to_host(sock, cx);
        let moved_down = flow.host_to_guest(sock, cx);
        if moved_up || moved_down {
            shared.wake.notify_one();
        }
        flow.poll_end(sock, cx)
    })
    .await;
    if flow.reset {
        // Reset the host side too rather than let it see a clean EOF.
        let _ = flow.stream.set_zero_linger();
    }
    drop(flow.stream);
    finish(&shared, key, handle);
    shared.emit(NetEvent::FlowClosed {
        transport: Transport::Tcp,
        dst: peer,
        bytes_up: flow.up,
        bytes_down: flow.down,
    });
}

/// Where one spliced flow stands, each way.
struct Splice {
    /// The host end.
    stream: TcpStream,
    stats: Arc<StatsCounters>,
    /// The guest finished sending and the host socket was shut down for writing.
    up_done: bool,
    /// The host finished sending and the guest got our FIN.
    down_done: bool,
    /// Either side reset or failed: both get a reset.
    reset: bool,
    /// Bytes moved guest to host.
    up: u64,
    /// Bytes moved host to guest.
    down: u64,
}

impl Splice {
    /// Moves what the guest sent to the host as far as the host socket takes it, and passes
    /// the guest's FIN on. True when bytes moved.
    fn guest_to_host(&mut self, sock: &mut tcp::Socket<'static>, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        while !self.up_done && !self.reset {
            if sock.can_recv() {
                let written =
                    sock.recv(|buf| match Pin::new(&mut self.stream).poll_write(cx, buf) {
                        Poll::Ready(Ok(n)) => (n, Ok(n)),
                        Poll::Ready(Err(e)) => (0, Err(e)),
                        Poll::Pending => (0, Ok(0)),
                    });
                match written {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        self.up += n as u64;
                        StatsCounters::add(&self.stats.bytes_up, n as u64);
                        moved = true;
                    }
                    Ok(Err(_)) | Err(_) => self.reset = true,
                }
            } else if sock.may_recv() {
                sock.register_recv_waker(cx.waker());
                break;
            } else {
                match sock.recv(|_| (0, ())) {
                    Err(RecvError::Finished) => {
                        match Pin::new(&mut self.stream).poll_shutdown(cx) {
                            Poll::Ready(_) => self.up_done = true,
                            Poll::Pending => break,
                        }
                    }
                    _ => self.reset = true,
                }
            }
        }
        moved
    }

    /// Moves what the host sent to the guest as far as the smoltcp send buffer takes it, and
    /// closes towards the guest at the host's EOF. True when bytes (or the FIN) moved.
    fn host_to_guest(&mut self, sock: &mut tcp::Socket<'static>, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        while !self.down_done && !self.reset {
            if !sock.may_send() {
                // Only a reset or a timeout closes our sending half before we do.
                self.reset = true;
                break;
            }
            if !sock.can_send() {
                sock.register_send_waker(cx.waker());
                break;
            }
            let read = sock.send(|buf| {
                let mut read_buf = ReadBuf::new(buf);
                match Pin::new(&mut self.stream).poll_read(cx, &mut read_buf) {
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        (n, Ok(Some(n)))
                    }
                    Poll::Ready(Err(e)) => (0, Err(e)),
                    Poll::Pending => (0, Ok(None)),
                }
            });
            match read {
                Ok(Ok(Some(0))) => {
                    sock.close();
                    self.down_done = true;
                    moved = true;
                }
                Ok(Ok(Some(n))) => {
                    self.down += n as u64;
                    StatsCounters::add(&self.stats.bytes_down, n as u64);
                    moved = true;
                }
                Ok(Ok(None)) => break,
                Ok(Err(_)) | Err(_) => self.reset = true,
            }
        }
        moved
    }

    /// Ready once the flow is over: at once after a reset (the guest socket is aborted), or
    /// when both directions finished and the guest socket closed.
    fn poll_end(&self, sock: &mut tcp::Socket<'static>, cx: &mut Context<'_>) -> Poll<()> {
        if self.reset {
            sock.abort();
            return Poll::Ready(());
        }
        if self.up_done && self.down_done {
            if matches!(sock.state(), State::Closed | State::TimeWait) {
                return Poll::Ready(());
            }
            sock.register_recv_waker(cx.waker());
            sock.register_send_waker(cx.waker());
        }
        Poll::Pending
    }
}

/// Lets smoltcp send what the socket still owes (a RST after abort), then forgets the flow.
pub(crate) fn finish(shared: &Shared, key: TcpKey, handle: SocketHandle) {
    let mut st = shared.stack.borrow_mut();
    st.poll();
    st.remove_tcp(&key, handle);
    shared.sync_flow_stats(&st);
}

/// DNS over TCP to the gateway: length-prefixed messages to the DNS server, answers back.
async fn dns_over_tcp(shared: Rc<Shared>, key: TcpKey, handle: SocketHandle) {
    let mut guest = GuestStream {
        shared: shared.clone(),
        handle,
    };
    loop {
        let mut len = [0u8; 2];
        let read = async {
            guest.read_exact(&mut len).await?;
            let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
            guest.read_exact(&mut message).await?;
            io::Result::Ok(message)
        };
        let Ok(Ok(query)) = tokio::time::timeout(DNS_TCP_IDLE, read).await else {
            break;
        };
        let policy = shared.policy.load_full();
        let emit = |event| shared.emit(event);
        let Some(answer) = shared.dns.handle_tcp(&query, &policy, &emit).await else {
            continue;
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            continue;
        };
        let written = async {
            guest.write_all(&answer_len.to_be_bytes()).await?;
            guest.write_all(&answer).await
        };
        if written.await.is_err() {
            break;
        }
    }
    guest.close_gracefully().await;
    finish(&shared, key, handle);
}
