//! Asking the upstream resolvers: one question over UDP, again over TCP when
//! the answer is truncated, with timeouts and a second round on failure.
//!
//! Written against plain sockets rather than hickory-resolver's full
//! resolver because we need the upstream's raw answer (every record, TTLs
//! and rcode) to filter and relay, not a resolved address list.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, timeout_at, Instant};

/// How long one upstream gets to answer over UDP.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a TCP retry may take, connection included.
const TCP_TIMEOUT: Duration = Duration::from_secs(4);

/// Rounds over the server list before giving up.
const ROUNDS: usize = 2;

/// The EDNS payload size we offer upstream (the DNS flag day 2020 value,
/// which avoids IP fragmentation).
pub(super) const EDNS_PAYLOAD: u16 = 1232;

/// Where the host's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The servers `/etc/resolv.conf` names, on port 53.
pub(super) fn system_servers() -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read(RESOLV_CONF)?;
    let config = resolv_conf::Config::parse(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{RESOLV_CONF}: {e}")))?;
    let servers: Vec<SocketAddr> = config
        .nameservers
        .into_iter()
        .map(|ip| SocketAddr::new(ip.into(), 53))
        .collect();
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{RESOLV_CONF} names no nameserver"),
        ));
    }
    Ok(servers)
}

/// Why no upstream answered a question (the last server's error when all failed).
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// The question could not be encoded.
    #[error("encoding query: {0}")]
    Encode(#[source] ProtoError),
    /// The server list was empty.
    #[error("no upstream server")]
    NoServer,
    /// The last server asked failed.
    #[error("{server}: {source}")]
    Server {
        /// The server.
        server: SocketAddr,
        /// How it failed.
        #[source]
        source: AskError,
    },
}

/// Why one upstream server gave no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No matching UDP answer came in time.
    #[error("timeout")]
    Timeout,
    /// The TCP retry of a truncated answer took too long.
    #[error("TCP timeout")]
    TcpTimeout,
    /// The query does not fit a TCP length prefix.
    #[error("query too long")]
    QueryTooLong,
    /// The TCP answer is not for our query.
    #[error("answer does not match the query")]
    Mismatch,
}

/// Asks `servers` (in order, [`ROUNDS`] times) for `question` and returns
/// the first answer that belongs to our query.
pub(super) async fn resolve(
    servers: &[SocketAddr],
    question: &Query,
) -> Result<Message, UpstreamError> {
    let mut query = Message::query();
    query.add_query(question.clone());
    query.metadata.recursion_desired = true;
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(UpstreamError::Encode)?;

    let mut last_error = UpstreamError::NoServer;
    for _ in 0..ROUNDS {
        for &server in servers {
            match ask(server, &bytes, &query).await {
                Ok(answer) => return Ok(answer),
                Err(source) => last_error = UpstreamError::Server { server, source },
            }
        }
    }
    Err(last_error)
}

async fn ask(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, AskError> {
    let answer = ask_udp(server, bytes, query).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    timeout(TCP_TIMEOUT, ask_tcp(server, bytes, query))
        .await
        .map_err(|_| AskError::TcpTimeout)?
}

async fn ask_udp(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, AskError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // A connected socket drops datagrams from anyone but the server.
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let deadline = Instant::now() + UDP_TIMEOUT;
    let mut buf = vec![0; 65535];
    loop {
        let len = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| AskError::Timeout)??;
        // Late answers to an earlier query and garbage are skipped, not
        // taken as the answer.
        if let Some(answer) = matching_answer(&buf[..len], query) {
            return Ok(answer);
        }
    }
}

async fn ask_tcp(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, AskError> {
    let len = u16::try_from(bytes.len()).map_err(|_| AskError::QueryTooLong)?;
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let answer_len = stream.read_u16().await?;
    let mut buf = vec![0; usize::from(answer_len)];
    stream.read_exact(&mut buf).await?;
    matching_answer(&buf, query).ok_or(AskError::Mismatch)
}

/// Parses `bytes` and returns it if it answers `query` (same id, same
/// question).
fn matching_answer(bytes: &[u8], query: &Message) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let ours = answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == query.queries;
    ours.then_some(answer)
}
