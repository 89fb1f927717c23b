//! `msbvm-e2e-peer`: the real upstream servers of the secrets suite, and its byte counter.
//!
//! Runs in L1 (built static, like `msbvm`), so the suite needs nothing installed there:
//!
//! ```text
//! msbvm-e2e-peer serve ADDR LOG PERSONA...   an HTTPS echo server (PERSONA below)
//! msbvm-e2e-peer count PATH NEEDLE           occurrences in a file or tree
//! ```
//!
//! `serve` listens on one address (the netstack intercepts TLS on port 443 only, so every
//! upstream of the suite shares L1's 127.0.0.1:443) and plays one PERSONA per connection,
//! chosen by the SNI of the ClientHello: `NAME:ALPN:CERT:KEY:SNI[,SNI...]` with ALPN `h1`,
//! `h2` or `both` (the protocols offered); an unknown or missing SNI gets the first persona.
//! TLS is rustls, HTTP/1.1 and HTTP/2 are hyper. Every request is appended to LOG as one line
//! (what the upstream really received, for the suite to compare with the secret's value) and
//! echoed back as text, so the guest's own view of the same request can be checked too. A
//! request with `content-type: application/grpc` is answered gRPC-style: its body back with
//! `grpc-status: 0` in the trailers. `count` streams through a file (a guest memory dump) or
//! every regular file under a directory (symlinks not followed) and prints how many times
//! NEEDLE occurs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::LazyConfigAcceptor;

const USAGE: &str = "usage: msbvm-e2e-peer serve ADDR LOG NAME:h1|h2|both:CERT:KEY:SNI[,SNI...]...\n       msbvm-e2e-peer count PATH NEEDLE";
/// Largest request body the echo server reads.
const MAX_BODY: usize = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr, log, personas @ ..] if !personas.is_empty() => serve(addr, log, personas),
        ["count", path, needle] => count(Path::new(path), needle.as_bytes()).map(|n| {
            println!("{n}");
        }),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msbvm-e2e-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One face of the server: its name in logs and answers, the SNIs it answers, its TLS.
struct Persona {
    name: String,
    snis: Vec<String>,
    config: Arc<ServerConfig>,
}

/// The server: its personas and the request log.
struct Peer {
    personas: Vec<Persona>,
    log: Mutex<std::fs::File>,
}

impl Peer {
    fn persona(&self, sni: Option<&str>) -> &Persona {
        sni.and_then(|sni| {
            self.personas
                .iter()
                .find(|p| p.snis.iter().any(|s| s == sni))
        })
        .unwrap_or(&self.personas[0])
    }
}

/// Parses `NAME:ALPN:CERT:KEY:SNI[,SNI...]` and loads its certificate.
fn persona(spec: &str) -> Result<Persona, BoxError> {
    let [name, alpn, cert, key, snis] = spec.split(':').collect::<Vec<_>>()[..] else {
        return Err(format!("bad persona {spec:?}: want NAME:ALPN:CERT:KEY:SNI[,SNI...]").into());
    };
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = match alpn {
        "h1" => vec![b"http/1.1".to_vec()],
        "h2" => vec![b"h2".to_vec()],
        "both" => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        other => return Err(format!("ALPN must be h1, h2 or both, not {other}").into()),
    };
    Ok(Persona {
        name: name.to_string(),
        snis: snis.split(',').map(str::to_string).collect(),
        config: Arc::new(config),
    })
}

fn serve(addr: &str, log: &str, specs: &[&str]) -> Result<(), BoxError> {
    let personas = specs
        .iter()
        .map(|s| persona(s))
        .collect::<Result<Vec<_>, _>>()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let peer = Arc::new(Peer {
        personas,
        log: Mutex::new(log),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(accept_loop(peer, addr))
}

async fn accept_loop(peer: Arc<Peer>, addr: &str) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("msbvm-e2e-peer: listening on {addr}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let peer = peer.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(peer, tcp).await {
                eprintln!("msbvm-e2e-peer: connection: {e}");
            }
        });
    }
}

async fn connection(peer: Arc<Peer>, tcp: tokio::net::TcpStream) -> Result<(), BoxError> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    let sni = hello.server_name().unwrap_or("-").to_string();
    let persona = peer.persona(hello.server_name());
    let (name, config) = (persona.name.clone(), persona.config.clone());
    let tls = start.into_stream(config).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let service = hyper::service::service_fn(move |req| {
        let (peer, name, sni) = (peer.clone(), name.clone(), sni.clone());
        async move { Ok::<_, hyper::Error>(answer(&peer, &name, &sni, req).await) }
    });
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await?;
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await?;
    }
    Ok(())
}

type Reply = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

/// Logs the request and echoes it (or, for gRPC, its body with trailers).
async fn answer(peer: &Peer, name: &str, sni: &str, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(400, format!("bad body: {e}\n")),
    };
    let proto = format!("{:?}", parts.version);
    // HTTP/2 requests carry scheme and authority in the URI: the target is the path, and
    // the authority is listed with the headers.
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let head = format!(
        "peer={name} proto={proto} method={} uri={target} sni={sni}",
        parts.method
    );
    let mut headers = header_lines(&parts.headers);
    if let Some(authority) = parts.uri.authority() {
        headers.insert(0, format!(":authority: {authority}"));
    }
    let line = format!(
        "{head} | {} | body={}\n",
        headers.join(" | "),
        escape(&body)
    );
    if let Ok(mut log) = peer.log.lock() {
        let _ = log.write_all(line.as_bytes());
    }
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return grpc_reply(body);
    }
    let echo = format!("{head}\n{}\nbody={}\n", headers.join("\n"), escape(&body));
    text(200, echo)
}

/// `name: value` per header (values lossy), with a decoded `Authorization: Basic` added.
fn header_lines(headers: &HeaderMap) -> Vec<String> {
    use base64::Engine;
    let mut lines = Vec::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "authorization" {
            if let Some(b64) = value.strip_prefix("Basic ") {
                let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim());
                let decoded = decoded
                    .map(|d| escape(&d))
                    .unwrap_or_else(|_| "(bad base64)".into());
                lines.push(format!("basic-decoded: {decoded}"));
            }
        }
        lines.push(format!("{name}: {value}"));
    }
    lines
}

fn text(status: u16, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn grpc_reply(body: Bytes) -> Reply {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("a header value"));
    trailers.insert("grpc-message", "echoed".parse().expect("a header value"));
    let body = GrpcBody {
        data: Some(body),
        trailers: Some(trailers),
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(body.boxed())
        .expect("a valid response")
}

/// A body of one DATA frame and then trailers, with no length announced (as gRPC servers
/// answer; a known length would let hyper end the stream before the trailers).
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// Bytes as one log line: lossy UTF-8 with backslash, CR and LF escaped.
fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// Occurrences of `needle` in the file at `path`, or in every regular file under it.
fn count(path: &Path, needle: &[u8]) -> Result<u64, BoxError> {
    if needle.is_empty() {
        return Err("the needle is empty".into());
    }
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            total += count(&entry?.path(), needle)?;
        }
        return Ok(total);
    }
    if !meta.is_file() {
        return Ok(0);
    }
    count_in(std::fs::File::open(path)?, needle)
}

/// Streams `r` in blocks, keeping the last `needle.len() - 1` bytes so that matches across
/// block boundaries count; matches do not overlap.
fn count_in(mut r: impl Read, needle: &[u8]) -> Result<u64, BoxError> {
    let mut buf = vec![0u8; 4 << 20];
    let mut kept = 0;
    let mut total = 0;
    loop {
        let n = r.read(&mut buf[kept..])?;
        if n == 0 {
            return Ok(total);
        }
        let end = kept + n;
        let mut i = 0;
        let mut last_match_end = 0;
        // Jump between occurrences of the first byte: a tight loop even under emulation.
        while i + needle.len() <= end {
            match buf[i..end].iter().position(|&b| b == needle[0]) {
                None => break,
                Some(at) => i += at,
            }
            if i + needle.len() > end {
                break;
            }
            if &buf[i..i + needle.len()] == needle {
                total += 1;
                i += needle.len();
                last_match_end = i;
            } else {
                i += 1;
            }
        }
        // Keep the tail that could start a match, but never bytes of a counted match.
        let keep_from = end.saturating_sub(needle.len() - 1).max(last_match_end);
        buf.copy_within(keep_from..end, 0);
        kept = end - keep_from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_blocks_without_overlap() {
        let mut data = vec![b'x'; (4 << 20) - 2];
        data.extend_from_slice(b"abcab");
        data.extend_from_slice(b"cabc");
        assert_eq!(count_in(&data[..], b"abc").unwrap(), 3);
        assert_eq!(count_in(&b"aaaa"[..], b"aa").unwrap(), 2);
        assert_eq!(count_in(&b""[..], b"a").unwrap(), 0);
    }

    #[test]
    fn escapes_to_one_line() {
        assert_eq!(escape(b"a\r\nb\\"), "a\\r\\nb\\\\");
    }
}
