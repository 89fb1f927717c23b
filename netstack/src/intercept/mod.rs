//! PLACEHOLDER until the i11-http branch lands; the coordinator replaces this file.
//!
//! The HTTP engine of intercepted connections: this file only holds the interface the TLS
//! flow calls ([`serve`]), so the TLS branch builds; its `serve` logs and closes.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// A byte stream the engine reads and writes (a TLS stream over the guest or the upstream).
pub(crate) trait AsyncIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> AsyncIo for T {}

/// A connection to the real server, TLS verified.
#[allow(dead_code)] // Read by the real engine, not by this placeholder.
pub(crate) struct UpstreamConn {
    /// The stream.
    pub io: Box<dyn AsyncIo>,
    /// Whether the server negotiated `h2`.
    pub h2: bool,
}

/// Opens a new upstream connection each time it is called.
pub(crate) type Connector =
    Rc<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<UpstreamConn>>>>>;

/// What the engine knows about the intercepted connection.
pub(crate) struct Session {
    /// The guest's SNI.
    pub sni: Option<String>,
    /// The sandbox's DNS resolved the SNI to the destination address.
    pub pinned: bool,
    /// The flow as policy sees it.
    pub flow: crate::policy::FlowInfo,
}

/// PLACEHOLDER until the i11-http branch lands; the coordinator replaces this file.
/// Logs and closes the guest connection without serving a request.
pub(crate) async fn serve(
    _shared: Rc<crate::state::Shared>,
    mut guest: Box<dyn AsyncIo>,
    guest_h2: bool,
    session: Session,
    _connect: Connector,
) {
    tracing::warn!(
        sni = ?session.sni,
        pinned = session.pinned,
        guest_h2,
        "intercepted connection closed: the HTTP engine is not in this build"
    );
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut guest).await;
}
