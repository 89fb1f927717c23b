//! Plain-HTTP flows under HTTP policy (or carrying a sandbox with secrets): the guest's
//! connection is served by the same HTTP engine as intercepted TLS ([`crate::intercept`]), so
//! every request of a keep-alive connection, and every stream of a prior-knowledge HTTP/2
//! (`h2c`) connection, is checked on its own; a denied request gets its `403` and the
//! connection goes on.
//!
//! The engine parses each request with hyper and re-frames it for the host, which also closes
//! request smuggling: the host only ever sees the framing the engine chose. The host
//! connection opens with the first allowed request, so a denied first request never connects.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use tokio::io::AsyncReadExt;

use super::guest_stream::{Counters, GuestStream, Replay};
use super::tcp::{connect, finish};
use crate::events::{NetEvent, Transport};
use crate::frames::TcpKey;
use crate::intercept::{self, Connector, Session, UpstreamConn};
use crate::policy::FlowInfo;
use crate::state::Shared;

/// How long a guest may wait before the first bytes of its first request.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(30);
/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs one inspected plain-HTTP connection of the guest to its end.
pub(crate) async fn http_flow(
    shared: Rc<Shared>,
    key: TcpKey,
    handle: SocketHandle,
    flow: FlowInfo,
) {
    let guest = GuestStream {
        shared: shared.clone(),
        handle,
    };
    let Some((first, h2)) = read_start(&shared, handle).await else {
        guest.close_gracefully().await;
        finish(&shared, key, handle);
        return;
    };
    let dst = SocketAddr::V4(key.remote);
    let counters = Counters::default();
    let replay = Replay::new(first, guest_stream(&shared, handle), counters.clone());
    let opened = Rc::new(Cell::new(false));
    let connector = plain_connector(shared.clone(), flow.dst, dst, h2, opened.clone());
    let session = Session {
        sni: None,
        pinned: false,
        flow,
    };
    intercept::serve(shared.clone(), Box::new(replay), h2, session, connector).await;
    guest.close_gracefully().await;
    finish(&shared, key, handle);
    if opened.get() {
        shared.emit(NetEvent::FlowClosed {
            transport: Transport::Tcp,
            dst,
            bytes_up: counters.up.get(),
            bytes_down: counters.down.get(),
        });
    }
}

fn guest_stream(shared: &Rc<Shared>, handle: SocketHandle) -> GuestStream {
    GuestStream {
        shared: shared.clone(),
        handle,
    }
}

/// Reads until it is clear whether the guest speaks HTTP/1.x or opens with the HTTP/2 preface.
/// `None` when the guest closed, reset or stayed silent for [`FIRST_BYTES_WAIT`] first.
async fn read_start(shared: &Rc<Shared>, handle: SocketHandle) -> Option<(Vec<u8>, bool)> {
    let mut guest = guest_stream(shared, handle);
    let mut bytes = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; H2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
    loop {
        let room = H2_PREFACE.len() - bytes.len();
        match tokio::time::timeout_at(deadline, guest.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            // What was read is handed on: hyper answers a truncated request itself.
            _ => return (!bytes.is_empty()).then_some((bytes, false)),
        }
        if !H2_PREFACE.starts_with(&bytes) {
            return Some((bytes, false));
        }
        if bytes.len() == H2_PREFACE.len() {
            return Some((bytes, true));
        }
    }
}

/// Opens plain TCP connections to the flow's destination; `h2` when the guest spoke HTTP/2 with
/// prior knowledge (it knows the host does, and a gRPC call must stay HTTP/2). `opened` tells
/// whether one was ever opened (the flow then gets its closing event).
fn plain_connector(
    shared: Rc<Shared>,
    real: SocketAddr,
    dst: SocketAddr,
    h2: bool,
    opened: Rc<Cell<bool>>,
) -> Connector {
    Rc::new(move || {
        let (shared, opened) = (shared.clone(), opened.clone());
        Box::pin(async move {
            let stream = connect(&shared, real).await.inspect_err(|e| {
                shared.emit(NetEvent::FlowFailed {
                    transport: Transport::Tcp,
                    dst,
                    error: e.to_string(),
                })
            })?;
            opened.set(true);
            io::Result::Ok(UpstreamConn {
                io: Box::new(stream),
                h2,
            })
        })
    })
}
