//! The host side of the TLS bench: an HTTPS server (hyper over tokio-rustls, HTTP/1.1) on the
//! host's loopback that the guest's requests end at, and a one-name DNS server the netstack's
//! DNS forwards to, so the upstream's name resolves (and is pinned) to the host alias.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::TlsAcceptor;

use super::pki::{provider, Leaf};
use crate::image_bench::BenchResult;

/// Body length of `/small`.
pub const SMALL_BODY: u64 = 100;

/// Bytes every response body is cut from.
static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A response body of `left` filler bytes, produced in 64 KiB frames as they are sent, so a
/// bulk download costs the server no memory.
pub struct Filler {
    left: u64,
}

impl Filler {
    /// `len` bytes.
    pub fn new(len: u64) -> Filler {
        Filler { left: len }
    }
}

impl Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(FILL.len() as u64);
        self.left -= n;
        let data = Bytes::from_static(&FILL[..n as usize]);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// `/small`: [`SMALL_BODY`] bytes; `/bulk/N`: N bytes; anything else: 404.
async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Filler>, Infallible> {
    let path = req.uri().path();
    let len = if path == "/small" {
        Some(SMALL_BODY)
    } else {
        path.strip_prefix("/bulk/").and_then(|n| n.parse().ok())
    };
    let mut response = Response::new(Filler::new(len.unwrap_or(0)));
    if len.is_none() {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(response)
}

/// The rustls server side for `leaf` (HTTP/1.1 only: every path of the bench then speaks the
/// same protocol upstream).
pub fn acceptor(leaf: Leaf) -> BenchResult<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTPS on `listener` until the runtime stops; each connection is its own task.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Binds the upstream on the host's loopback: `port` when free, else any port.
pub async fn bind_upstream(port: u16) -> BenchResult<TcpListener> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("binding the upstream: {e}")),
    }
}

/// The answer to the DNS `query`: `name` has the single address `addr` (A; no AAAA), every
/// other name is NXDOMAIN. `None` for a query without a question.
pub fn dns_answer(query: &Message, name: &str, addr: Ipv4Addr) -> Option<Vec<u8>> {
    let question = query.queries.first()?;
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let asked = question.name().to_ascii();
    if asked.trim_end_matches('.').eq_ignore_ascii_case(name) {
        response.metadata.authoritative = true;
        if question.query_type() == RecordType::A {
            let record = Record::from_rdata(question.name().clone(), 300, RData::A(A(addr)));
            response.add_answer(record);
        }
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}

/// Answers DNS queries on `socket` with [`dns_answer`] until the runtime stops.
pub async fn serve_dns(socket: UdpSocket, name: String, addr: Ipv4Addr) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if let Some(reply) = dns_answer(&query, &name, addr) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The upstream HTTPS server and the DNS server, on a runtime of their own (two workers, so
/// the server is not starved by the client it serves); both stop on drop.
pub struct HostSide {
    /// Where the HTTPS server listens (on 127.0.0.1).
    pub https: SocketAddr,
    /// Where the DNS server listens (on 127.0.0.1).
    pub dns: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HostSide {
    /// Starts both: the server presents `leaf` on `https_port` if free (else any port); DNS
    /// answers `name` with `addr`.
    pub fn start(leaf: Leaf, https_port: u16, name: &str, addr: Ipv4Addr) -> BenchResult<HostSide> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-upstream")
            .enable_all()
            .build()
            .map_err(|e| format!("upstream runtime: {e}"))?;
        let acceptor = acceptor(leaf)?;
        let (https, dns) = runtime.block_on(async {
            let listener = bind_upstream(https_port).await?;
            let dns_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|e| format!("binding the DNS server: {e}"))?;
            let addrs = (
                listener.local_addr().map_err(|e| e.to_string())?,
                dns_socket.local_addr().map_err(|e| e.to_string())?,
            );
            tokio::spawn(serve(listener, acceptor));
            tokio::spawn(serve_dns(dns_socket, name.to_string(), addr));
            Ok::<_, String>(addrs)
        })?;
        Ok(HostSide {
            https,
            dns,
            runtime: Some(runtime),
        })
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::Name;

    fn ask(name: &str, qtype: RecordType) -> Message {
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let reply = dns_answer(&query, "up.bench.test", Ipv4Addr::new(10, 0, 2, 254)).unwrap();
        Message::from_vec(&reply).unwrap()
    }

    #[test]
    fn dns_answers_the_one_name_and_nothing_else() {
        let a = ask("UP.bench.test.", RecordType::A);
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        let aaaa = ask("up.bench.test.", RecordType::AAAA);
        assert!(aaaa.answers.is_empty());
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        let other = ask("other.bench.test.", RecordType::A);
        assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
        let empty = Message::new(1, MessageType::Query, OpCode::Query);
        assert!(dns_answer(&empty, "x.test", Ipv4Addr::LOCALHOST).is_none());
    }
}
