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
use crate::config::DNS_PORT;
use crate::events::{NetEvent, Transport};
use crate::frames::TcpKey;
use crate::http;
use crate::policy::{FlowInfo, Verdict};
use crate::secrets::{Scanner, SecretSet};
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
    let Some(flow) = shared.check_flow(Transport::Tcp, dst) else {
        st.send_rst(key, syn);
        return;
    };
    // With secrets, plain HTTP is inspected too: a placeholder in it must be blocked.
    let inspected = shared.policy.load().wants_http_inspection(dst.port())
        || (!config.secrets.is_empty() && dst.port() == HTTP_PORT);
    let names = shared.pins.names(flow.dst.ip());
    st.policed.insert(key, PolicedFlow { names, inspected });
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
        tokio::task::spawn_local(http_flow(shared.clone(), key, handle, flow));
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

/// How long a guest may wait before its first request head on an inspected connection.
const FIRST_HEAD_WAIT: Duration = Duration::from_secs(30);
/// How long a refused request waits for the responses to earlier requests before its 403.
const RESPONSE_DRAIN_WAIT: Duration = Duration::from_secs(30);
/// Read size of an inspected connection, each way.
const INSPECT_CHUNK: usize = 16 * 1024;

/// An HTTP flow under HTTP policy: every request head on the connection is checked before it
/// is forwarded (see [`http::RequestStream`]); the host connection opens with the first allowed
/// request. A refused request gets a `403` from the stack after the responses to the requests
/// before it, and the connection ends there.
async fn http_flow(shared: Rc<Shared>, key: TcpKey, handle: SocketHandle, flow: FlowInfo) {
    let secrets = SecretSet::new(&shared.config.secrets);
    // Plain HTTP is never eligible for a secret: every placeholder is looked for.
    let detector = secrets.detector(&[]);
    let mut conn = Inspected {
        secrets,
        detector,
        last_host: String::new(),
        shared,
        key,
        handle,
        flow,
        host: None,
        down: None,
        up: 0,
    };
    let end = conn.forward_requests().await;
    conn.finish(end).await;
}

/// How the guest-to-host direction of an inspected connection ended.
enum GuestEnd {
    /// The guest closed its sending half (or never sent a request in time).
    Eof,
    /// A request was refused.
    Refused {
        rule: Option<String>,
        reason: String,
    },
    /// The guest reset, or the host side failed.
    Abort,
    /// The host finished sending first; `clean` unless it reset.
    HostDone { clean: bool },
}

/// What one read from the guest gave.
enum Read {
    Data(usize),
    End(GuestEnd),
}

/// The state of one inspected connection.
struct Inspected {
    shared: Rc<Shared>,
    secrets: SecretSet,
    /// Looks for placeholders in everything the guest sends (plain HTTP may carry none).
    detector: Scanner,
    /// The host of the request whose body is being forwarded.
    last_host: String,
    key: TcpKey,
    handle: SocketHandle,
    flow: FlowInfo,
    /// The host connection's sending half, once the first request was allowed.
    host: Option<tokio::net::tcp::OwnedWriteHalf>,
    /// The task copying the host's responses to the guest: (bytes, ended cleanly).
    down: Option<tokio::task::JoinHandle<(u64, bool)>>,
    up: u64,
}

impl Inspected {
    fn guest(&self) -> GuestStream {
        GuestStream {
            shared: self.shared.clone(),
            handle: self.handle,
        }
    }

    /// Reads the guest's stream, checks each request head and forwards what is allowed.
    async fn forward_requests(&mut self) -> GuestEnd {
        let mut guest = self.guest();
        let mut requests = http::RequestStream::new(self.shared.config.max_http_head);
        let mut chunk = vec![0u8; INSPECT_CHUNK];
        loop {
            let n = match self.read_guest(&mut guest, &mut chunk).await {
                Read::Data(n) => n,
                Read::End(end) => return end,
            };
            for piece in requests.feed(&chunk[..n]) {
                let end = match piece {
                    http::Piece::Head { info, bytes } => self.request(info, &bytes).await,
                    http::Piece::Body(bytes) => match self.placeholder_in(&bytes, None) {
                        Some(end) => Some(end),
                        None => (!self.send_up(&bytes).await).then_some(GuestEnd::Abort),
                    },
                    http::Piece::Framing(line) => {
                        let host = self.last_host.clone();
                        match self.placeholder_in(&line, Some(&host)) {
                            Some(end) => Some(end),
                            None => (!self.send_up(&line).await).then_some(GuestEnd::Abort),
                        }
                    }
                    http::Piece::Invalid(reason) => Some(GuestEnd::Refused {
                        rule: None,
                        reason: format!("not an HTTP request: {reason}"),
                    }),
                };
                if let Some(end) = end {
                    return end;
                }
            }
        }
    }

    /// The next bytes from the guest, or why there are none.
    async fn read_guest(&mut self, guest: &mut GuestStream, chunk: &mut [u8]) -> Read {
        let first = self.host.is_none();
        let read = async {
            if first {
                tokio::time::timeout(FIRST_HEAD_WAIT, guest.read(chunk))
                    .await
                    .unwrap_or(Ok(0))
            } else {
                guest.read(chunk).await
            }
        };
        let down = async {
            match self.down.as_mut() {
                Some(task) => task.await.unwrap_or((0, false)),
                None => std::future::pending().await,
            }
        };
        let host_done = tokio::select! {
            read = read => return match read {
                Ok(0) => Read::End(GuestEnd::Eof),
                Ok(n) => Read::Data(n),
                Err(_) => Read::End(GuestEnd::Abort),
            },
            done = down => done,
        };
        self.down = None;
        Read::End(GuestEnd::HostDone { clean: host_done.1 })
    }

    /// Refuses the request when `bytes` (a head, or body bytes after earlier ones) complete a
    /// secret's placeholder.
    fn placeholder_in(&mut self, bytes: &[u8], head: Option<&str>) -> Option<GuestEnd> {
        let found = match head {
            Some(host) => {
                self.last_host = host.to_owned();
                self.detector.scan_once(bytes)
            }
            None => self.detector.feed(bytes),
        }?;
        let name = self.secrets.name(found).to_owned();
        self.shared.emit(NetEvent::SecretBlocked {
            secret: name.clone(),
            host: self.last_host.clone(),
        });
        Some(GuestEnd::Refused {
            rule: None,
            reason: format!(
                "secret {name} may not be sent to {} (plain HTTP)",
                self.last_host
            ),
        })
    }

    /// Checks one request head; forwards it when allowed. `Some` ends the connection.
    async fn request(&mut self, info: http::HttpInfo, head: &[u8]) -> Option<GuestEnd> {
        if let Some(end) = self.placeholder_in(head, Some(&info.host)) {
            return Some(end);
        }
        let verdict = self.shared.policy.load().check_http(&info, &self.flow);
        let (rule, refusal) = match verdict {
            Verdict::Allow { rule } => (rule, None),
            Verdict::Deny { rule, reason } => (rule, Some(reason)),
        };
        self.shared.emit(NetEvent::HttpRequest {
            method: info.method,
            host: info.host,
            path: info.path,
            allowed: refusal.is_none(),
            rule: rule.clone(),
        });
        if let Some(reason) = refusal {
            return Some(GuestEnd::Refused { rule, reason });
        }
        if self.host.is_none() && !self.connect().await {
            return Some(GuestEnd::Abort);
        }
        (!self.send_up(head).await).then_some(GuestEnd::Abort)
    }

    /// Opens the host connection and starts copying its responses to the guest.
    async fn connect(&mut self) -> bool {
        match connect(&self.shared, self.flow.dst).await {
            Ok(stream) => {
                let (read, write) = stream.into_split();
                self.host = Some(write);
                let copy = copy_down(self.guest(), read);
                self.down = Some(tokio::task::spawn_local(copy));
                true
            }
            Err(e) => {
                self.shared.emit(NetEvent::FlowFailed {
                    transport: Transport::Tcp,
                    dst: SocketAddr::V4(self.key.remote),
                    error: e.to_string(),
                });
                false
            }
        }
    }

    async fn send_up(&mut self, bytes: &[u8]) -> bool {
        let Some(host) = self.host.as_mut() else {
            return false;
        };
        if host.write_all(bytes).await.is_err() {
            return false;
        }
        self.up += bytes.len() as u64;
        StatsCounters::add(&self.shared.stats.bytes_up, bytes.len() as u64);
        true
    }

    /// Ends the connection the way `end` says, then forgets the flow.
    async fn finish(mut self, end: GuestEnd) {
        let guest = self.guest();
        let mut down_bytes = 0;
        match end {
            GuestEnd::Eof => {
                down_bytes = self.drain_down(None).await;
                guest.close_gracefully().await;
            }
            GuestEnd::Refused { rule, reason } => {
                down_bytes = self.drain_down(Some(RESPONSE_DRAIN_WAIT)).await;
                let mut writer = self.guest();
                let _ = writer.write_all(forbidden(&rule, &reason).as_bytes()).await;
                guest.close_gracefully().await;
            }
            GuestEnd::Abort => {
                if let Some(host) = &self.host {
                    // Reset the host side rather than let it see a clean EOF.
                    let _ = host.as_ref().set_zero_linger();
                }
                if let Some(task) = self.down.take() {
                    task.abort();
                }
                guest.abort();
            }
            GuestEnd::HostDone { clean: true } => guest.close_gracefully().await,
            GuestEnd::HostDone { clean: false } => guest.abort(),
        }
        let connected = self.host.take().is_some();
        finish(&self.shared, self.key, self.handle);
        if connected {
            self.shared.emit(NetEvent::FlowClosed {
                transport: Transport::Tcp,
                dst: SocketAddr::V4(self.key.remote),
                bytes_up: self.up,
                bytes_down: down_bytes,
            });
        }
    }

    /// Closes the host's receiving side of our requests and waits (bounded by `wait`) until the
    /// responses already under way reached the guest. Returns the bytes copied down.
    async fn drain_down(&mut self, wait: Option<Duration>) -> u64 {
        if let Some(host) = self.host.as_mut() {
            let _ = host.shutdown().await;
        }
        let Some(mut task) = self.down.take() else {
            return 0;
        };
        let done = match wait {
            Some(wait) => tokio::time::timeout(wait, &mut task).await.ok(),
            None => Some((&mut task).await),
        };
        match done {
            Some(Ok((bytes, _))) => bytes,
            _ => {
                task.abort();
                0
            }
        }
    }
}

/// Copies the host's responses to the guest until the host closes; returns the bytes copied
/// and whether the host ended cleanly. Leaves the guest connection open (the caller closes it,
/// perhaps after a 403).
async fn copy_down(
    mut guest: GuestStream,
    mut host: tokio::net::tcp::OwnedReadHalf,
) -> (u64, bool) {
    let mut buf = vec![0u8; INSPECT_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match host.read(&mut buf).await {
            Ok(0) => return (total, true),
            Ok(n) => n,
            Err(_) => return (total, false),
        };
        if guest.write_all(&buf[..n]).await.is_err() {
            return (total, false);
        }
        total += n as u64;
        StatsCounters::add(&guest.shared.stats.bytes_down, n as u64);
    }
}

/// The stack's answer to a refused request.
fn forbidden(rule: &Option<String>, reason: &str) -> String {
    let body = match rule {
        Some(rule) => format!("Blocked by the sandbox network policy (rule {rule}): {reason}\n"),
        None => format!("Blocked by the sandbox network policy: {reason}\n"),
    };
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
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
