//! TLS flows under interception: the guest's ClientHello is read first (bounded in size and
//! time) and decides ([`crate::tls::policy`]): splice untouched, terminate TLS with a minted
//! leaf and hand the requests to the HTTP engine ([`crate::intercept::serve`]), or refuse.
//!
//! The bytes read to decide are replayed, so nothing the guest sent is lost either way: to
//! the upstream socket before splicing, or into the TLS acceptor through [`Replay`].

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::guest_stream::{Counters, GuestStream, Replay};
use super::tcp::{connect, finish, splice};
use crate::events::{NetEvent, Transport};
use crate::frames::TcpKey;
use crate::intercept::{self, Connector, Session, UpstreamConn};
use crate::policy::FlowInfo;
use crate::state::Shared;
use crate::stats::StatsCounters;
use crate::tls::client_hello::{self, Peeked, MAX_PEEK};
use crate::tls::policy::Decision;
use crate::tls::upstream::{self, UpstreamError};
use crate::tls::Interceptor;

/// How long the guest has to send its ClientHello, and to finish its handshake.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// What the guest's first bytes were.
enum First {
    /// A ClientHello (or bytes that are not one) and everything read so far.
    Bytes(Peeked, Vec<u8>),
    /// The guest closed or reset before sending anything decisive.
    Gone,
}

/// Runs one guest TCP connection to a TLS port while interception is configured.
pub(crate) async fn tls_flow(
    shared: Rc<Shared>,
    key: TcpKey,
    handle: SocketHandle,
    flow: FlowInfo,
    tls: Arc<Interceptor>,
) {
    let guest = GuestStream {
        shared: shared.clone(),
        handle,
    };
    let dst = SocketAddr::V4(key.remote);
    let (peeked, bytes) = match read_hello(&guest).await {
        First::Bytes(peeked, bytes) => (peeked, bytes),
        First::Gone => {
            guest.abort();
            finish(&shared, key, handle);
            return;
        }
    };
    // Pins hold what the guest was answered (the host alias, not the loopback it maps to).
    let names = shared.pins.names(dst.ip());
    let (sni, why_no_sni) = match &peeked {
        Peeked::Hello(info) => (info.sni.clone(), None),
        Peeked::NotTls => (None, Some("not TLS")),
        Peeked::Malformed(reason) => (None, Some(*reason)),
        Peeked::Incomplete => (None, Some("no complete ClientHello in time")),
    };
    let decision = tls
        .policy
        .decide(sni.as_deref(), &names, &flow, &shared.policy.load());
    match decision {
        Decision::Bypass => {
            shared.emit(NetEvent::TlsBypassed { dst, sni });
            bypass(&shared, key, handle, &flow, bytes).await;
        }
        Decision::Refuse(reason) => {
            let reason = match why_no_sni {
                Some(why) => format!("{reason} ({why})"),
                None => reason,
            };
            shared.emit(NetEvent::TlsRefused { dst, sni, reason });
            guest.abort();
            finish(&shared, key, handle);
        }
        Decision::Intercept { sni, pinned } => {
            // Every request is checked by the engine: a policy change need not end it for
            // having been opened uninspected.
            if let Some(policed) = shared.stack.borrow_mut().policed.get_mut(&key) {
                policed.inspected = true;
            }
            shared.emit(NetEvent::TlsIntercepted {
                dst,
                sni: sni.clone(),
                pinned,
            });
            let session = Session {
                sni: Some(sni),
                pinned,
                flow,
            };
            intercept_flow(&shared, key, handle, session, &tls, bytes).await;
        }
    }
}

/// Reads until the ClientHello is complete or decidedly absent: at most [`MAX_PEEK`] bytes
/// and [`HELLO_WAIT`].
async fn read_hello(guest: &GuestStream) -> First {
    let mut reader = GuestStream {
        shared: guest.shared.clone(),
        handle: guest.handle,
    };
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    loop {
        let room = (MAX_PEEK - bytes.len()).min(chunk.len());
        let read = tokio::time::timeout_at(deadline, reader.read(&mut chunk[..room])).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return First::Gone,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            // Silent guests are decided on what they sent (server-first protocols).
            Err(_) => return First::Bytes(client_hello::peek(&bytes), bytes),
        }
        match client_hello::peek(&bytes) {
            Peeked::Incomplete if bytes.len() < MAX_PEEK => continue,
            Peeked::Incomplete => {
                return First::Bytes(Peeked::Malformed("ClientHello too fragmented"), bytes)
            }
            peeked => return First::Bytes(peeked, bytes),
        }
    }
}

/// Splices the connection to its destination untouched, `first` (what was read to decide)
/// going up first.
async fn bypass(
    shared: &Rc<Shared>,
    key: TcpKey,
    handle: SocketHandle,
    flow: &FlowInfo,
    first: Vec<u8>,
) {
    let dst = SocketAddr::V4(key.remote);
    let connected = async {
        let mut stream = connect(shared, flow.dst).await?;
        stream.write_all(&first).await?;
        io::Result::Ok(stream)
    };
    match connected.await {
        Ok(stream) => {
            StatsCounters::add(&shared.stats.bytes_up, first.len() as u64);
            splice(shared.clone(), key, handle, stream, dst).await;
        }
        Err(e) => {
            shared.emit(NetEvent::FlowFailed {
                transport: Transport::Tcp,
                dst,
                error: e.to_string(),
            });
            GuestStream {
                shared: shared.clone(),
                handle,
            }
            .abort();
            finish(shared, key, handle);
        }
    }
}

/// Terminates the guest's TLS with a minted leaf and serves its requests through the HTTP
/// engine, each upstream connection verified. The first upstream connection is opened before
/// the guest's handshake completes: a server that fails verification means the guest never
/// gets a certificate for it, only a reset.
async fn intercept_flow(
    shared: &Rc<Shared>,
    key: TcpKey,
    handle: SocketHandle,
    session: Session,
    tls: &Arc<Interceptor>,
    first: Vec<u8>,
) {
    let guest = GuestStream {
        shared: shared.clone(),
        handle,
    };
    let dst = SocketAddr::V4(key.remote);
    let connector = connector(shared.clone(), tls.client.clone(), &session, dst);
    let Ok(upstream) = connector().await else {
        // The connector reported why.
        guest.abort();
        finish(shared, key, handle);
        return;
    };
    let counted = Counters::default();
    let inner = GuestStream {
        shared: shared.clone(),
        handle,
    };
    let replay = Replay::new(first, inner, counted.clone());
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let accepted = tokio::time::timeout(HELLO_WAIT, acceptor.accept(replay)).await;
    let stream = match accepted {
        // What rustls read must be what the decision was made on (the leaf is minted for it).
        Ok(Ok(stream)) if same_name(stream.get_ref().1.server_name(), session.sni.as_deref()) => {
            stream
        }
        failed => {
            let reason = match failed {
                Ok(Ok(_)) => "the ClientHello's server name changed under TLS".to_owned(),
                Ok(Err(e)) => format!("guest TLS handshake failed: {e}"),
                Err(_) => "guest TLS handshake timed out".to_owned(),
            };
            shared.emit(NetEvent::TlsRefused {
                dst,
                sni: session.sni,
                reason,
            });
            guest.abort();
            finish(shared, key, handle);
            return;
        }
    };
    let guest_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let connector = first_then(upstream, connector);
    intercept::serve(
        shared.clone(),
        Box::new(stream),
        guest_h2,
        session,
        connector,
    )
    .await;
    guest.close_gracefully().await;
    finish(shared, key, handle);
    shared.emit(NetEvent::FlowClosed {
        transport: Transport::Tcp,
        dst,
        bytes_up: counted.up.get(),
        bytes_down: counted.down.get(),
    });
}

/// Whether two server names are the same DNS name.
fn same_name(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a
            .trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.')),
        (None, None) => true,
        _ => false,
    }
}

/// A connector handing out `ready` first, then new connections from `connect`.
fn first_then(ready: UpstreamConn, connect: Connector) -> Connector {
    let ready = Rc::new(Cell::new(Some(ready)));
    Rc::new(move || match ready.take() {
        Some(conn) => Box::pin(async move { Ok(conn) }),
        None => connect(),
    })
}

/// Opens verified upstream connections: TCP to the flow's destination, TLS with the guest's
/// SNI; a certificate that fails verification is reported and refused.
fn connector(
    shared: Rc<Shared>,
    config: Arc<rustls::ClientConfig>,
    session: &Session,
    dst: SocketAddr,
) -> Connector {
    let sni = session.sni.clone().unwrap_or_default();
    let real = session.flow.dst;
    Rc::new(move || {
        let (shared, config, sni) = (shared.clone(), config.clone(), sni.clone());
        Box::pin(async move {
            let tcp = connect(&shared, real).await.inspect_err(|e| {
                shared.emit(NetEvent::FlowFailed {
                    transport: Transport::Tcp,
                    dst,
                    error: e.to_string(),
                })
            })?;
            let limit = shared.config.connect_timeout;
            let handshake = tokio::time::timeout(limit, upstream::handshake(config, tcp, &sni))
                .await
                .unwrap_or_else(|_| {
                    let timeout =
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
                    Err(UpstreamError::Io(timeout))
                });
            match handshake {
                Ok((io, h2)) => Ok(UpstreamConn {
                    io: Box::new(io),
                    h2,
                }),
                Err(e) => {
                    let event = match &e {
                        UpstreamError::Rejected(reason) => NetEvent::TlsUpstreamRejected {
                            dst,
                            sni: sni.clone(),
                            reason: reason.clone(),
                        },
                        other => NetEvent::FlowFailed {
                            transport: Transport::Tcp,
                            dst,
                            error: other.to_string(),
                        },
                    };
                    shared.emit(event);
                    Err(io::Error::other(e))
                }
            }
        })
    })
}
