//! The upstream side of one intercepted guest connection: HTTP/2 multiplexed on one
//! connection when the upstream negotiates it, otherwise a small bounded pool of HTTP/1.1
//! connections (one for an HTTP/1.1 guest, which sends one request at a time anyway).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::body::EngineBody;
use super::{Connector, LocalExec};

/// Most HTTP/1.1 upstream connections behind one HTTP/2 guest connection.
pub(crate) const MAX_H1_UPSTREAMS: usize = 4;

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// Connecting (TCP, TLS verification) failed.
    #[error("upstream connection failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("upstream request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be put into the upstream's form.
    #[error("bad upstream request: {0}")]
    Form(String),
}

enum Checkout {
    H1(http1::SendRequest<EngineBody>, OwnedSemaphorePermit),
    H2(http2::SendRequest<EngineBody>),
}

/// The upstream connections of one guest connection.
pub(crate) struct Upstream {
    connect: Connector,
    max_h1: usize,
    permits: Arc<Semaphore>,
    idle_h1: RefCell<Vec<http1::SendRequest<EngineBody>>>,
    /// HTTP/1.1 connections open or being opened.
    open_h1: Cell<usize>,
    h2: RefCell<Option<http2::SendRequest<EngineBody>>>,
    /// Held while a connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// The IO of the HTTP/1.1 connection opened last, once its connection task ends.
    last_h1: RefCell<Option<oneshot::Receiver<UpstreamParts>>>,
}

/// The IO of an upstream HTTP/1.1 connection after its last response (a `101`).
pub(crate) type UpstreamParts = http1::Parts<TokioIo<Box<dyn super::AsyncIo>>>;

impl Upstream {
    /// Upstream connections made with `connect`, at most `max_h1` HTTP/1.1 ones.
    pub(crate) fn new(connect: Connector, max_h1: usize) -> Upstream {
        Upstream {
            connect,
            max_h1,
            permits: Arc::new(Semaphore::new(max_h1)),
            idle_h1: RefCell::new(Vec::new()),
            open_h1: Cell::new(0),
            h2: RefCell::new(None),
            last_h1: RefCell::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` (absolute URI, `Host` set) in the form the upstream speaks. The permit,
    /// if any, must live as long as the response body (its HTTP/1.1 connection is busy).
    pub(crate) async fn send(
        &self,
        mut req: Request<EngineBody>,
    ) -> Result<(Response<Incoming>, Option<OwnedSemaphorePermit>), UpstreamError> {
        match self.checkout().await? {
            Checkout::H2(mut sender) => {
                *req.version_mut() = Version::HTTP_2;
                // `:authority` comes from the URI; a Host header beside it is not allowed.
                req.headers_mut().remove(HOST);
                Ok((sender.send_request(req).await?, None))
            }
            Checkout::H1(mut sender, permit) => {
                *req.version_mut() = Version::HTTP_11;
                let authority = req.uri().authority().map(|a| a.as_str().to_owned());
                if let Some(authority) = authority {
                    let host = HeaderValue::from_str(&authority)
                        .map_err(|e| UpstreamError::Form(e.to_string()))?;
                    req.headers_mut().insert(HOST, host);
                }
                let origin = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse::<Uri>()
                    .map_err(|e| UpstreamError::Form(e.to_string()))?;
                *req.uri_mut() = origin;
                let response = sender.send_request(req);
                self.check_in(sender);
                Ok((response.await?, Some(permit)))
            }
        }
    }

    /// The IO of the upstream connection that answered `101` (an HTTP/1.1 guest has only
    /// one upstream connection, the one opened last).
    pub(crate) fn take_upgraded(&self) -> Option<oneshot::Receiver<UpstreamParts>> {
        self.last_h1.borrow_mut().take()
    }

    fn check_in(&self, sender: http1::SendRequest<EngineBody>) {
        if sender.is_closed() {
            self.open_h1.set(self.open_h1.get().saturating_sub(1));
        } else {
            self.idle_h1.borrow_mut().push(sender);
        }
    }

    fn live_h2(&self) -> Option<http2::SendRequest<EngineBody>> {
        let mut h2 = self.h2.borrow_mut();
        if h2.as_ref().is_some_and(|s| s.is_closed()) {
            *h2 = None;
        }
        h2.clone()
    }

    /// A sender ready for one request.
    async fn checkout(&self) -> Result<Checkout, UpstreamError> {
        loop {
            if let Some(h2) = self.live_h2() {
                return Ok(Checkout::H2(h2));
            }
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| UpstreamError::Form("upstream pool closed".into()))?;
            if let Some(h2) = self.live_h2() {
                return Ok(Checkout::H2(h2));
            }
            let ready = {
                let mut idle = self.idle_h1.borrow_mut();
                let before = idle.len();
                idle.retain(|s| !s.is_closed());
                self.open_h1
                    .set(self.open_h1.get().saturating_sub(before - idle.len()));
                idle.iter()
                    .position(|s| s.is_ready())
                    .map(|i| idle.remove(i))
            };
            if let Some(sender) = ready {
                return Ok(Checkout::H1(sender, permit));
            }
            if self.open_h1.get() < self.max_h1 {
                // One opening at a time: until the first connection tells whether the upstream
                // speaks HTTP/2, every other request would open one of its own.
                let _opening = self.opening.lock().await;
                if let Some(h2) = self.live_h2() {
                    return Ok(Checkout::H2(h2));
                }
                let ready = {
                    let mut idle = self.idle_h1.borrow_mut();
                    idle.iter()
                        .position(|s| s.is_ready())
                        .map(|i| idle.remove(i))
                };
                if let Some(sender) = ready {
                    return Ok(Checkout::H1(sender, permit));
                }
                return self.open(permit).await;
            }
            // Every connection is finishing a response: wait for one of them.
            let busy = {
                let mut idle = self.idle_h1.borrow_mut();
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            match busy {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(Checkout::H1(sender, permit));
                    }
                    self.open_h1.set(self.open_h1.get().saturating_sub(1));
                }
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Opens a new upstream connection.
    async fn open(&self, permit: OwnedSemaphorePermit) -> Result<Checkout, UpstreamError> {
        self.open_h1.set(self.open_h1.get() + 1);
        let conn = match (self.connect)().await {
            Ok(conn) => conn,
            Err(e) => {
                self.open_h1.set(self.open_h1.get().saturating_sub(1));
                return Err(UpstreamError::Connect(e));
            }
        };
        let io = TokioIo::new(conn.io);
        if conn.h2 {
            self.open_h1.set(self.open_h1.get().saturating_sub(1));
            let (sender, connection) = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .handshake(io)
                .await?;
            tokio::task::spawn_local(connection);
            *self.h2.borrow_mut() = Some(sender.clone());
            return Ok(Checkout::H2(sender));
        }
        let result = http1::Builder::new()
            .max_buf_size(super::MAX_UPSTREAM_HEAD)
            .handshake(io)
            .await;
        let (sender, connection) = match result {
            Ok(pair) => pair,
            Err(e) => {
                self.open_h1.set(self.open_h1.get().saturating_sub(1));
                return Err(e.into());
            }
        };
        // After a `101` the connection hands back its IO for the tunnel (hyper's own upgrade
        // machinery needs `Send` IO, which the guest's streams are not).
        let (parts_tx, parts_rx) = oneshot::channel();
        tokio::task::spawn_local(async move {
            if let Ok(parts) = connection.without_shutdown().await {
                let _ = parts_tx.send(parts);
            }
        });
        *self.last_h1.borrow_mut() = Some(parts_rx);
        Ok(Checkout::H1(sender, permit))
    }
}
