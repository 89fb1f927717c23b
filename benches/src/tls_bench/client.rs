//! The guest's HTTPS client (hyper over tokio-rustls, HTTP/1.1), the same for every path
//! measured: straight to the upstream's address, or through an HTTP proxy with CONNECT.
//!
//! It runs on a thread that entered the guest's network namespace ([`in_netns`]), so its
//! sockets live there and every byte crosses the stack under test.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::pki::provider;
use super::upstream::SMALL_BODY;
use crate::image_bench::BenchResult;
use crate::net_bench::enter_netns;

/// Longest any one phase of a run may take (a stuck stack fails the run, not the bench).
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// How the guest reaches the upstream.
#[derive(Clone, Debug)]
pub enum Route {
    /// A TCP connection to this address carries TLS to the upstream.
    Direct(SocketAddr),
    /// An HTTP proxy at `proxy`, asked to `CONNECT target` (`host:port`) first.
    Proxy {
        /// The proxy's address.
        proxy: SocketAddr,
        /// The CONNECT authority.
        target: String,
    },
}

/// What one run asks of the client.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Requests on one keep-alive connection.
    pub requests: u32,
    /// New connections, each a full handshake and one request.
    pub handshakes: u32,
    /// Bytes of the bulk download.
    pub bulk_bytes: u64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Latency of each keep-alive request, ms.
    pub latencies_ms: Vec<f64>,
    /// Keep-alive requests per second.
    pub requests_per_s: f64,
    /// Time of each new connection (connect, handshake, one request), ms.
    pub connection_ms: Vec<f64>,
    /// Bulk download rate, MiB/s.
    pub bulk_mib_s: f64,
    /// CPU time per MiB of the bulk download, ms, by the [`CpuClock`] given (0 without one).
    pub bulk_cpu_ms_per_mib: f64,
}

/// CPU seconds used so far by whatever a mode's path runs on (read before and after a phase).
pub type CpuClock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The guest's side of one path: where to connect, which name to ask for, what to trust.
#[derive(Clone)]
pub struct Guest {
    /// How to reach the upstream.
    pub route: Route,
    /// SNI and Host.
    pub name: String,
    connector: TlsConnector,
    cpu: Option<CpuClock>,
}

impl Guest {
    /// A client trusting only `roots`, offering only HTTP/1.1, without session resumption
    /// (each new connection is a full handshake: the cost being measured).
    pub fn new(route: Route, name: &str, roots: Arc<RootCertStore>) -> BenchResult<Guest> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("client TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Guest {
            route,
            name: name.to_string(),
            connector: TlsConnector::from(Arc::new(config)),
            cpu: None,
        })
    }

    /// This client with `cpu` read around the bulk download.
    pub fn with_cpu_clock(mut self, cpu: CpuClock) -> Guest {
        self.cpu = Some(cpu);
        self
    }

    /// A TCP connection to the upstream (through the proxy's tunnel, if any).
    async fn tcp(&self) -> BenchResult<TcpStream> {
        let addr = match &self.route {
            Route::Direct(addr) => *addr,
            Route::Proxy { proxy, .. } => *proxy,
        };
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if let Route::Proxy { target, .. } = &self.route {
            connect_tunnel(&mut tcp, target).await?;
        }
        Ok(tcp)
    }

    /// A TLS connection to the upstream; the error keeps rustls's reason.
    async fn tls(&self) -> BenchResult<Result<TlsStream<TcpStream>, std::io::Error>> {
        let tcp = self.tcp().await?;
        let name = ServerName::try_from(self.name.clone())
            .map_err(|e| format!("server name {}: {e}", self.name))?;
        Ok(self.connector.connect(name, tcp).await)
    }

    /// Whether the upstream's certificate chains to this client's roots: `Ok(false)` when the
    /// handshake failed on the certificate alone, an error when it failed otherwise.
    pub async fn certificate_trusted(&self) -> BenchResult<bool> {
        match self.tls().await? {
            Ok(_) => Ok(true),
            Err(e) => {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                match rustls_error {
                    Some(rustls::Error::InvalidCertificate(_)) => Ok(false),
                    _ => Err(format!("TLS handshake with {}: {e}", self.name)),
                }
            }
        }
    }

    /// An HTTP/1.1 connection over a new TLS connection.
    async fn open(&self) -> BenchResult<SendRequest<Empty<Bytes>>> {
        let tls = self
            .tls()
            .await?
            .map_err(|e| format!("TLS handshake with {}: {e}", self.name))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// `GET path` on `sender`; the body is read to its end and its length returned.
    async fn get(&self, sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> BenchResult<u64> {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let request = Request::get(path)
            .header(hyper::header::HOST, &self.name)
            .body(Empty::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {path}: status {}", response.status()));
        }
        let mut body = response.into_body();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {path} body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                len += data.len() as u64;
            }
        }
        Ok(len)
    }

    /// `GET /small` once on a fresh connection: the run's warm-up (and for an interceptor,
    /// what puts the name's leaf into its cache).
    pub async fn warm_up(&self) -> BenchResult<()> {
        let mut sender = self.open().await?;
        self.get_small(&mut sender).await
    }

    async fn get_small(&self, sender: &mut SendRequest<Empty<Bytes>>) -> BenchResult<()> {
        match self.get(sender, "/small").await? {
            SMALL_BODY => Ok(()),
            n => Err(format!("/small returned {n} bytes, not {SMALL_BODY}")),
        }
    }

    /// Every measurement of `plan`, in order: keep-alive requests, new connections, bulk.
    pub async fn measure(&self, plan: Plan) -> BenchResult<Samples> {
        let mut samples = Samples::default();
        timed("keep-alive requests", self.keepalive(plan, &mut samples)).await?;
        timed("new connections", self.handshakes(plan, &mut samples)).await?;
        timed("bulk download", self.bulk(plan, &mut samples)).await?;
        Ok(samples)
    }

    async fn keepalive(&self, plan: Plan, samples: &mut Samples) -> BenchResult<()> {
        let mut sender = self.open().await?;
        let start = Instant::now();
        for _ in 0..plan.requests {
            let t = Instant::now();
            self.get_small(&mut sender).await?;
            samples.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        samples.requests_per_s = f64::from(plan.requests) / start.elapsed().as_secs_f64();
        Ok(())
    }

    async fn handshakes(&self, plan: Plan, samples: &mut Samples) -> BenchResult<()> {
        for _ in 0..plan.handshakes {
            let t = Instant::now();
            let mut sender = self.open().await?;
            self.get_small(&mut sender).await?;
            samples.connection_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }

    async fn bulk(&self, plan: Plan, samples: &mut Samples) -> BenchResult<()> {
        let mut sender = self.open().await?;
        let cpu_before = self.cpu.as_ref().map(|c| c());
        let start = Instant::now();
        let got = self
            .get(&mut sender, &format!("/bulk/{}", plan.bulk_bytes))
            .await?;
        if got != plan.bulk_bytes {
            return Err(format!("bulk: got {got} of {} bytes", plan.bulk_bytes));
        }
        let mib = got as f64 / (1024.0 * 1024.0);
        samples.bulk_mib_s = mib / start.elapsed().as_secs_f64();
        if let (Some(before), Some(cpu)) = (cpu_before, &self.cpu) {
            samples.bulk_cpu_ms_per_mib = (cpu() - before) * 1e3 / mib.max(f64::MIN_POSITIVE);
        }
        Ok(())
    }
}

/// `what`, failed when it outlasts [`PHASE_TIMEOUT`].
async fn timed<T>(what: &str, f: impl Future<Output = BenchResult<T>>) -> BenchResult<T> {
    tokio::time::timeout(PHASE_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: no end within {} s", PHASE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{what}: {e}"))
}

/// Asks the proxy on `tcp` to `CONNECT target` and reads its answer (which must be 2xx).
async fn connect_tunnel(tcp: &mut TcpStream, target: &str) -> BenchResult<()> {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    // Byte by byte so nothing after the head (the tunnel's first bytes) is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err("CONNECT: answer head over 8 KiB".into());
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| format!("CONNECT answer: {e}"))?;
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        return Err(format!(
            "CONNECT {target}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(())
}

/// The A record of `name` from the DNS server at `server` (the guest's resolver).
pub async fn resolve(server: SocketAddr, name: &str) -> BenchResult<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| format!("DNS socket: {e}"))?;
    let qname = Name::from_ascii(format!("{name}.")).map_err(|e| format!("name {name}: {e}"))?;
    let mut query = Message::new(0x7b7b, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, RecordType::A));
    let bytes = query.to_vec().map_err(|e| format!("DNS query: {e}"))?;
    let mut buf = vec![0u8; 1500];
    for _ in 0..3 {
        socket
            .send_to(&bytes, server)
            .await
            .map_err(|e| format!("DNS query to {server}: {e}"))?;
        let Ok(got) = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await
        else {
            continue;
        };
        let n = got.map_err(|e| format!("DNS answer: {e}"))?;
        let reply = Message::from_vec(&buf[..n]).map_err(|e| format!("DNS answer: {e}"))?;
        return reply
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "DNS: no address for {name} ({})",
                    reply.metadata.response_code
                )
            });
    }
    Err(format!("DNS: {server} did not answer for {name}"))
}

/// Runs the future `make` builds on a new thread inside the network namespace at `ns_path`
/// (on a current-thread runtime there), and waits for its result.
pub fn in_netns<T, F, Fut>(ns_path: PathBuf, make: F) -> BenchResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = BenchResult<T>>,
{
    std::thread::Builder::new()
        .name("bench-guest".into())
        .spawn(move || {
            enter_netns(&ns_path)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("guest runtime: {e}"))?
                .block_on(make())
        })
        .map_err(|e| format!("spawning the guest thread: {e}"))?
        .join()
        .map_err(|_| "the guest thread panicked".to_string())?
}
