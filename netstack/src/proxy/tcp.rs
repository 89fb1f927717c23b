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
use std::task::Poll;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::guest_stream::{handshaking, GuestStream};
use crate::config::DNS_PORT;
use crate::events::{NetEvent, Transport};
use crate::http::{self, ParseOutcome};
use crate::policy::{FlowInfo, Verdict};
use crate::stack::frames::TcpKey;
use crate::stack::stats::StatsCounters;
use crate::stack::{Shared, Stack, TcpEntry};

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
    if shared.policy.load().wants_http_inspection(dst.port()) {
        // The request head decides, so the guest's handshake has to complete before connecting.
        let handle = st.accept_syn(key, syn, config.tcp_buffer_size);
        tokio::task::spawn_local(http_flow(shared.clone(), key, handle, flow));
    } else {
        st.tcp
            .insert(key, TcpEntry::Connecting { syn: syn.to_vec() });
        tokio::task::spawn_local(connect_then_accept(shared.clone(), key, flow));
    }
}

async fn connect(shared: &Shared, addr: SocketAddr) -> io::Result<TcpStream> {
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
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let (mut up_done, mut down_done, mut reset) = (false, false, false);
    let (mut up, mut down) = (0u64, 0u64);
    let stats = shared.stats.clone();
    poll_fn(|cx| {
        let mut st = shared.stack.borrow_mut();
        let sock = st.sockets.get_mut::<tcp::Socket>(handle);
        if handshaking(sock.state()) {
            sock.register_recv_waker(cx.waker());
            return Poll::Pending;
        }
        let mut moved = false;
        // Guest to host.
        while !up_done && !reset {
            if sock.can_recv() {
                let written = sock.recv(|buf| match Pin::new(&mut stream).poll_write(cx, buf) {
                    Poll::Ready(Ok(n)) => (n, Ok(n)),
                    Poll::Ready(Err(e)) => (0, Err(e)),
                    Poll::Pending => (0, Ok(0)),
                });
                match written {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        up += n as u64;
                        StatsCounters::add(&stats.bytes_up, n as u64);
                        moved = true;
                    }
                    Ok(Err(_)) | Err(_) => reset = true,
                }
            } else if sock.may_recv() {
                sock.register_recv_waker(cx.waker());
                break;
            } else {
                match sock.recv(|_| (0, ())) {
                    Err(RecvError::Finished) => match Pin::new(&mut stream).poll_shutdown(cx) {
                        Poll::Ready(_) => up_done = true,
                        Poll::Pending => break,
                    },
                    _ => reset = true,
                }
            }
        }
        // Host to guest.
        while !down_done && !reset {
            if !sock.may_send() {
                // Only a reset or a timeout closes our sending half before we do.
                reset = true;
                break;
            }
            if !sock.can_send() {
                sock.register_send_waker(cx.waker());
                break;
            }
            let read = sock.send(|buf| {
                let mut read_buf = ReadBuf::new(buf);
                match Pin::new(&mut stream).poll_read(cx, &mut read_buf) {
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
                    down_done = true;
                    moved = true;
                }
                Ok(Ok(Some(n))) => {
                    down += n as u64;
                    StatsCounters::add(&stats.bytes_down, n as u64);
                    moved = true;
                }
                Ok(Ok(None)) => break,
                Ok(Err(_)) | Err(_) => reset = true,
            }
        }
        if moved {
            shared.wake.notify_one();
        }
        if reset {
            sock.abort();
            return Poll::Ready(());
        }
        if up_done && down_done {
            if matches!(sock.state(), State::Closed | State::TimeWait) {
                return Poll::Ready(());
            }
            sock.register_recv_waker(cx.waker());
            sock.register_send_waker(cx.waker());
        }
        Poll::Pending
    })
    .await;
    if reset {
        // Reset the host side too rather than let it see a clean EOF.
        let _ = stream.set_zero_linger();
    }
    drop(stream);
    finish(&shared, key, handle);
    shared.emit(NetEvent::FlowClosed {
        transport: Transport::Tcp,
        dst: peer,
        bytes_up: up,
        bytes_down: down,
    });
}

/// Lets smoltcp send what the socket still owes (a RST after abort), then forgets the flow.
fn finish(shared: &Shared, key: TcpKey, handle: SocketHandle) {
    let mut st = shared.stack.borrow_mut();
    st.poll();
    st.remove_tcp(&key, handle);
    shared.sync_flow_stats(&st);
}

/// An HTTP flow under HTTP policy: read the request head, ask policy, then connect or answer 403.
///
/// Only the first request of a connection is inspected: later keep-alive requests would need the
/// body framing of every request followed, which this does not do.
async fn http_flow(shared: Rc<Shared>, key: TcpKey, handle: SocketHandle, flow: FlowInfo) {
    let mut guest = GuestStream {
        shared: shared.clone(),
        handle,
    };
    let max = shared.config.max_http_head;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let parsed = loop {
        match tokio::time::timeout(Duration::from_secs(30), guest.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => {
                guest.close_gracefully().await;
                finish(&shared, key, handle);
                return;
            }
        }
        match http::parse_request_head(&head) {
            ParseOutcome::Complete { info, .. } => break Ok(info),
            ParseOutcome::Incomplete if head.len() < max => continue,
            ParseOutcome::Incomplete => break Err(format!("request head over {max} bytes")),
            ParseOutcome::Invalid(e) => break Err(format!("not an HTTP request: {e}")),
        }
    };
    let verdict = match &parsed {
        Ok(info) => shared.policy.load().check_http(info, &flow),
        Err(reason) => Verdict::Deny {
            rule: None,
            reason: reason.clone(),
        },
    };
    let (method, host, path) = match &parsed {
        Ok(info) => (info.method.clone(), info.host.clone(), info.path.clone()),
        Err(_) => (String::new(), String::new(), String::new()),
    };
    match verdict {
        Verdict::Allow { rule } => {
            shared.emit(NetEvent::HttpRequest {
                method,
                host,
                path,
                allowed: true,
                rule,
            });
            match connect(&shared, flow.dst).await {
                Ok(mut stream) => {
                    if stream.write_all(&head).await.is_ok() {
                        let n = head.len() as u64;
                        StatsCounters::add(&shared.stats.bytes_up, n);
                        splice(shared, key, handle, stream, SocketAddr::V4(key.remote)).await;
                        return;
                    }
                    guest.abort();
                }
                Err(e) => {
                    guest.abort();
                    shared.emit(NetEvent::FlowFailed {
                        transport: Transport::Tcp,
                        dst: SocketAddr::V4(key.remote),
                        error: e.to_string(),
                    });
                }
            }
        }
        Verdict::Deny { rule, reason } => {
            shared.emit(NetEvent::HttpRequest {
                method,
                host,
                path,
                allowed: false,
                rule: rule.clone(),
            });
            let body = match &rule {
                Some(rule) => {
                    format!("Blocked by the sandbox network policy (rule {rule}): {reason}\n")
                }
                None => format!("Blocked by the sandbox network policy: {reason}\n"),
            };
            let response = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = guest.write_all(response.as_bytes()).await;
            guest.close_gracefully().await;
        }
    }
    finish(&shared, key, handle);
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
