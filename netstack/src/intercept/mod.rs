//! The HTTP engine behind inspected connections, intercepted TLS and plain HTTP alike: every
//! request of a guest connection (each keep-alive HTTP/1.1 request, each HTTP/2 stream) is
//! parsed by hyper, checked against HTTP policy, the TLS server name and the sandbox's secrets,
//! and forwarded on an upstream connection the caller provides, translating between HTTP/1.1
//! and HTTP/2 where the two sides negotiated differently. Requests are re-framed for the
//! upstream, so it only ever reads the framing the engine chose (no request smuggling).
//!
//! - A denied request gets a `403` of its own; the connection goes on (the next keep-alive
//!   request, the other HTTP/2 streams).
//! - On a connection with an SNI, the request's `Host` / `:authority` must be that name.
//! - Secrets ([`crate::secrets`]): a placeholder the request may not carry, in any encoding,
//!   in the request line, a header or the body, gets the request a `403` and a
//!   `secret_blocked` event; eligible placeholders are substituted (headers, and query and body
//!   where the secret opted in); secret values in responses become placeholders again.
//! - Bodies stream both ways with hyper's back-pressure; only bodies whose length a
//!   substitution or masking changes are buffered (so that `Content-Length` stays exact), up
//!   to [`request::MAX_BUFFERED_BODY`] each and [`request::BUFFER_BUDGET`] per connection;
//!   the others stream chunked.
//! - `Upgrade` requests on HTTP/1.1 pass once checked, WebSocket only (other protocols, `h2c`
//!   above all, could not be inspected). After the `101` the bytes are copied both ways as they
//!   are when the sandbox has no secrets, and relayed frame by frame under the secrets' rules
//!   when it has ([`websocket`]). `CONNECT` is refused.
//! - Limits: request heads (size and header count), HTTP/2 concurrent streams, and a
//!   connection without requests for [`IDLE_TIMEOUT`] is shut down gracefully.

mod body;
mod headers;
mod request;
#[cfg(test)]
mod tests;
mod upstream;
pub(crate) mod websocket;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::secrets::SecretSet;
use upstream::{Upstream, UpstreamParts, MAX_H1_UPSTREAMS};

/// A byte stream the engine can serve on or forward to.
pub(crate) trait AsyncIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> AsyncIo for T {}

/// A verified upstream connection, and whether it negotiated HTTP/2.
pub(crate) struct UpstreamConn {
    /// The connection (TLS already verified, or plain TCP for plain HTTP).
    pub io: Box<dyn AsyncIo>,
    /// ALPN gave `h2`.
    pub h2: bool,
}

/// Opens a fresh upstream connection for the guest connection being served.
pub(crate) type Connector =
    Rc<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<UpstreamConn>>>>>;

/// What the engine knows of the guest connection.
/// sni: the guest's SNI (lowercased; None for plain HTTP); pinned: the SNI is a name the
/// sandbox's DNS resolved to flow.dst
pub(crate) struct Session {
    /// The guest's TLS server name, lowercased; `None` for plain HTTP.
    pub sni: Option<String>,
    /// The SNI is a name the sandbox's DNS resolved to `flow.dst`.
    pub pinned: bool,
    /// The flow as policy saw it.
    pub flow: crate::policy::FlowInfo,
}

/// A connection without a request in progress for this long is shut down gracefully.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a guest may take to send a complete HTTP/1.1 request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most concurrent HTTP/2 streams of one guest connection.
const MAX_STREAMS: u32 = 128;
/// Most header lines of an HTTP/1.1 request.
const MAX_HEADERS: usize = 100;
/// Largest response head read from an HTTP/1.1 upstream.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;

/// Spawns hyper's background tasks on the current `LocalSet` (nothing here is `Send`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Counts requests in progress, and when the connection last had one.
struct Idle {
    active: Cell<usize>,
    since: Cell<Instant>,
}

/// Marks one request in progress while it lives.
struct Busy<'a>(&'a Idle);

impl Idle {
    fn busy(&self) -> Busy<'_> {
        self.active.set(self.active.get() + 1);
        Busy(self)
    }

    /// How long the connection has been without a request, if it is.
    fn idle_for(&self) -> Option<Duration> {
        (self.active.get() == 0).then(|| self.since.get().elapsed())
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
        self.0.since.set(Instant::now());
    }
}

/// Everything one guest connection's requests share.
struct Ctx {
    shared: Rc<crate::state::Shared>,
    session: Session,
    guest_h2: bool,
    secrets: SecretSet,
    upstream: Upstream,
    idle: Idle,
    /// The budget of buffered body bytes ([`request::BUFFER_BUDGET`]).
    buffers: std::sync::Arc<tokio::sync::Semaphore>,
    /// The upstream side of a `101` the guest was just given (HTTP/1.1 guests only).
    upgraded: RefCell<Option<oneshot::Receiver<UpstreamParts>>>,
}

/// Serves the guest's HTTP on `guest` (HTTP/2 when ALPN gave `h2`) until it closes, sending
/// what passes the checks upstream on connections from `connect`.
pub(crate) async fn serve(
    shared: Rc<crate::state::Shared>,
    guest: Box<dyn AsyncIo>,
    guest_h2: bool,
    session: Session,
    connect: Connector,
) {
    let secrets = SecretSet::new(&shared.config.secrets);
    let max_head = shared.config.max_http_head.max(8192);
    let ctx = Rc::new(Ctx {
        shared,
        session,
        guest_h2,
        secrets,
        upstream: Upstream::new(connect, if guest_h2 { MAX_H1_UPSTREAMS } else { 1 }),
        idle: Idle {
            active: Cell::new(0),
            since: Cell::new(Instant::now()),
        },
        upgraded: RefCell::new(None),
        buffers: std::sync::Arc::new(tokio::sync::Semaphore::new(request::BUFFER_BUDGET)),
    });
    let service = {
        let ctx = ctx.clone();
        // Boxed: hyper's HTTP/1.1 `poll_without_shutdown` wants an `Unpin` future.
        service_fn(move |req| Box::pin(request::handle(ctx.clone(), req)))
    };
    let io = TokioIo::new(guest);
    if guest_h2 {
        let conn = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, service);
        let mut conn = Box::pin(conn);
        drive(
            &ctx.idle,
            &mut conn,
            |c, cx| c.as_mut().poll(cx),
            |c| c.as_mut().graceful_shutdown(),
        )
        .await;
        return;
    }
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        // A client may close its sending half after the request and still wait for the answer
        // (`printf ... | nc`).
        .half_close(true)
        .max_buf_size(max_head)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    drive(
        &ctx.idle,
        &mut conn,
        |c, cx| c.poll_without_shutdown(cx),
        |c| Pin::new(c).graceful_shutdown(),
    )
    .await;
    let parts = conn.into_parts();
    let upgraded = ctx.upgraded.borrow_mut().take();
    let mut guest = parts.io.into_inner();
    match upgraded {
        Some(upstream) => tunnel(&ctx, guest, parts.read_buf, upstream).await,
        None => {
            let _ = guest.shutdown().await;
        }
    }
}

/// Joins the guest and the upstream after a `101`: what either side sent past the handshake
/// first, then everything both ways until both are done. With secrets, frame by frame through
/// [`websocket::relay`]; without, copied as it is.
async fn tunnel(
    ctx: &Ctx,
    mut guest: Box<dyn AsyncIo>,
    guest_early: bytes::Bytes,
    upstream: oneshot::Receiver<UpstreamParts>,
) {
    let Ok(Ok(parts)) = tokio::time::timeout(HEAD_TIMEOUT, upstream).await else {
        return;
    };
    let mut upstream = parts.io.into_inner();
    if !ctx.secrets.is_empty() {
        let eligible = ctx
            .secrets
            .eligible(ctx.session.sni.as_deref(), ctx.session.pinned);
        // Host equals the SNI when there is one (checked per request); plain HTTP names the
        // address.
        let host = ctx
            .session
            .sni
            .clone()
            .unwrap_or_else(|| ctx.session.flow.dst.ip().to_string());
        let on_block = |secret: usize| {
            ctx.shared.emit(crate::events::NetEvent::SecretBlocked {
                secret: ctx.secrets.name(secret).to_owned(),
                host: host.clone(),
            });
        };
        websocket::relay(
            guest,
            &guest_early,
            upstream,
            &parts.read_buf,
            &ctx.secrets,
            &eligible,
            &on_block,
        )
        .await;
        return;
    }
    let early = async {
        upstream.write_all(&guest_early).await?;
        guest.write_all(&parts.read_buf).await
    };
    if early.await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut guest, &mut upstream).await;
    }
}

/// Runs the connection `conn` to its end, shutting it down gracefully once it has been idle
/// for [`IDLE_TIMEOUT`].
async fn drive<C>(
    idle: &Idle,
    conn: &mut C,
    poll: impl Fn(&mut C, &mut Context<'_>) -> Poll<Result<(), hyper::Error>>,
    shutdown: impl Fn(&mut C),
) {
    let mut check = tokio::time::interval(IDLE_TIMEOUT / 4);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| {
        while !closing && check.poll_tick(cx).is_ready() {
            if idle.idle_for().is_some_and(|d| d >= IDLE_TIMEOUT) {
                closing = true;
                shutdown(conn);
            }
        }
        poll(conn, cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "netstack: intercepted connection ended");
    }
}
